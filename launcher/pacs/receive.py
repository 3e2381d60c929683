"""Receiving instances over DIMSE (for dimse.py's pull): C-STORE handlers that keep each instance in memory, bounded.

- `Receiver` serves one association: it counts the bytes that arrive (`EVT_DATA_RECV`) and aborts the association
  past `max_bytes` (so an instance is bounded while it arrives, not after), refuses a C-STORE nobody waits for, and
  keeps each decoded dataset (with its file meta) until the puller takes it. Nothing is written here: the puller
  de-identifies before writing.
- `Destination` is the storage SCP a C-MOVE sends to, started here (pynetdicom, non-blocking) on 127.0.0.1:PORT
  with its AE title, each association with its own Receiver, keeping only the instances a worker waits for.
- `new_ae` makes an AE with a timeout on every step (TCP connect, ACSE, each DIMSE message, network idle).

pynetdicom logs identifiers and whole datasets at DEBUG and INFO: importing this module turns its identifier logging
and its standard event logging off and drops its records below WARNING.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pynetdicom
from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as netconfig
from pynetdicom.association import Association

from launcher.pacs.intake import PullError
from launcher.pacs.validation import no_value_validation

__all__ = ["COMPRESSED", "MAX_PDU", "NO_DELAY", "SUCCESS", "TRANSFER_SYNTAXES", "UNCOMPRESSED", "Destination",
           "Receiver", "new_ae"]

MAX_PDU = 1 << 20  # the largest PDU this end accepts
HEADROOM = 1 << 16  # bytes an instance's count may exceed its dataset's by (the command set, PDU headers)
SUCCESS = 0x0000
# What this project reads (pydicom with pylibjpeg, pyjpegls and gdcm): a bounded set, uncompressed first.
UNCOMPRESSED = (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
                uid.ExplicitVRBigEndian)
COMPRESSED = (uid.JPEG2000Lossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.RLELossless, uid.JPEGLossless,
              uid.JPEG2000, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSNearLossless)
TRANSFER_SYNTAXES = UNCOMPRESSED + COMPRESSED


class _Quiet(logging.Filter):
    """Drops pynetdicom's records below WARNING: at DEBUG and INFO they quote identifiers and whole datasets."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def _silence_pynetdicom() -> None:
    netconfig.LOG_REQUEST_IDENTIFIERS = netconfig.LOG_RESPONSE_IDENTIFIERS = False
    netconfig.LOG_HANDLER_LEVEL = "none"
    quiet = _Quiet()
    names = {name for name in logging.Logger.manager.loggerDict if name.startswith("pynetdicom")}
    for name in names | {"pynetdicom"} | {f"pynetdicom.{module}" for module in pynetdicom.__all__}:
        logging.getLogger(name).addFilter(quiet)  # a filter sees only its own logger's records


_silence_pynetdicom()


class Receiver:
    """Counts one association's incoming bytes (aborting it past the limit) and keeps what its C-STOREs bring."""

    def __init__(self, max_bytes: int, wanted: Callable[[str], bool] = lambda sop: True) -> None:
        self.max_bytes, self.wanted = max_bytes, wanted
        self.reset()

    def reset(self) -> None:
        self.received, self.oversized, self.unreadable, self.closed = 0, False, False, False
        self.datasets: dict[str, Dataset] = {}

    def on_data(self, event: evt.Event) -> None:
        """Each PDU as it arrives (at most MAX_PDU bytes): past the limit, the connection is closed at once (an
        A-ABORT queued from here would leave the request waiting for its DIMSE timeout)."""
        self.received += len(event.data)
        if self.received > self.max_bytes + HEADROOM and not self.oversized:
            self.oversized = self.closed = True
            if event.assoc.dul.socket is not None:
                event.assoc.dul.socket.close()

    def on_store(self, event: evt.Event) -> int:
        request: Any = event.request
        sop = str(request.AffectedSOPInstanceUID)
        if not self.wanted(sop):
            return 0xA801  # refused: nobody here asked for it
        data = getattr(request, "DataSet", None)
        if self.oversized or (data is not None and len(data.getvalue()) > self.max_bytes):
            self.oversized = True
            return 0xA700
        try:
            with no_value_validation():  # its warnings quote values
                dataset = event.dataset
                dataset.file_meta = event.file_meta
        except Exception:
            self.unreadable = True
            return 0xC210
        self.datasets[sop] = dataset
        return SUCCESS


class Destination:
    """The storage SCP a C-MOVE sends to: HOST:PORT (127.0.0.1 by default) with its AE title; keeps what a worker
    waits for."""

    def __init__(self, aet: str, port: int, options: dict[str, Any], *, host: str = "127.0.0.1") -> None:
        self.aet, self.port, self.max_bytes = aet, port, options["max_instance_bytes"]
        self._waiting: set[str] = set()
        self._arrived: dict[str, Dataset] = {}
        self._receivers: weakref.WeakKeyDictionary[Association, Receiver] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.oversized = 0
        ae = new_ae(aet, options)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), TRANSFER_SYNTAXES)
        handlers: list[Any] = [(evt.EVT_DATA_RECV, self._on_data), (evt.EVT_C_STORE, self._on_store), NO_DELAY]
        try:
            self.server: Any = ae.start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as error:
            raise PullError(f"the C-MOVE destination cannot listen on {host}:{port} ({error.strerror}): choose a free "
                            "port and an address of this machine, the ones the PACS knows for this AE title") from None

    def _receiver(self, event: evt.Event) -> Receiver:
        with self._lock:
            return self._receivers.setdefault(event.assoc, Receiver(self.max_bytes, self._is_waited))

    def _is_waited(self, sop: str) -> bool:
        with self._lock:
            return sop in self._waiting

    def _on_data(self, event: evt.Event) -> None:
        receiver = self._receiver(event)
        before = receiver.oversized
        receiver.on_data(event)
        self._count(receiver, before)

    def _on_store(self, event: evt.Event) -> int:
        receiver = self._receiver(event)
        before = receiver.oversized
        status = receiver.on_store(event)
        self._count(receiver, before)
        with self._lock:
            self._arrived.update(receiver.datasets)
            receiver.datasets.clear()
        return status

    def _count(self, receiver: Receiver, before: bool) -> None:
        """Counts the instances refused as too large: the waiting worker learns it from the count's change (an
        aborted transfer has no SOPInstanceUID yet to tell whose it was)."""
        if receiver.oversized and not before:
            with self._lock:
                self.oversized += 1

    def expect(self, sop: str) -> None:
        with self._lock:
            self._waiting.add(sop)

    def collect(self, sop: str) -> Dataset | None:
        with self._lock:
            self._waiting.discard(sop)
            return self._arrived.pop(sop, None)

    def close(self) -> None:
        self.server.shutdown()


def _no_delay(event: evt.Event) -> None:
    """TCP_NODELAY on an association's socket. pynetdicom writes a DIMSE message as several PDUs, and with Nagle's
    algorithm each after the first waits for the peer's delayed ACK (40 ms on Linux): a one-instance C-GET took
    130 ms against Orthanc, 5 ms without (FACTS.md)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NO_DELAY = (evt.EVT_CONN_OPEN, _no_delay)  # an event handler for every association we open or accept


def new_ae(title: str, options: dict[str, Any]) -> AE:
    ae = AE(ae_title=title)
    timeout = options["timeout_s"]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.maximum_pdu_size = MAX_PDU
    return ae


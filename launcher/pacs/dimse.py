"""Pull studies from a PACS over DIMSE, de-identified on the way in (issue 20 item 1, for a PACS without DICOMweb).

`pull_dimse(DimseAddress.parse("HOST:PORT:AET"), out, key=..., link_path=...)` finds studies with C-FIND (Study Root,
STUDY level, the query's keys as matching keys) or takes the given StudyInstanceUIDs, lists each study's instances
with C-FIND at SERIES then IMAGE level, and retrieves them one instance per request, `workers` associations at once:

- C-GET by default: the retrieving association proposes storage contexts (with the SCP role) for the storage classes
  the listing found, in the transfer syntaxes this project reads (receive.py's `TRANSFER_SYNTAXES`; at most 127
  contexts: a bounded set; the usual classes when the listing did not say), and takes the C-STORE sub-operations;
- C-MOVE with `move_to="AET:PORT"`: a storage SCP started here (pynetdicom, non-blocking) on 127.0.0.1:PORT with that
  AE title receives them (`AET@HOST:PORT` listens on HOST, for a PACS on another machine); the PACS must know that AE
  title at this address. It listens only for the pull's time, accepts only associations addressed to that AE title,
  keeps only the instances a worker is waiting for and refuses anything else.

Either way a received instance stays in memory and goes through intake.py's path (refusal, de-identification, link,
atomic write, resumption, report, errors by position), as a DICOMweb pull's does. Bounds: every association has its
timeouts (connection, ACSE, DIMSE message, network idle: `timeout_s`); an instance is counted while it arrives and the
association is aborted past `max_instance_bytes` (the instance refused as too large); a listing over `max_instances`
results is an error. A refused connection, an aborted association or a timeout is retried `retries` times with
backoff on a new association; a rejected association (a wrong AE title) is not. pynetdicom's own logging (which dumps
identifiers and datasets at DEBUG) is silenced below WARNING and its identifier logging is switched off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from launcher.pacs import intake
from launcher.pacs.deidentify import Deidentifier, LinkFile
from launcher.pacs.intake import Instance, Intake, PullError, PullReport, TooLarge, retrying, run_pull
from launcher.pacs.receive import COMPRESSED, NO_DELAY, SUCCESS, UNCOMPRESSED, Destination, Receiver, new_ae
from launcher.pacs.validation import no_value_validation

__all__ = ["DimseAddress", "dimse_intake", "parse_move_to", "pull_dimse"]

T = TypeVar("T")
PENDING = frozenset({0xFF00, 0xFF01})
MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8)
def _check_aet(title: str, what: str) -> str:
    if not 0 < len(title.strip()) <= 16 or not all(" " <= c <= "~" and c != "\\" for c in title):
        raise ValueError(f"{what} must be 1 to 16 printable ASCII characters, without a backslash")
    return title.strip()


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what} must be a port number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class DimseAddress:
    """A PACS's DIMSE address: host, port, its AE title (called) and ours (calling)."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = "MONAI-PULL"

    def __post_init__(self) -> None:
        _port(str(self.port), "a DIMSE address's PORT")
        _check_aet(self.called_aet, "a DIMSE address's AE title")
        _check_aet(self.calling_aet, "the calling AE title")
        if not self.host:
            raise ValueError("a DIMSE address needs a HOST")

    @classmethod
    def parse(cls, text: str, *, calling_aet: str = "MONAI-PULL") -> DimseAddress:
        """`HOST:PORT:AET`, e.g. `pacs.example.org:104:PACS`; a ValueError says the shape, never echoes the text."""
        host, port, aet = ([""] * 3 + text.rsplit(":", 2))[-3:]
        if not host:
            raise ValueError("a DIMSE address is HOST:PORT:AET, e.g. pacs.example.org:104:PACS")
        return cls(host, _port(port, "a DIMSE address's PORT (HOST:PORT:AET)"), aet, calling_aet)

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (AE title {self.called_aet})"


def parse_move_to(text: str) -> tuple[str, int, str]:
    """`AET:PORT` or `AET@HOST:PORT` (the storage SCP a C-MOVE sends to) as (AE title, port, the local address it
    listens on: 127.0.0.1 unless HOST is given, e.g. this machine's address on the network the PACS reaches it by)."""
    title, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError("a C-MOVE destination is AET:PORT or AET@HOST:PORT, e.g. MONAI-PULL:11113")
    aet, _, host = title.partition("@")
    return (_check_aet(aet, "a C-MOVE destination's AET"), _port(port, "a C-MOVE destination's PORT"),
            host.strip("[]") or "127.0.0.1")


class _Dropped(Exception):
    """No association, or it was aborted or timed out: worth a retry on a new association."""


class _Puller(Intake):
    """The DIMSE transport: C-FIND to list, C-GET or C-MOVE to retrieve; one association per thread, reused."""

    def __init__(self, address: DimseAddress, out: Path, deidentifier: Deidentifier | None, links: LinkFile | None,
                 options: dict[str, Any]) -> None:
        super().__init__(out, deidentifier, links, options)
        self.address = address
        self.destination: Destination | None = None
        if options.get("move_to"):
            aet, port, host = options["move_to"]
            self.destination = Destination(aet, port, options, host=host)
        self._classes: dict[str, None] = {}  # the storage classes the listing found, in order
        self._local = threading.local()
        self._open: list[Association] = []
        self._open_lock = threading.Lock()

    def _association(self, kind: str) -> tuple[Association, Receiver | None]:
        held = getattr(self._local, kind, None)
        if held is not None and held[0].is_established:
            return held  # type: ignore[no-any-return]
        ae = new_ae(self.address.calling_aet, self.options)
        receiver, handlers, roles = None, list[Any](), list[Any]()
        if kind == "find":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        elif kind == "move":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        else:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for sop_class, syntaxes in self._storage_contexts():
                ae.add_requested_context(sop_class, syntaxes)
            roles = [build_role(sop_class, scp_role=True) for sop_class in dict(self._storage_contexts())]
            receiver = Receiver(self.options["max_instance_bytes"])
            handlers = [(evt.EVT_DATA_RECV, receiver.on_data), (evt.EVT_C_STORE, receiver.on_store)]
        assoc = ae.associate(self.address.host, self.address.port, ae_title=self.address.called_aet,
                             ext_neg=roles, evt_handlers=[*handlers, NO_DELAY])
        if assoc.is_rejected:
            raise PullError(f"the PACS at {self.address} rejected the association: check its AE title and that it "
                            f"accepts this one ({self.address.calling_aet}) from this machine")
        if not assoc.is_established:
            raise _Dropped("no association")
        with self._open_lock:
            self._open.append(assoc)
        self._local.__dict__[kind] = (assoc, receiver)
        return assoc, receiver

    def _storage_contexts(self) -> list[tuple[str, list[str]]]:
        """What a C-GET association proposes to receive: for each class the listing found, one context of the
        uncompressed syntaxes and one per compressed syntax (a PACS accepts one syntax per context, and one that
        cannot transcode needs the instance's own); where the listing gave no class, the usual classes uncompressed.
        At most 127 contexts (with the C-GET one, PS3.8's 128)."""
        found = [c for c in self._classes if c]
        each = [[*map(str, UNCOMPRESSED)]] + [[str(s)] for s in COMPRESSED]
        contexts = [(c, syntaxes) for c in found for syntaxes in each]
        if "" in self._classes or not found:
            contexts += [(str(c.abstract_syntax), [*map(str, UNCOMPRESSED)]) for c in StoragePresentationContexts
                         if c.abstract_syntax not in found]
        return contexts[:MAX_CONTEXTS - 1]

    def dimse(self, what: str, kind: str, call: Callable[[Association, Receiver | None], T]) -> T:
        """`call(association, receiver)` with retries on a new association; failures as PullErrors naming `what`."""

        def attempt() -> T:
            assoc, receiver = self._association(kind)
            try:
                return call(assoc, receiver)
            except _Dropped:
                assoc.abort()
                raise

        try:
            return retrying(attempt, retries=self.options["retries"], backoff_s=self.options["backoff_s"],
                            retriable=lambda error: isinstance(error, _Dropped))
        except _Dropped:
            raise PullError(f"the PACS at {self.address} could not be reached, or ended or timed out the "
                            f"association, while asking for {what}: check the host, the port and that the PACS runs, "
                            f"answers from here and lets this AE title ({self.address.calling_aet}) query and "
                            "retrieve") from None

    def find(self, what: str, identifier: Dataset) -> list[Dataset]:
        limit = self.options["max_instances"]

        def run(assoc: Association, _: Receiver | None) -> list[Dataset]:
            found: list[Dataset] = []
            for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                code = _status(status)
                if code in PENDING:
                    if answer is None:  # its identifier lost: ask again on a new association
                        raise _Dropped("a pending C-FIND answer without its identifier")
                    found.append(answer)
                elif code != SUCCESS:
                    raise PullError(f"the PACS at {self.address} answered C-FIND for {what} with status "
                                    f"0x{code:04X}: check the query's keys")
                if len(found) > limit:
                    assoc.abort()
                    raise PullError(f"{what} found more than {limit} results: narrow the query or raise "
                                    "max_instances")
            return found

        return self.dimse(what, "find", run)

    def studies(self, query: Mapping[str, str]) -> list[str]:
        found = self.find("the studies", _identifier("STUDY", dict(query), StudyInstanceUID=""))
        return [str(answer.get("StudyInstanceUID", "")) for answer in found]

    def instances(self, study: str, where: str) -> list[Instance]:
        """The study's instances, series by series, checked against the PACS's own count of them
        (NumberOfStudyRelatedInstances): a listing short of it (an answer lost on a reused association, seen once
        under load) is asked again on a new association, and a second mismatch is an error rather than a pull that
        silently misses instances."""
        what = f"the instances of {where}"
        counted = self.find(what, _identifier("STUDY", {}, StudyInstanceUID=study, NumberOfStudyRelatedInstances=""))
        expected = {int(a.NumberOfStudyRelatedInstances) for a in counted if a.get("NumberOfStudyRelatedInstances")}
        listed = self._listed(study, what)
        if expected and len(listed) not in expected:
            self._drop("find")
            listed = self._listed(study, what)
            if len(listed) not in expected:
                raise PullError(f"the PACS at {self.address} listed {len(listed)} instances of {where} but counts "
                                f"{sorted(expected)[0]}: pull again (what was pulled is kept)")
        instances = [Instance(f"instance {n} of {where}", study, series_uid, str(answer.get("SOPInstanceUID", "")),
                              str(answer.get("SOPClassUID", ""))) for n, (series_uid, answer) in enumerate(listed, 1)]
        self._classes.update((i.sop_class, None) for i in instances)
        return instances

    def _listed(self, study: str, what: str) -> list[tuple[str, Dataset]]:
        series = self.find(what, _identifier("SERIES", {}, StudyInstanceUID=study, SeriesInstanceUID=""))
        listed = []
        for one in series:
            query = _identifier("IMAGE", {}, StudyInstanceUID=study, SeriesInstanceUID=one.SeriesInstanceUID,
                                SOPInstanceUID="", SOPClassUID="")
            listed += [(str(one.SeriesInstanceUID), answer) for answer in self.find(what, query)]
        return listed

    def _drop(self, kind: str) -> None:
        """Abort this thread's association of `kind`: the next request opens a new one."""
        held = self._local.__dict__.pop(kind, None)
        if held is not None:
            held[0].abort()

    def retrieve(self, instance: Instance) -> Dataset:
        return self.dimse(instance.where, "move" if self.destination else "get",
                          lambda assoc, receiver: self._move(instance, assoc) if self.destination
                          else self._get(instance, assoc, receiver))

    def _get(self, instance: Instance, assoc: Association, receiver: Receiver | None) -> Dataset:
        assert receiver is not None
        receiver.reset()
        identifier = _identifier("IMAGE", {}, StudyInstanceUID=instance.study, SeriesInstanceUID=instance.series,
                                 SOPInstanceUID=instance.sop)
        code = _final(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        if receiver.closed:  # cut off past the limit: the next instance gets a new association
            assoc.abort()
        return self._received(instance, code, receiver.datasets.get(instance.sop), receiver.oversized,
                              receiver.unreadable, "C-GET")

    def _move(self, instance: Instance, assoc: Association) -> Dataset:
        destination = self.destination
        assert destination is not None
        identifier = _identifier("IMAGE", {}, StudyInstanceUID=instance.study, SeriesInstanceUID=instance.series,
                                 SOPInstanceUID=instance.sop)
        destination.expect(instance.sop)
        before = destination.oversized
        try:
            code = _final(assoc.send_c_move(identifier, destination.aet, StudyRootQueryRetrieveInformationModelMove))
        finally:
            dataset = destination.collect(instance.sop)
        return self._received(instance, code, dataset, destination.oversized > before, False, "C-MOVE")

    def _received(self, instance: Instance, code: int | None, dataset: Dataset | None, oversized: bool,
                  unreadable: bool, service: str) -> Dataset:
        if oversized:
            raise TooLarge(f"it is over the limit of {self.options['max_instance_bytes']} bytes")
        if dataset is not None:
            return dataset
        if code is None:
            raise _Dropped("no answer")
        hint = ("check that the PACS knows the destination AE title and this machine's address and port" if
                service == "C-MOVE" else "check that the PACS lets this AE title retrieve")
        reason = "the instance could not be read" if unreadable else f"status 0x{code:04X} and no instance"
        raise PullError(f"the PACS at {self.address} answered {service} for {instance.where} with {reason}: {hint}")

    def close(self) -> None:
        with self._open_lock:
            for assoc in self._open:
                if assoc.is_established:
                    assoc.release()
            self._open.clear()
        if self.destination is not None:
            self.destination.close()


def _status(status: Dataset) -> int | None:
    """A response's status, or None where there was none (the association aborted or timed out)."""
    return int(status.Status) if "Status" in status else None


def _final(responses: Iterable[tuple[Dataset, Dataset | None]]) -> int | None:
    """The last status of a C-GET's or C-MOVE's responses (None: aborted or timed out)."""
    code: int | None = None
    for status, _ in responses:
        code = _status(status)
    return code


def _identifier(level: str, query: Mapping[str, str], **keys: str) -> Dataset:
    """A Study Root identifier at `level` with the matching and return keys; a query key must be a DICOM keyword."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    with no_value_validation():  # its warnings quote the value
        for keyword, value in {**keys, **query}.items():  # a matching key of the query wins over a return key
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise PullError(f"the query key {keyword[:64]!r} is not a DICOM attribute keyword (e.g. "
                                "AccessionNumber, ModalitiesInStudy, StudyDate)")
            identifier.add_new(tag, dictionary_VR(tag), value)
    return identifier


def dimse_intake(address: DimseAddress, options: dict[str, Any]) -> Intake:
    """A listing-only DIMSE intake (for `find_studies`)."""
    return _Puller(address, Path(), None, None, options)


def pull_dimse(address: DimseAddress, out: str | Path, *, key: bytes, link_path: str | Path,
               studies: Iterable[str] = (), query: Mapping[str, str] | None = None, allow_burned_in: bool = False,
               move_to: str | None = None, workers: int = 4, timeout_s: float = 30, retries: int = 3,
               backoff_s: float = 0.5, max_instances: int = intake.MAX_INSTANCES,
               max_instance_bytes: int = intake.MAX_INSTANCE_BYTES, progress: bool = True) -> PullReport:
    """Pull the given studies (or those `query` finds, or all) from the PACS at `address` into `out`, de-identified.

    Args:
        address: the PACS (host, port, its AE title, ours).
        out: the folder to write (what gets uploaded); `link_path` (outside it, owner-only) gets the link records.
        key: the deployment's 32-byte pseudonym key.
        studies: StudyInstanceUIDs to pull; `query`: C-FIND matching keys (keyword to value) when none are given.
        allow_burned_in: import instances that may show burned-in text.
        move_to: "AET:PORT" to retrieve with C-MOVE to a storage SCP started here on 127.0.0.1:PORT ("AET@HOST:PORT":
            on HOST); else C-GET.
        workers: associations at once; timeout_s: per association step and DIMSE message; retries with backoff_s.
        max_instances, max_instance_bytes: bounds on the listing and on each instance received.
        progress: a progress bar on stderr (only where stderr is a terminal).

    Raises:
        PullError: the PACS cannot be reached, rejects the association (a wrong AE title) or a retrieval, a given
            study is not there (named by its position), the pull would list more than `max_instances` instances.
        LinkFileError: the link file is inside `out` or readable by others.
        ValueError: `move_to` is not AET:PORT or AET@HOST:PORT.
    """
    out = Path(out)
    options = dict(allow_burned_in=allow_burned_in, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                   max_instances=max_instances, max_instance_bytes=max_instance_bytes,
                   move_to=parse_move_to(move_to) if move_to else None)
    out.mkdir(parents=True, exist_ok=True)
    with LinkFile(link_path, outside=[out]) as links:
        puller = _Puller(address, out, Deidentifier(key), links, options)
        return run_pull(puller, list(studies), dict(query or {}), workers=workers, progress=progress)

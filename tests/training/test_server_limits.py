"""Issue 18 items 1 and 2 against the real server: every request is bounded before work starts, refused with a JSON
4xx naming the limit and its value, the worker survives, and no patient identifier reaches the log or the answer.

One real gunicorn server (`python -m training.serve`, the tiny job's bundle, one worker so that every hostile request
lands on the worker /ping needs) serves the whole module on 127.0.0.1; its output goes to a file the tests read. The
hostile inputs are made here: a 1 MB zip of 1 GiB of zeros (honest and lying about its size), a zip of 10,000 valid
files, a zip whose member compresses 1,000:1, bodies over the limit (declared, and chunked), two uploads that stall
after a few bytes, and a DICOM file whose corrupted SOPInstanceUID length swallows PatientName and PatientID (pydicom
then quotes them in a validation warning: before this change they reached the server log and the answer). Spies on
zipfile's inflating count the bytes inflated; psutil follows the server's memory. No timing is asserted; reads have
generous guards against hangs.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.conftest import TinyJob
from training import inference
from training.serve import MAX_BODY_BYTES, read_body, request, running_server

PATIENT = ("DOE^JOHN", "MRN-998877")
BODY_TIMEOUT_S = 8  # the server's --body-timeout here: long beside a /ping on a busy machine, short for the suite
GUARD_S = 60  # hang guard on every read
GiB = 1024**3
DICOM = {"Content-Type": "application/dicom"}
ZIP = {"Content-Type": "application/zip"}


def _dicom(*, corrupt: bool = False) -> bytes:
    """A 16 x 16 CT image with a real ramp; `corrupt`: its SOPInstanceUID's length swallows PatientName and
    PatientID, the way a damaged length field does."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.PatientName, ds.PatientID = PATIENT
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 16, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 7).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = bytearray(buffer.getvalue())
    if corrupt:
        start = data.index(b"\x08\x00\x18\x00UI", data.index(b"DICM") + 4 + 12 + 100)  # the dataset's, not the meta's
        end = data.index(PATIENT[1].encode()) + len(PATIENT[1])
        data[start + 6 : start + 8] = struct.pack("<H", end + end % 2 - (start + 8))
    return bytes(data)


def _zeros_deflated(size: int) -> tuple[bytes, int]:
    """Raw deflate of `size` zero bytes (a multiple of 1 MiB) and its CRC-32, without deflating it all: after a full
    flush the compressor forgets its history, so every MiB of zeros deflates to the same bytes."""
    mib = bytes(1024**2)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // len(mib)):
        crc = zlib.crc32(mib, crc)
    return block * (size // len(mib)) + compressor.flush(), crc


def _raw_zip(name: str, deflated: bytes, crc: int, declared: int) -> bytes:
    """A zip of one deflated member whose headers declare `declared` bytes inflated (true or not)."""
    name_bytes = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(deflated), declared,
                        len(name_bytes), 0) + name_bytes
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(deflated), declared,
                          len(name_bytes), 0, 0, 0, 0, 0, 0) + name_bytes
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(deflated), 0)
    return local + deflated + central + end


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """A 1 GiB-of-zeros zip bomb (about 1 MB) declaring its size honestly, and the same declaring 1 MiB."""
    deflated, crc = _zeros_deflated(GiB)
    return {"honest": _raw_zip("bomb.dcm", deflated, crc, GiB),
            "lying": _raw_zip("bomb.dcm", deflated, crc, 1024**2)}


def _many(count: int) -> bytes:
    one = _dicom()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"series/{i:05d}.dcm", one)
    return buffer.getvalue()


def _lying_directory() -> bytes:
    """20,000 empty entries, about 1.1 MB of directory, under an end record that declares one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(20_000):
            archive.writestr(f"e/{i:08d}", b"")
    data = bytearray(buffer.getvalue())
    end = data.rindex(b"PK\x05\x06")
    data[end + 8 : end + 12] = struct.pack("<2H", 1, 1)
    return bytes(data)


def _ratio_1000() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("flat.dcm", _dicom() + bytes(4 * 1024**2))
    return buffer.getvalue()


@pytest.fixture
def inflated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A spy on zipfile's decompressors: the bytes each call inflates (zipfile's own zlib objects do the work)."""
    counts: list[int] = []
    original = zipfile._get_decompressor  # type: ignore[attr-defined]

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def decompress(self, data: bytes, *args: Any) -> bytes:
            out: bytes = self.inner.decompress(data, *args)
            counts.append(len(out))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    monkeypatch.setattr(zipfile, "_get_decompressor", lambda kind: Counting(original(kind)))
    yield counts


@pytest.mark.parametrize(("hostile", "limit", "value", "most_inflated"), [
    ("honest bomb", "MAX_ZIP_BYTES", inference.MAX_ZIP_BYTES, 0),
    ("lying bomb", "does not match its declared size", 1024**2, 1024**2 + 2 * 65536),
    ("10,000 members", "MAX_ZIP_MEMBERS", inference.MAX_ZIP_MEMBERS, 0),
    ("lying directory", "MAX_ZIP_DIRECTORY_BYTES", inference.MAX_ZIP_DIRECTORY_BYTES, 0),
    ("ratio 1,000", "MAX_ZIP_RATIO", inference.MAX_ZIP_RATIO, 0),
])
def test_a_hostile_zip_is_refused_before_anything_is_inflated_beyond_its_limit(
    bombs: dict[str, bytes], inflated: list[int], hostile: str, limit: str, value: int, most_inflated: int
) -> None:
    body = {"honest bomb": lambda: bombs["honest"], "lying bomb": lambda: bombs["lying"],
            "10,000 members": lambda: _many(10_000), "lying directory": _lying_directory,
            "ratio 1,000": _ratio_1000}[hostile]()
    with pytest.raises(inference.InvalidInput) as refused:
        inference.input_fn(body, inference.ZIP)
    assert refused.value.status == 400 and limit in refused.value.reason and str(value) in refused.value.reason
    assert sum(inflated) <= most_inflated  # the lying bomb: zipfile stops at the declared size, then the CRC fails


def test_members_are_inflated_one_at_a_time_and_again_a_batch_at_a_time(tiny_job: TinyJob,
                                                                        inflated: list[int]) -> None:
    # Three files of 64 KiB: each check inflates one and drops it; prediction inflates them again, in one batch.
    one = _dicom()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(3):
            archive.writestr(f"{i}.dcm", one)
    data = inference.input_fn(buffer.getvalue(), inference.ZIP)
    assert sum(inflated) == 3 * len(one) and [d.name for d in data] == ["0.dcm", "1.dcm", "2.dcm"]
    results = inference.predict_fn(data, inference.model_fn(tiny_job.model_dir))
    assert sum(inflated) == 6 * len(one) and len(results) == 3


def test_a_chunked_body_is_read_in_bounded_pieces_and_refused_past_the_limit() -> None:
    class Stream:  # a body that never ends, as a chunked upload may
        def __init__(self) -> None:
            self.reads: list[int] = []

        def read(self, size: int) -> bytes:
            self.reads.append(size)
            return bytes(size)

    stream = Stream()
    with pytest.raises(inference.InvalidInput) as refused:
        read_body({"wsgi.input": stream}, timeout_s=GUARD_S)
    assert refused.value.status == 413 and f"at most {MAX_BODY_BYTES}" in refused.value.reason
    assert max(stream.reads) <= 1024**2 and sum(stream.reads) <= 2 * MAX_BODY_BYTES + 1


# --- the real server ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_job: TinyJob, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[psutil.Process, int, Path]]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(tiny_job.model_dir, workers=1, body_timeout_s=BODY_TIMEOUT_S, log_file=log) as (process, port):
        yield psutil.Process(process.pid), port, log


def _alive(port: int) -> None:
    """The worker survived: /ping and a valid request answer."""
    assert request(port, "GET", "/ping", timeout=GUARD_S)[0] == 200
    status, answer = request(port, "POST", "/invocations", _dicom(), headers=DICOM, timeout=GUARD_S)
    assert status == 200, answer
    assert json.loads(answer)["predictions"][0]["label"]


def _refusal(answer: bytes, status: int, expected: int, *named: str) -> None:
    assert status == expected, answer
    reason = json.loads(answer)["error"]
    assert all(n in reason for n in named), reason


class PeakRss:
    """The server's resident memory (all its processes), sampled every 20 ms while the block runs."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.before = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        return sum(p.memory_info().rss for p in [self.process, *self.process.children(recursive=True)])

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def test_zip_bombs_and_a_10000_member_zip_get_a_json_400_naming_the_limit_and_the_worker_survives(
    server: tuple[psutil.Process, int, Path], bombs: dict[str, bytes]
) -> None:
    process, port, _ = server
    _alive(port)
    cases = [(bombs["honest"], ("inference.MAX_ZIP_BYTES", str(inference.MAX_ZIP_BYTES))),
             (bombs["lying"], ("bomb.dcm", "declared size")),
             (_many(10_000), ("inference.MAX_ZIP_MEMBERS", str(inference.MAX_ZIP_MEMBERS)))]
    for body, named in cases:
        with PeakRss(process) as memory:
            status, answer = request(port, "POST", "/invocations", body, headers=ZIP, timeout=GUARD_S)
        _refusal(answer, status, 400, *named)
        # Before: the 1 GiB bomb grew the server by 2.1 GB before its 400. Now: the body, a member, little more.
        assert memory.peak - memory.before < 200 * 1024**2, named
    _alive(port)


def test_a_body_over_the_limit_gets_a_json_413_declared_or_chunked(server: tuple[psutil.Process, int, Path]) -> None:
    _, port, _ = server
    status, answer = request(port, "POST", "/invocations", bytes(MAX_BODY_BYTES + 1), headers=DICOM, timeout=GUARD_S)
    _refusal(answer, status, 413, "training.serve.MAX_BODY_BYTES", str(MAX_BODY_BYTES + 1), str(MAX_BODY_BYTES))

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 1024**2 + 8):
            yield bytes(1024**2)

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD_S)
    try:
        connection.request("POST", "/invocations", body=chunks(), headers=ZIP, encode_chunked=True)
        response = connection.getresponse()
        _refusal(response.read(), response.status, 413, "training.serve.MAX_BODY_BYTES", str(MAX_BODY_BYTES))
    finally:
        connection.close()
    _alive(port)


def test_two_stalled_uploads_do_not_starve_ping_and_get_a_json_408(server: tuple[psutil.Process, int, Path]) -> None:
    _, port, _ = server
    stalled = []
    for _ in range(2):
        client = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
        client.sendall(b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/dicom\r\n"
                       b"Content-Length: 100000\r\n\r\n" + bytes(10))
        stalled.append(client)
    try:
        time.sleep(0.5)  # let both reach the worker and block in their bodies
        assert request(port, "GET", "/ping", timeout=GUARD_S)[0] == 200
        for client in stalled:  # still unanswered: /ping did not wait for their deadline
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(1)
            client.setblocking(True)
        for client in stalled:
            answer = b""
            while piece := client.recv(65536):
                answer += piece
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), head
            assert f"within {BODY_TIMEOUT_S} s" in json.loads(payload)["error"]
            assert "BODY_TIMEOUT_S" in json.loads(payload)["error"]
    finally:
        for client in stalled:
            client.close()
    _alive(port)


def test_a_corrupted_file_quoting_patient_identifiers_leaves_none_in_the_log_or_the_answer(
    server: tuple[psutil.Process, int, Path]
) -> None:
    _, port, log = server
    corrupted = _dicom(corrupt=True)
    with warnings.catch_warnings(record=True) as caught:  # the input is hostile: pydicom quotes the names it swallowed
        warnings.simplefilter("always")
        assert PATIENT[0] in str(pydicom.dcmread(io.BytesIO(corrupted)).SOPInstanceUID)
    assert any(all(value in str(w.message) for value in PATIENT) for w in caught)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.dcm", corrupted)
        archive.writestr("b.dcm", _dicom())
    answers = []
    for body, headers in [(corrupted, DICOM), (buffer.getvalue(), ZIP)]:
        status, answer = request(port, "POST", "/invocations", body, headers=headers, timeout=GUARD_S)
        assert status == 200, answer
        answers.append(answer.decode())
        assert json.loads(answer)["predictions"][0]["SOPInstanceUID"] == ""  # not a UID: it swallowed the names
    _alive(port)
    text = log.read_text(errors="replace")
    assert not any(value in text or value in "".join(answers) for value in PATIENT)

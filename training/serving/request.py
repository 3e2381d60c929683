"""What a request to the model may hold, checked before anything is decoded: the content types, the limits (and
why they are sized so), the request's files as DicomInput, and InvalidInput, the 4xx a refused request gets.

training/inference.py's SageMaker handlers (input_fn, predict_fn, output_fn) call this module and re-export the names
clients, the README and bundles know it by (training.inference.InvalidInput, MAX_ZIP_MEMBERS, MAX_REQUEST_PIXELS,
...); the refusals name them so. A zip is read from its directory first, then member by member, each inflated alone
and never past its declared size; a file's header is read without its pixels (training.dataset.dicom's frame limits).
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom
from pydicom.errors import InvalidDicomError

from training.dataset.dicom import DICM_OFFSET, DicomReadError, check_frame_size, frame_samples

DICOM = "application/dicom"  # one DICOM Part 10 file (RFC 3240)
ZIP = "application/zip"  # several files; read from the body alone: hosting may run network-isolated
JSON = "application/json"
# Request limits, checked before anything is decoded (a zip's from its directory, then each member's header as the
# member is inflated, one at a time). They are sized so that the largest accepted request ends well inside the
# server's 120 s worker timeout (training/serve.py TIMEOUT_S) on the smallest instance the README names for serving,
# ml.m5.xlarge (4 vCPUs: one worker per vCPU, one torch thread each). Measured on this project's 2-core machine, one
# thread, the default network (DenseNet121 at 96x96) in batches of 32: 18.5 ms a file whatever its size up to 512^2
# (the forward pass dominates), decoding and preprocessing 6.5 ns a pixel uncompressed and 65 ns a pixel for
# JPEG 2000, inflating about 300 MB/s (twice: once to check, once to predict). The largest request then costs
# 1,000 files x 18.5 ms + 128 M pixels x 65 ns + 2 x 512 MiB / 300 MB/s, about 18.5 + 8.3 + 3.6 = 30 s here; a vCPU of
# an m5 (a hyperthread) is taken as up to twice slower, 60 s: half the worker timeout, and inside SageMaker's
# 60 s invocation limit of real-time endpoints, whose 6 MB payloads hold far less. A network larger than the default,
# or a larger image size, costs more a file: split such requests into smaller ones.
MAX_ZIP_MEMBERS = 1_000  # files (and directories) in a zip's directory: 1,000 x 18.5 ms = 18.5 s (above)
MAX_ZIP_DIRECTORY_BYTES = MAX_ZIP_MEMBERS * 1024  # 1,000 entries whose paths and extras take up to 1 KiB each
MAX_ZIP_BYTES = 512 * 1024**2  # the members' declared sizes added up: MAX_REQUEST_PIXELS at 4 bytes a sample
# A member's declared size over its compressed size. Deflate reaches about 1,030 on zeros (a zip bomb); measured here
# with zlib: DICOM of pydicom's test files at most 42, pydicom-data's synthetic colour bars 202, our synthetic set 1.8.
MAX_ZIP_RATIO = 250
MAX_REQUEST_PIXELS = 128_000_000  # samples a request decodes (one frame a file), from the headers: 488 CT slices 512^2
_INFLATE_CHUNK = 1024**2  # bytes inflated at a time
_IGNORED_MEMBERS = ("__MACOSX/", ".DS_Store", "Thumbs.db")  # archivers' extras, not images
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # DICOM PS3.5 9.1: digits and dots, at most 64 characters
_HEADER_TAGS = ["SOPInstanceUID", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames"]


class InvalidInput(ValueError):
    """A request the model cannot answer; the server returns `status` with `reason` (never a 5xx).

    Attributes:
        status: the HTTP status: 400 bad body, 406 unsupported Accept, 415 unsupported Content-Type.
        reason: one sentence saying what was wrong and what is accepted, for the client (names it sent, escaped).
        logged: the same without anything the client chose (file names, headers): what the server logs. Zip member
            names often carry patient names, and a newline in one would forge log lines.
    """

    def __init__(self, reason: str, *, status: int = 400, logged: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.logged = reason if logged is None else logged
        super().__init__(reason)


def shown(name: str, limit: int = 120) -> str:
    """A client-chosen name as an answer may quote it: control characters escaped, at most `limit` characters."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "\u2026"


def position(number: int, count: int) -> str:
    """How the log names a request's file: its place, never its client-chosen name."""
    return f"file {number + 1} of {count}"


@dataclass(frozen=True)
class DicomInput:
    """One file of a request, checked but not yet decoded.

    Attributes:
        name: the zip member's path, or 'body' for a single file.
        sop_instance_uid: its SOPInstanceUID ('' when the file has none, or when it is not a valid UID: a corrupted
            length can make it swallow the elements after it, patient names included).
        load: returns the file's bytes: the body, or the member inflated again (zips are inflated one member at a
            time, when predict_fn needs it, so a request never holds all its files inflated at once).
    """

    name: str
    sop_instance_uid: str
    load: Callable[[], bytes] = field(repr=False, compare=False)

    @property
    def data(self) -> bytes:
        """The file's bytes."""
        return self.load()


def zip_inputs(data: bytes) -> list[DicomInput]:
    """A zip's members, each inflated once to check it (one at a time, never past its declared size), in name order."""
    archive, infos = _listed_members(data)
    inputs: list[DicomInput] = []
    pixels = 0
    for number, info in enumerate(infos):
        place = position(number, len(infos))

        def load(info: zipfile.ZipInfo = info, place: str = place) -> bytes:
            return _inflate(archive, info, place)

        content = load()
        if content[DICM_OFFSET : DICM_OFFSET + 4] != b"DICM":
            reason = "not a DICOM Part 10 file (no 'DICM' marker at byte 128); the zip must hold DICOM files only"
            raise InvalidInput(f"{shown(info.filename)}: {reason}", logged=f"{place}: {reason}")
        uid, samples = checked_header(info.filename, content, place)
        del content  # one member inflated at a time
        pixels += samples
        if pixels > MAX_REQUEST_PIXELS:
            reason = (f"the request's frames reach {pixels} pixels (samples) by this file; at most "
                      f"{MAX_REQUEST_PIXELS} are decoded per request (inference.MAX_REQUEST_PIXELS): split the files "
                      "into several requests")
            raise InvalidInput(f"{shown(info.filename)}: {reason}", logged=f"{place}: {reason}")
        inputs.append(DicomInput(info.filename, uid, load))
    if not inputs:
        raise InvalidInput("the zip holds no files: put the DICOM files in it")
    return inputs


def _listed_members(data: bytes) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The zip and its files in name order, once its directory is within the limits: entries, directory bytes, files,
    declared sizes and each member's compression ratio; nothing is inflated yet."""
    entries, directory = _directory(data)
    # Both before zipfile builds an object per entry: it parses the whole directory whatever count the end record
    # declares, and 100 MiB of directory hold two million entries.
    if entries > MAX_ZIP_MEMBERS:
        raise InvalidInput(f"the zip's directory lists {entries} entries; at most {MAX_ZIP_MEMBERS} per request "
                           "(inference.MAX_ZIP_MEMBERS): split the files into several requests")
    if directory > MAX_ZIP_DIRECTORY_BYTES:
        raise InvalidInput(f"the zip's directory has {directory} bytes; at most {MAX_ZIP_DIRECTORY_BYTES} "
                           "(inference.MAX_ZIP_DIRECTORY_BYTES, MAX_ZIP_MEMBERS entries of 1 KiB): split the files "
                           "into several requests")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InvalidInput(f"the body is not a readable zip file ({exc})") from None
    # In name order, the order of the answers: a refusal's place ("file 2 of 5") is the same however it is found.
    infos = sorted((i for i in archive.infolist() if not i.is_dir() and not _ignored(i.filename)),
                   key=lambda i: i.filename)
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InvalidInput(f"the zip holds {len(infos)} files; at most {MAX_ZIP_MEMBERS} per request "
                           "(inference.MAX_ZIP_MEMBERS): split the files into several requests")
    total = sum(i.file_size for i in infos)
    if total > MAX_ZIP_BYTES:
        raise InvalidInput(f"the zip's files declare {total} bytes inflated; at most {MAX_ZIP_BYTES} per request "
                           "(inference.MAX_ZIP_BYTES): split the files into several requests")
    for number, info in enumerate(infos):
        if info.file_size > MAX_ZIP_RATIO * info.compress_size:
            reason = (f"the zip member declares {info.file_size} bytes from {info.compress_size} compressed, a ratio "
                      f"above {MAX_ZIP_RATIO} (inference.MAX_ZIP_RATIO): store it uncompressed, or send it alone as "
                      f"{DICOM}")
            raise InvalidInput(f"{shown(info.filename)}: {reason}",
                               logged=f"{position(number, len(infos))}: {reason}")
    return archive, infos


def _directory(data: bytes) -> tuple[int, int]:
    """The entry count and directory size the zip's end record declares ((0, 0) when there is none: zipfile then
    refuses the body)."""
    try:
        end = zipfile._EndRecData(io.BytesIO(data))  # type: ignore[attr-defined]  # stable since Python 2
    except OSError:
        return 0, 0
    if not end:
        return 0, 0
    return int(end[zipfile._ECD_ENTRIES_TOTAL]), int(end[zipfile._ECD_SIZE])  # type: ignore[attr-defined]


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, place: str) -> bytes:
    """A member's bytes, inflated a chunk at a time and never beyond its declared size: zipfile stops there and checks
    the CRC, so a member whose data inflates further (its sizes lie) is refused as damaged."""
    parts: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as stream:
            while piece := stream.read(_INFLATE_CHUNK):
                size += len(piece)
                if size > info.file_size:  # zipfile never gets here (it stops at the declared size): a second guard
                    raise zipfile.BadZipFile("more data than declared")
                parts.append(piece)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, ValueError) as exc:
        reason = (f"the zip member cannot be read ({type(exc).__name__}): it is damaged, encrypted, or its data "
                  f"does not match its declared size ({info.file_size} bytes, never inflated further) and CRC")
        raise InvalidInput(f"{shown(info.filename)}: {reason}", logged=f"{place}: {reason}") from None
    return b"".join(parts)


def _ignored(member: str) -> bool:
    base = member.rsplit("/", 1)[-1]
    return member.startswith(_IGNORED_MEMBERS[0]) or base in _IGNORED_MEMBERS[1:] or base.startswith("._")


def checked_header(name: str, data: bytes, place: str) -> tuple[str, int]:
    """The header's SOPInstanceUID and the samples of the frame that will be decoded (pixels not read); a body that
    is not DICOM Part 10, or whose frame exceeds training.dataset.dicom's limits, is refused here, named by `name` to
    the client and by `place` in the log."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's validation warnings quote values (training/dataset/dicom.py)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            uid = str(ds.get("SOPInstanceUID", "") or "").strip()  # converted, so validated, inside the suppression
            check_frame_size(ds, place)
            samples = frame_samples(ds, place)
    except InvalidDicomError:
        reason = "not a DICOM Part 10 file (no 'DICM' marker at byte 128)"
        raise InvalidInput(f"{shown(name)}: {reason}", logged=f"{place}: {reason}") from None
    except DicomReadError as exc:
        raise InvalidInput(f"{shown(name)}: {exc.reason}", logged=f"{place}: {exc.reason}") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        reason = f"its DICOM header cannot be read ({type(exc).__name__})"
        raise InvalidInput(f"{shown(name)}: {reason}", logged=f"{place}: {reason}") from None
    return (uid if len(uid) <= 64 and _UID.fullmatch(uid) else ""), samples

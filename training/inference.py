"""Classify DICOM files with a trained bundle: the notebook's and the bundle's own inference path.

    python -m monai.bundle run --config_file MODEL/configs/inference.json --meta_file MODEL/configs/metadata.json \\
        --bundle_root MODEL --dataset_dir DICOM_DIR --output_file predictions.csv

or in Python:

    predictor = Predictor.from_bundle("MODEL")
    for p in predictor.predict(["a.dcm", "b.dcm"]): print(p.file, p.label, p.probabilities)

The first is MONAI's tool and evaluates the config (run it on bundles you trust); from_bundle (and model_fn) read
the bundle's plain fields as data (training.job.bundle.read_bundle), never evaluating it, and load models/model.pt, the
plain state dict (weights_only=True), into a fresh MONAI network from training.job.networks: no TorchScript, so a
PyTorch older than the one that trained the model (the notebook kernel's) loads it too. Preprocessing is
training.dataset.dicom.load_image (through training.dicom_transforms), the one
definition training used.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError

from training.dataset.dicom import DICM_OFFSET, DicomReadError, Source, has_dicom_marker
from training.job.evaluation import predict as decide


@dataclass(frozen=True)
class Prediction:
    """One file's result.

    Attributes:
        file: the file as given (a path, or '<bytes #i>').
        label: the predicted class name (for two classes: at the bundle's threshold).
        probabilities: class name to softmax probability.
    """

    file: str
    label: str
    probabilities: dict[str, float]


class Predictor:
    """A trained network with its preprocessing and decision rule.

    Args:
        network: the MONAI network with its trained weights.
        preprocessing: a DICOM source (path or bytes) to a float32 tensor 1 x H x W.
        class_names: by output index.
        threshold: two classes: positive when P(positive) >= threshold.
        positive_index: the positive class (two classes).
        device: where the network runs.
        inferer: runs the network on a batch, e.g. MONAI's SimpleInferer; None calls the network.
        postprocessing: logits (N x C) to probabilities; None: softmax.
        batch_size: files per forward pass.
    """

    def __init__(
        self,
        *,
        network: torch.nn.Module,
        preprocessing: Callable[[Any], torch.Tensor],
        class_names: Sequence[str],
        threshold: float = 0.5,
        positive_index: int = 1,
        device: torch.device | str = "cpu",
        inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor] | None = None,
        postprocessing: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.network = network.eval()
        self.preprocessing = preprocessing
        self.class_names = list(class_names)
        self.threshold = float(threshold)
        self.positive_index = int(positive_index)
        self.device = torch.device(device)
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.batch_size = batch_size

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike[str], *, device: str | None = None) -> Predictor:
        """The predictor a bundle describes: training.job.bundle.read_bundle's checked fields, our own network and
        preprocessing; the bundle's configs are read as data, never evaluated (its MONAI `evaluator` is not built).

        Args:
            bundle_dir: the bundle (the job's model directory, or model.tar.gz extracted).
            device: "cpu", "cuda", ...; default: a GPU when there is one.

        Raises:
            training.job.bundle.BundleError: a field of the bundle fails its check (a ValueError naming file and field).
        """
        from training.dicom_transforms import LoadDicomImage
        from training.job.bundle import load_network, read_bundle  # MONAI is needed only here

        spec = read_bundle(Path(bundle_dir).resolve())  # plain fields as data: nothing in the bundle is evaluated
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            network=load_network(spec, device=device),
            preprocessing=LoadDicomImage(spec.image_size, spec.window),
            class_names=spec.class_names,
            threshold=spec.threshold,
            positive_index=spec.positive_index,
            device=device,
        )

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Softmax outputs of preprocessed images (N x 1 x H x W) as an N x C array."""
        images = images.to(self.device, torch.float32)
        logits = self.inferer(images, self.network) if self.inferer is not None else self.network(images)
        if self.postprocessing is not None:
            return np.asarray(torch.as_tensor(self.postprocessing(logits)).float().cpu())
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def predict(self, sources: Sequence[Source], *, names: Sequence[str] | None = None) -> list[Prediction]:
        """Classify DICOM files (paths or bytes).

        Args:
            sources: the files.
            names: how results and errors name each file; default its path, or '<bytes #i>'.

        Raises:
            training.dataset.dicom.DicomReadError: a file cannot be read; the message names it.
            ValueError: names and sources differ in length.
        """
        if names is not None and len(names) != len(sources):
            raise ValueError(f"names must name every source: {len(names)} names for {len(sources)} sources")
        results: list[Prediction] = []
        for start in range(0, len(sources), self.batch_size):
            chunk = sources[start : start + self.batch_size]
            chunk_names = [
                names[start + i]
                if names is not None
                else os.fspath(s)
                if isinstance(s, str | os.PathLike)
                else f"<bytes #{start + i}>"
                for i, s in enumerate(chunk)
            ]
            batch = torch.stack([self._preprocess(s, n) for s, n in zip(chunk, chunk_names, strict=True)])
            probabilities = self.probabilities(batch)
            labels = decide(probabilities, threshold=self.threshold, positive=self.positive_index)
            for name, row, label in zip(chunk_names, probabilities, labels, strict=True):
                scores = {c: float(p) for c, p in zip(self.class_names, row, strict=True)}
                results.append(Prediction(name, self.class_names[int(label)], scores))
        return results

    def _preprocess(self, source: Source, name: str) -> torch.Tensor:
        try:
            return torch.as_tensor(self.preprocessing(source))
        except DicomReadError as exc:  # the transform knows bytes only as '<bytes>': name the file
            raise DicomReadError(name, exc.reason) from None

    def write_predictions(self, sources: Sequence[Source], path: str | os.PathLike[str]) -> Path:
        """Classify files and write the CSV (`write_predictions`); what the bundle's `run` does."""
        return write_predictions(self.predict(sources), path)


def load_weights(network: torch.nn.Module, checkpoint: str | os.PathLike[str], device: Any) -> torch.nn.Module:
    """Load a state dict (models/model.pt) into a network and put it in eval mode on the device."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    network.load_state_dict(state)
    return network.to(device).eval()


def find_dicom_files(directory: str | os.PathLike[str]) -> list[str]:
    """The DICOM files under a directory at any depth, by the 'DICM' marker (not the suffix), sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"dataset_dir {root} is not a directory of DICOM files")
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and has_dicom_marker(p))


def write_predictions(predictions: Sequence[Prediction], path: str | os.PathLike[str]) -> Path:
    """A CSV with file, label and one probability column per class."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    classes = list(predictions[0].probabilities) if predictions else []
    with open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", *[f"p_{c}" for c in classes]])
        for p in predictions:
            writer.writerow([p.file, p.label, *[f"{p.probabilities[c]:.6f}" for c in classes]])
    return target


# --- SageMaker's inference handlers (hosting and batch transform; training/serve.py calls them) -------------------
#
# model_fn(model_dir) -> model; input_fn(body, content_type) -> data; predict_fn(data, model) -> prediction;
# output_fn(prediction, accept) -> (body, content type). The names and signatures are SageMaker's (the PyTorch
# inference toolkit's handler contract), so the same module serves under either server.

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


def _shown(name: str, limit: int = 120) -> str:
    """A client-chosen name as an answer may quote it: control characters escaped, at most `limit` characters."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "\u2026"


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


def model_fn(model_dir: str | os.PathLike[str]) -> Predictor:
    """Load the bundle SageMaker extracted (model.tar.gz) into /opt/ml/model: its `evaluator` Predictor.

    The preprocessing (image size, window) and decision rule come from the bundle's configs/inference.json, read as
    data and checked (training.job.bundle.read_bundle: a BundleError refuses a bad field), i.e.
    training.dataset.dicom.load_image with the values the model was trained with.
    """
    root = Path(model_dir)
    if not (root / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{root} holds no MONAI bundle (configs/inference.json): pass the job's model.tar.gz")
    return Predictor.from_bundle(root)


def input_fn(body: bytes | bytearray, content_type: str | None) -> list[DicomInput]:
    """The request's DICOM files, each checked from its header; no pixel is decoded yet.

    Every limit is checked before the work it bounds: a zip's member count, declared sizes and compression ratios
    from its directory before anything is inflated; then each member, inflated alone and never beyond its declared
    size, must be DICOM Part 10 with frames within training.dataset.dicom's limits and the request's pixel budget
    (MAX_REQUEST_PIXELS). Its bytes are then dropped: predict_fn inflates members again, a batch at a time.

    Args:
        body: the request body.
        content_type: application/dicom (one file) or application/zip (files at any depth; directories and
            archivers' metadata are skipped). Parameters (`; charset=...`) are ignored.

    Raises:
        InvalidInput: 415 for another content type; 400 for an empty body, a damaged zip, a zip without DICOM
            files, a file that is not DICOM Part 10 (named), or a limit exceeded (named, with its value).
    """
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in (DICOM, ZIP):
        raise InvalidInput(
            f"Content-Type {_shown(repr(content_type))} is not supported: send {DICOM} (one file) or {ZIP}",
            status=415, logged=f"the Content-Type is not supported: {DICOM} or {ZIP} are",
        )
    data = bytes(body)
    if not data:
        raise InvalidInput(f"the request body is empty: send a DICOM file as {DICOM}, or a zip as {ZIP}")
    if kind == ZIP:
        return _zip_inputs(data)
    uid, _ = _checked_header("body", data, _position(0, 1))
    return [DicomInput("body", uid, lambda: data)]


def _position(number: int, count: int) -> str:
    """How the log names a request's file: its place, never its client-chosen name."""
    return f"file {number + 1} of {count}"


def predict_fn(data: Sequence[DicomInput], model: Predictor) -> list[dict[str, Any]]:
    """Classify the files; one result per file, in request order. Files are loaded (zip members inflated) a batch
    of model.batch_size at a time, so a request holds one batch of files in memory, not all of them.

    Raises:
        InvalidInput: a file cannot become an image (no pixel data, undecodable); the reason names it.
    """
    results: list[dict[str, Any]] = []
    for start in range(0, len(data), model.batch_size):
        batch = data[start : start + model.batch_size]
        try:
            predictions = model.predict([d.data for d in batch], names=[d.name for d in batch])
        except DicomReadError as exc:
            number = start + next((n for n, d in enumerate(batch) if d.name == exc.file), 0)
            raise InvalidInput(f"{_shown(exc.file)}: {exc.reason}",
                               logged=f"{_position(number, len(data))}: {exc.reason}") from None
        results += [
            {"file": d.name, "SOPInstanceUID": d.sop_instance_uid, "label": p.label, "probabilities": p.probabilities}
            for d, p in zip(batch, predictions, strict=True)
        ]
    return results


def output_fn(prediction: Sequence[Mapping[str, Any]], accept: str | None) -> tuple[bytes, str]:
    """JSON: {"predictions": [{"file", "SOPInstanceUID", "label", "probabilities": {class: p}}, ...]}.

    Raises:
        InvalidInput: 406 when the client accepts neither JSON nor anything.
    """
    accepted = [a.split(";", 1)[0].strip().lower() for a in (accept or "").split(",") if a.strip()]
    if accepted and not {JSON, "*/*", "application/*"} & set(accepted):
        raise InvalidInput(f"Accept {_shown(repr(accept))} cannot be served: the model answers {JSON}", status=406,
                           logged=f"the Accept header cannot be served: the model answers {JSON}")
    return json.dumps({"predictions": list(prediction)}, allow_nan=False).encode("utf-8"), JSON


def _zip_inputs(data: bytes) -> list[DicomInput]:
    """A zip's members, each inflated once to check it (one at a time, never past its declared size), in name order."""
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
            raise InvalidInput(f"{_shown(info.filename)}: {reason}",
                               logged=f"{_position(number, len(infos))}: {reason}")
    inputs: list[DicomInput] = []
    pixels = 0
    for number, info in enumerate(infos):
        place = _position(number, len(infos))

        def load(info: zipfile.ZipInfo = info, place: str = place) -> bytes:
            return _inflate(archive, info, place)

        content = load()
        if content[DICM_OFFSET : DICM_OFFSET + 4] != b"DICM":
            reason = "not a DICOM Part 10 file (no 'DICM' marker at byte 128); the zip must hold DICOM files only"
            raise InvalidInput(f"{_shown(info.filename)}: {reason}", logged=f"{place}: {reason}")
        uid, samples = _checked_header(info.filename, content, place)
        del content  # one member inflated at a time
        pixels += samples
        if pixels > MAX_REQUEST_PIXELS:
            reason = (f"the request's frames reach {pixels} pixels (samples) by this file; at most "
                      f"{MAX_REQUEST_PIXELS} are decoded per request (inference.MAX_REQUEST_PIXELS): split the files "
                      "into several requests")
            raise InvalidInput(f"{_shown(info.filename)}: {reason}", logged=f"{place}: {reason}")
        inputs.append(DicomInput(info.filename, uid, load))
    if not inputs:
        raise InvalidInput("the zip holds no files: put the DICOM files in it")
    return inputs


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
        raise InvalidInput(f"{_shown(info.filename)}: {reason}", logged=f"{place}: {reason}") from None
    return b"".join(parts)


def _ignored(member: str) -> bool:
    base = member.rsplit("/", 1)[-1]
    return member.startswith(_IGNORED_MEMBERS[0]) or base in _IGNORED_MEMBERS[1:] or base.startswith("._")


def _checked_header(name: str, data: bytes, place: str) -> tuple[str, int]:
    """The header's SOPInstanceUID and the samples of the frame that will be decoded (pixels not read); a body that
    is not DICOM Part 10, or whose frame exceeds training.dataset.dicom's limits, is refused here, named by `name` to
    the client and by `place` in the log."""
    from training.dataset.dicom import check_frame_size, frame_samples

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's validation warnings quote values (training/dataset/dicom.py)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            uid = str(ds.get("SOPInstanceUID", "") or "").strip()  # converted, so validated, inside the suppression
            check_frame_size(ds, place)
            samples = frame_samples(ds, place)
    except InvalidDicomError:
        reason = "not a DICOM Part 10 file (no 'DICM' marker at byte 128)"
        raise InvalidInput(f"{_shown(name)}: {reason}", logged=f"{place}: {reason}") from None
    except DicomReadError as exc:
        raise InvalidInput(f"{_shown(name)}: {exc.reason}", logged=f"{place}: {exc.reason}") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        reason = f"its DICOM header cannot be read ({type(exc).__name__})"
        raise InvalidInput(f"{_shown(name)}: {reason}", logged=f"{place}: {reason}") from None
    return (uid if len(uid) <= 64 and _UID.fullmatch(uid) else ""), samples


_HEADER_TAGS = ["SOPInstanceUID", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames"]

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

SageMaker's handlers (model_fn, input_fn, predict_fn, output_fn) follow, for training/serve.py and the image's
`serve`; what a request may hold (content types, limits, a zip read member by member) is
training/serving/request.py's, and its names are importable from here as before. model_fn lets a 2-D network's logits
come from ONNX Runtime where it passes a self-check against PyTorch (training/serving/runtimes.py,
DICOM_SERVING_RUNTIME); the softmax and decision stay here, the same for every runtime.

A 3-D bundle (training.job.bundle.BundleSpec.spatial_dims 3) answers per series, never per file: `predict_volumes`
assembles the files it is given into series and predicts once per series (`predict_series`), reporting bad series
with their reasons; a request to the server is one series (training/serving/volumes.py says what it may hold).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.dataset.dicom import DicomReadError, Source, dicom_files_under
from training.dataset.series import Series, assemble
from training.job.evaluation import predict as decide
from training.serving import runtimes
from training.serving.request import (
    DICOM,
    JSON,
    ZIP,
    DicomInput,
    InvalidInput,
    checked_header,
    position,
    shown,
    zip_inputs,
)

# The request limits, re-exported: clients, the README and the refusals' messages name them training.inference.X.
from training.serving.request import MAX_REQUEST_PIXELS as MAX_REQUEST_PIXELS
from training.serving.request import MAX_ZIP_BYTES as MAX_ZIP_BYTES
from training.serving.request import MAX_ZIP_DIRECTORY_BYTES as MAX_ZIP_DIRECTORY_BYTES
from training.serving.request import MAX_ZIP_MEMBERS as MAX_ZIP_MEMBERS
from training.serving.request import MAX_ZIP_RATIO as MAX_ZIP_RATIO
from training.serving.volumes import MAX_SERIES_SLICES as MAX_SERIES_SLICES
from training.serving.volumes import LoadSeriesVolume as LoadSeriesVolume  # inference.json of a 3-D bundle names it
from training.serving.volumes import SeriesPrediction, predict_request


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


class CalibratedSoftmax:
    """Logits to calibrated probabilities: softmax(logits / temperature) (training/job/calibration.py fitted the
    temperature on the validation set; the bundle's inference.json "temperature" holds it).

    Args:
        temperature: a finite number > 0; 1.0 is the plain softmax.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0; got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float() / self.temperature, dim=1)


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
        postprocessing: logits (N x C) to probabilities; None: CalibratedSoftmax(temperature).
        batch_size: files per forward pass.
        spatial_dims: 2 (preprocessing reads a file: `predict`) or 3 (it reads a series: `predict_series`).
        temperature: the calibration's temperature; postprocessing, when given, must apply it itself (the bundle's
            MONAI config passes CalibratedSoftmax(temperature)).
        runtime_logits: computes the network's logits in another runtime (training/serving/runtimes.py); None: the
            network. The network stays for anything needing gradients (heat maps).
        runtime: the name of what computes the logits ("pytorch" when runtime_logits is None).
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
        spatial_dims: int = 2,
        temperature: float = 1.0,
        runtime_logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
        runtime: str = "pytorch",
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
        self.postprocessing = postprocessing or CalibratedSoftmax(temperature)
        self.temperature = float(temperature)
        self.batch_size = batch_size
        self.spatial_dims = spatial_dims
        self.runtime_logits = runtime_logits
        self.runtime = runtime if runtime_logits is not None else "pytorch"

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike[str], *, device: str | None = None,
                    runtime: str = "pytorch") -> Predictor:
        """The predictor a bundle describes: training.job.bundle.read_bundle's checked fields, our own network and
        preprocessing; the bundle's configs are read as data, never evaluated (its MONAI `evaluator` is not built).

        Args:
            bundle_dir: the bundle (the job's model directory, or model.tar.gz extracted).
            device: "cpu", "cuda", ...; default: a GPU when there is one.
            runtime: what computes the logits of a 2-D network on the CPU: "pytorch", "onnxruntime" or "auto"
                (training/serving/runtimes.py: self-checked against PyTorch at load, which serves on a mismatch).

        Raises:
            training.job.bundle.BundleError: a field of the bundle fails its check (a ValueError naming file and field).
        """
        from training.dicom_transforms import LoadDicomImage
        from training.job.bundle import load_network, read_bundle  # MONAI is needed only here

        spec = read_bundle(Path(bundle_dir).resolve())  # plain fields as data: nothing in the bundle is evaluated
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        volumes = spec.spatial_dims == 3
        network = load_network(spec, device=device)
        name, logits = "pytorch", None
        if runtime != "pytorch" and not volumes and torch.device(device).type == "cpu":  # 3-D and GPUs: PyTorch
            name, logits, _ = runtimes.choose(network, (1, *spec.image_size), setting=runtime,
                                              weights_digest=runtimes.file_digest(spec.weights),
                                              temperature=spec.temperature)
        return cls(
            network=network,
            runtime_logits=logits,
            runtime=name,
            preprocessing=(LoadSeriesVolume if volumes else LoadDicomImage)(spec.image_size, spec.window),
            spatial_dims=spec.spatial_dims,
            class_names=spec.class_names,
            threshold=spec.threshold,
            positive_index=spec.positive_index,
            device=device,
            temperature=spec.temperature,
        )

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities of preprocessed images (N x 1 x H x W) as an N x C array: the postprocessing
        (softmax(logits / temperature)) of `logits`."""
        return np.asarray(torch.as_tensor(self.postprocessing(self.logits(images))).float().cpu())

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The network's raw outputs (N x C) for preprocessed images (N x 1 x H x W)."""
        images = images.to(self.device, torch.float32)
        if self.inferer is not None:
            return self.inferer(images, self.network)
        return (self.runtime_logits or self.network)(images)

    def predict(self, sources: Sequence[Source], *, names: Sequence[str] | None = None) -> list[Prediction]:
        """Classify DICOM files (paths or bytes).

        Args:
            sources: the files.
            names: how results and errors name each file; default its path, or '<bytes #i>'.

        Raises:
            training.dataset.dicom.DicomReadError: a file cannot be read; the message names it.
            ValueError: names and sources differ in length, or the model is 3-D (it reads series: predict_volumes).
        """
        if self.spatial_dims == 3:
            raise ValueError("this model classifies series (a 3-D bundle): use predict_volumes(files), which assembles "
                             "the files into series and answers once per series")
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

    def predict_series(self, series: Series) -> SeriesPrediction:
        """Classify one assembled series (3-D bundles): one forward pass on its volume.

        Raises:
            training.dataset.volume.VolumeError: the series cannot be decoded; the message names it by position.
            ValueError: the model is 2-D (it reads files: predict).
        """
        if self.spatial_dims != 3:
            raise ValueError("this model classifies single images (a 2-D bundle): use predict(files)")
        probabilities = self.probabilities(torch.as_tensor(self.preprocessing(series)).unsqueeze(0))
        label = int(decide(probabilities, threshold=self.threshold, positive=self.positive_index)[0])
        scores = {c: float(p) for c, p in zip(self.class_names, probabilities[0], strict=True)}
        return SeriesPrediction(series.name, series.location, series.slice_count, self.class_names[label], scores,
                                series.series_uid)

    def predict_volumes(
        self, files: Sequence[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None
    ) -> tuple[list[SeriesPrediction], list[dict[str, str]]]:
        """Assemble DICOM files into series (training.dataset.series.assemble) and classify each (3-D bundles).

        Returns:
            The predictions, one per good series in name order, and the bad series and files, each {"series", "file",
            "reason"} (series that cannot be decoded included): named by position and location, never by UID.
        """
        from training.dataset.volume import VolumeError

        report = assemble(files, root=root)
        predictions = []
        bad = list(report.bad)
        for series in report.series:
            try:
                predictions.append(self.predict_series(series))
            except VolumeError as exc:
                bad.append({"series": series.name, "file": series.location, "reason": str(exc)})
        return predictions, bad

    def write_series_predictions(self, files: Sequence[str | os.PathLike[str]], path: str | os.PathLike[str]) -> Path:
        """Classify the series among files and write a CSV of series, location, slices, label and probabilities (the
        3-D bundle's `run`); no UID: the CSV is a file we write, the UIDs stay in answers."""
        predictions, _ = self.predict_volumes(files)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["series", "location", "slices", "label", *[f"p_{c}" for c in self.class_names]])
            for p in predictions:
                writer.writerow([p.series, p.location, p.slices, p.label,
                                 *[f"{p.probabilities[c]:.6f}" for c in self.class_names]])
        return target


def load_weights(network: torch.nn.Module, checkpoint: str | os.PathLike[str], device: Any) -> torch.nn.Module:
    """Load a state dict (models/model.pt) into a network and put it in eval mode on the device."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    network.load_state_dict(state)
    return network.to(device).eval()


def find_dicom_files(directory: str | os.PathLike[str]) -> list[str]:
    """The DICOM files under a directory at any depth, sorted (training.dataset.dicom.dicom_files_under: by the 'DICM'
    marker, not the suffix; hidden folders and DICOMDIR indexes left out)."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"dataset_dir {root} is not a directory of DICOM files")
    return [str(p) for p in dicom_files_under(root)]


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
# inference toolkit's handler contract), so the same module serves under either server. What a request may hold (the
# content types, the limits, the zip's reading and InvalidInput) is training/serving/request.py's; its names that
# clients and the README know (InvalidInput, MAX_ZIP_MEMBERS, MAX_REQUEST_PIXELS, ...) are imported here.


def model_fn(model_dir: str | os.PathLike[str]) -> Predictor:
    """Load the bundle SageMaker extracted (model.tar.gz) into /opt/ml/model: its `evaluator` Predictor.

    The preprocessing (image size, window) and decision rule come from the bundle's configs/inference.json, read as
    data and checked (training.job.bundle.read_bundle: a BundleError refuses a bad field), i.e.
    training.dataset.dicom.load_image with the values the model was trained with. The logits of a 2-D network on the
    CPU come from the runtime DICOM_SERVING_RUNTIME names (pytorch, onnxruntime, or auto: the fastest that passes its
    self-check here; training/serving/runtimes.py).

    Raises:
        ValueError: DICOM_SERVING_RUNTIME is set to something else.
    """
    root = Path(model_dir)
    if not (root / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{root} holds no MONAI bundle (configs/inference.json): pass the job's model.tar.gz")
    # The serving edge: the runtime setting is read here (training/serving/runtimes.py; default "auto").
    return Predictor.from_bundle(root, runtime=runtimes.check_setting(os.environ.get(runtimes.RUNTIME_VARIABLE)))


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
            f"Content-Type {shown(repr(content_type))} is not supported: send {DICOM} (one file) or {ZIP}",
            status=415, logged=f"the Content-Type is not supported: {DICOM} or {ZIP} are",
        )
    data = bytes(body)
    if not data:
        raise InvalidInput(f"the request body is empty: send a DICOM file as {DICOM}, or a zip as {ZIP}")
    if kind == ZIP:
        return zip_inputs(data)
    uid, _ = checked_header("body", data, position(0, 1))
    return [DicomInput("body", uid, lambda: data)]


def predict_fn(data: Sequence[DicomInput], model: Predictor) -> list[dict[str, Any]]:
    """Classify the files; one result per file, in request order. Files are loaded (zip members inflated) a batch
    of model.batch_size at a time, so a request holds one batch of files in memory, not all of them.

    A 3-D model answers the request's one series instead (training/serving/volumes.py predict_request).

    Raises:
        InvalidInput: a file cannot become an image (no pixel data, undecodable); the reason names it.
    """
    if getattr(model, "spatial_dims", 2) == 3:
        return predict_request(data, model)
    results: list[dict[str, Any]] = []
    for start in range(0, len(data), model.batch_size):
        batch = data[start : start + model.batch_size]
        try:
            predictions = model.predict([d.data for d in batch], names=[d.name for d in batch])
        except DicomReadError as exc:
            number = start + next((n for n, d in enumerate(batch) if d.name == exc.file), 0)
            raise InvalidInput(f"{shown(exc.file)}: {exc.reason}",
                               logged=f"{position(number, len(data))}: {exc.reason}") from None
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
        raise InvalidInput(f"Accept {shown(repr(accept))} cannot be served: the model answers {JSON}", status=406,
                           logged=f"the Accept header cannot be served: the model answers {JSON}")
    return json.dumps({"predictions": list(prediction)}, allow_nan=False).encode("utf-8"), JSON


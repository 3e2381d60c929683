"""Write the trained model as a MONAI bundle (MONAI Bundle Specification), and read its network back.

    MODEL_DIR/
      configs/metadata.json   versions, classes, input/output format, evaluation metrics, lineage
      configs/inference.json  the network, preprocessing and decision rule for MONAI's ConfigParser (offline)
      models/model.pt         the weights: a plain float32 state dict (torch.load(weights_only=True))
      models/model.ts         TorchScript with metadata.json and inference.json embedded (optional)
      docs/README.md          how to use it

Nothing here touches the network: the metadata's "schema" URL is recorded as the specification asks, but never
fetched (tests validate against a stored copy of the schema).

Trust boundary: inference.json is MONAI config syntax (`_target_`, `$expression`) for MONAI's own tools. Our loaders
never evaluate it: `read_bundle` reads named plain fields as data and checks each, `load_network` builds the network
from training.job.networks and loads model.pt with weights_only=True. models/model.ts (TorchScript is code) is never
loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, TypeGuard

import monai
import numpy as np
import torch

from training.job.config import IMAGE_SIZE_RANGE, NETWORKS, TrainConfig
from training.job.networks import build_network, network_spec

log = logging.getLogger(__name__)

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = "0.1.0"
# What inference needs beyond MONAI, PyTorch and NumPy (pydicom decodes; the codecs read compressed files).
REQUIRED_PACKAGES = ("pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")


def write_bundle(
    model_dir: Path,
    *,
    network: torch.nn.Module,
    network_name: str,
    classes: Sequence[str],
    config: TrainConfig,
    positive_index: int,
    eval_metrics: Mapping[str, float | None],
    lineage: Mapping[str, Any],
) -> Path:
    """Write the bundle for a trained network.

    Args:
        model_dir: the bundle's root (SageMaker's model directory); created.
        network: the network holding the weights to ship.
        network_name: its name in training.job.config.NETWORKS.
        classes: class names by output index.
        config: the hyperparameters (image size, window, threshold, torchscript).
        positive_index: the positive class (two classes).
        eval_metrics: headline metrics (the test set's, else validation's).
        lineage: training/job/lineage.py `job_lineage`.

    Returns:
        model_dir.
    """
    configs, models, docs = model_dir / "configs", model_dir / "models", model_dir / "docs"
    for directory in (configs, models, docs):
        directory.mkdir(parents=True, exist_ok=True)
    target, kwargs = network_spec(network_name, num_classes=len(classes))
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in network.state_dict().items()}
    torch.save(weights, models / "model.pt")
    inference = inference_config(
        target=target,
        kwargs=kwargs,
        classes=classes,
        image_size=config.image_size,
        window=config.window,
        threshold=config.threshold,
        positive_index=positive_index,
    )
    _write_json(configs / "inference.json", inference)
    meta = metadata(
        network_name=network_name,
        classes=classes,
        image_size=config.image_size,
        threshold=config.threshold,
        positive_index=positive_index,
        eval_metrics=eval_metrics,
        lineage=lineage,
    )
    _write_json(configs / "metadata.json", meta)
    (docs / "README.md").write_text(_readme(meta), encoding="utf-8")
    if config.torchscript:
        export_torchscript(model_dir, image_size=config.image_size)
    return model_dir


def inference_config(
    *,
    target: str,
    kwargs: Mapping[str, Any],
    classes: Sequence[str],
    image_size: Sequence[int],
    window: Sequence[float] | None,
    threshold: float,
    positive_index: int,
) -> dict[str, Any]:
    """configs/inference.json: MONAI config syntax (`_target_`, `@ref`, `$expression`), runnable offline.

    `network_def` is what `monai.bundle.load` and `ckpt_export` instantiate; `network` adds the weights;
    `evaluator` is a training.inference.Predictor; `run` classifies `dataset_dir` into `output_file`.
    """
    return {
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "class_names": list(classes),
        "image_size": [int(v) for v in image_size],
        "window": [float(v) for v in window] if window is not None else None,
        "threshold": float(threshold),
        "positive_index": int(positive_index),
        "network_def": {"_target_": target, **kwargs},
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "network": {
            "_target_": "training.inference.load_weights",
            "network": "@network_def",
            "checkpoint": "@checkpoint",
            "device": "@device",
        },
        "preprocessing": {
            "_target_": "training.dicom_transforms.LoadDicomImage",  # training.dataset.dicom.load_image, as in training
            "image_size": "@image_size",
            "window": "@window",
        },
        "inferer": {"_target_": "monai.inferers.SimpleInferer"},
        "postprocessing": "$lambda logits: torch.softmax(logits.float(), dim=1)",
        "dataset_dir": ".",
        "dataset": {"_target_": "training.inference.find_dicom_files", "directory": "@dataset_dir"},
        "output_file": "predictions.csv",
        "evaluator": {
            "_target_": "training.inference.Predictor",
            "network": "@network",
            "preprocessing": "@preprocessing",
            "class_names": "@class_names",
            "threshold": "@threshold",
            "positive_index": "@positive_index",
            "device": "@device",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
        },
        "run": ["$@evaluator.write_predictions(@dataset, @output_file)"],
    }


def metadata(
    *,
    network_name: str,
    classes: Sequence[str],
    image_size: Sequence[int],
    threshold: float,
    positive_index: int,
    eval_metrics: Mapping[str, float | None],
    lineage: Mapping[str, Any],
) -> dict[str, Any]:
    """configs/metadata.json: the specification's required keys, the tensor formats, and the lineage."""
    names = ", ".join(classes)
    channel_def = {str(i): name for i, name in enumerate(classes)}
    two = len(classes) == 2
    return {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "trained by the monai-dicom-sagemaker training job (training/job/train.py)"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": _installed(REQUIRED_PACKAGES),
        "name": f"DICOM image classifier ({network_name})",
        "task": f"Classify a 2-D DICOM image as one of: {names}",
        "description": (
            f"MONAI {network_name} trained from scratch on labeled DICOM images. Input: one image decoded and "
            f"preprocessed by training.dataset.dicom.load_image (modality LUT, window, MONOCHROME1 inverted, gray, "
            f"{image_size[0]}x{image_size[1]}, [0, 1]). Output: one logit per class; softmax gives probabilities."
            + (f" Decision: {classes[positive_index]} when its probability >= {threshold}." if two else "")
        ),
        "authors": "monai-dicom-sagemaker training job",
        "copyright": "The owner of the training data; the code is the repository's",
        "data_source": "See lineage.data: the files, their S3 versions where recorded, and the patient split",
        "data_type": "dicom",
        "image_classes": "single-channel grayscale image, intensities in [0, 1]",
        "label_classes": ", ".join(f"{i}: {name}" for i, name in enumerate(classes)),
        "pred_classes": f"{len(classes)} logits, one per class: " + names,
        "eval_metrics": dict(eval_metrics),
        "intended_use": "Research and demonstration; not for diagnostic use",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "DICOM (any 2-D grayscale or colour modality)",
                    "num_channels": 1,
                    "spatial_shape": [int(v) for v in image_size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(classes),
                    "spatial_shape": [len(classes)],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": channel_def,
                }
            },
        },
        "classes": list(classes),
        "network": network_name,
        "threshold": threshold if two else None,
        "positive_class": classes[positive_index] if two else None,
        "lineage": dict(lineage),
    }


def export_torchscript(model_dir: Path, *, image_size: Sequence[int]) -> Path:
    """models/model.ts from model.pt with MONAI's `ckpt_export` (which instantiates inference.json's network_def).

    Traced rather than scripted: the same graph for these convolutional networks, and tracing needs no
    TorchScript-compatible source in every MONAI layer. TorchScript is deprecated in PyTorch 2.13; model.pt stays the
    primary artifact, and a file saved by a newer PyTorch may not load in an older one.
    """
    from monai.bundle import ckpt_export

    path = model_dir / "models" / "model.ts"
    monai_logger = logging.getLogger("monai.bundle.scripts")  # ckpt_export logs its arguments at INFO
    level = monai_logger.level
    monai_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
            ckpt_export(
                net_id="network_def",
                filepath=str(path),
                ckpt_file=str(model_dir / "models" / "model.pt"),
                meta_file=str(model_dir / "configs" / "metadata.json"),
                config_file=str(model_dir / "configs" / "inference.json"),
                key_in_ckpt="",
                use_trace=True,
                input_shape=[1, 1, int(image_size[0]), int(image_size[1])],
                bundle_root=str(model_dir),
            )
    finally:
        monai_logger.setLevel(level)
    return path


MAX_CLASSES = 1000
MAX_CLASS_NAME = 64


class BundleError(ValueError):
    """A bundle our loaders refuse: a field of its configs (or its weights) fails its type or range.

    Attributes:
        file: the bundle file.
        field: the field (dotted for nested ones).
    """

    def __init__(self, file: Path, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        super().__init__(f"bundle file {file}: field {field!r} {problem}")


@dataclass(frozen=True)
class BundleSpec:
    """What our loaders take from a bundle: named plain fields, read as data and validated (nothing evaluated).

    Attributes:
        root: the bundle.
        network: a name in training.job.config.NETWORKS (metadata.json "network").
        class_names: by output index (inference.json "class_names").
        image_size: (H, W) (inference.json "image_size").
        window: (center, width) or None (inference.json "window").
        threshold: in [0, 1] (inference.json "threshold").
        positive_index: 0 <= i < classes (inference.json "positive_index").
    """

    root: Path
    network: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    window: tuple[float, float] | None
    threshold: float
    positive_index: int

    @property
    def weights(self) -> Path:
        return self.root / "models" / "model.pt"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            path, "(file)", "is missing: a bundle holds configs/inference.json and configs/metadata.json"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(path, "(file)", f"is not readable JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BundleError(path, "(file)", "must hold a JSON object")
    return document


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def read_bundle(bundle_dir: str | os.PathLike[str]) -> BundleSpec:
    """Read a bundle's plain fields as data (json, no MONAI ConfigParser, no `_target_`, no `$` expression) and check
    each by type and range.

    Raises:
        BundleError: (a ValueError) naming the file, the field and what is allowed.
    """
    root = Path(bundle_dir)
    config_file, meta_file = root / "configs" / "inference.json", root / "configs" / "metadata.json"
    config, meta = _read_json(config_file), _read_json(meta_file)

    network = meta.get("network")
    if not isinstance(network, str) or network not in NETWORKS:
        raise BundleError(meta_file, "network", f"must be one of {', '.join(NETWORKS)}; got {network!r}")

    names = config.get("class_names")
    if (
        not isinstance(names, list)
        or not 2 <= len(names) <= MAX_CLASSES
        or not all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME and n.isprintable() and n.strip() for n in names)
        or len(set(names)) != len(names)
    ):
        raise BundleError(
            config_file,
            "class_names",
            f"must be a list of 2 to {MAX_CLASSES} distinct printable names of 1 to {MAX_CLASS_NAME} characters; "
            f"got {str(names)[:200]}",
        )

    low, high = IMAGE_SIZE_RANGE
    size = config.get("image_size")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and low <= v <= high for v in size):
        raise BundleError(
            config_file, "image_size", f"must be [H, W], integers from {low} to {high}; got {str(size)[:200]}"
        )

    window = config.get("window")
    if window is not None and (
        not isinstance(window, list) or len(window) != 2 or not all(_is_number(v) for v in window) or not window[1] > 0
    ):
        raise BundleError(
            config_file,
            "window",
            f"must be null or [center, width], finite numbers, width > 0; got {str(window)[:200]}",
        )

    threshold = config.get("threshold")
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise BundleError(
            config_file, "threshold", f"must be a finite number between 0 and 1; got {str(threshold)[:200]}"
        )

    positive = config.get("positive_index")
    if not _is_int(positive) or not 0 <= positive < len(names):
        raise BundleError(
            config_file, "positive_index", f"must be an integer from 0 to {len(names) - 1}; got {str(positive)[:200]}"
        )

    _check_network_def(config_file, config.get("network_def"), network, len(names))
    return BundleSpec(
        root=root,
        network=network,
        class_names=tuple(names),
        image_size=(size[0], size[1]),
        window=(float(window[0]), float(window[1])) if window is not None else None,
        threshold=float(threshold),
        positive_index=positive,
    )


def _check_network_def(config_file: Path, network_def: Any, network: str, num_classes: int) -> None:
    """inference.json's network_def must be exactly what we would write for the network (MONAI's tools build it)."""
    target, kwargs = network_spec(network, num_classes=num_classes)
    if not isinstance(network_def, dict):
        raise BundleError(config_file, "network_def", f"must be an object {{'_target_': {target!r}, ...}}")
    if network_def.get("_target_") != target:
        raise BundleError(
            config_file,
            "network_def._target_",
            f"must be {target!r} for network {network!r}; got {str(network_def.get('_target_'))[:200]!r}",
        )
    for key, value in network_def.items():
        if key == "_target_":
            continue
        if key not in kwargs:
            raise BundleError(
                config_file, f"network_def.{key}", f"is not an argument of {network}: allowed {', '.join(kwargs)}"
            )
        expected = kwargs[key]
        if type(value) is not type(expected) or value != expected:
            raise BundleError(config_file, f"network_def.{key}", f"must be {expected!r}; got {str(value)[:200]!r}")
    missing = [k for k in kwargs if k not in network_def]
    if missing:
        raise BundleError(config_file, f"network_def.{missing[0]}", f"is missing: must be {kwargs[missing[0]]!r}")


def load_network(bundle: str | os.PathLike[str] | BundleSpec, *, device: str = "cpu") -> torch.nn.Module:
    """A fresh network from our own factory (training.job.networks) with the bundle's weights (models/model.pt, loaded
    with weights_only=True): no `_target_`, no config parsing, no TorchScript.

    Args:
        bundle: the bundle, or what read_bundle read from it.
        device: where to put it.

    Raises:
        BundleError: a field fails its check (read_bundle), or model.pt is not a plain state dict of this network.
    """
    spec = bundle if isinstance(bundle, BundleSpec) else read_bundle(bundle)
    network = build_network(spec.network, num_classes=len(spec.class_names))
    try:
        state = torch.load(spec.weights, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise BundleError(spec.weights, "(file)", "is missing: the weights, a plain state dict") from None
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        raise BundleError(spec.weights, "(file)", f"is not a plain state dict ({str(exc)[:300]})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(spec.weights, "(file)", "must hold a dict of parameter names to tensors")
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(spec.weights, "(file)", f"does not fit {spec.network} ({str(exc)[:300]})") from None
    return network.to(device).eval()


def _installed(names: Sequence[str]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return versions


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _readme(meta: Mapping[str, Any]) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in meta["eval_metrics"].items() if v is not None)
    return f"""# {meta["name"]}

{meta["description"]}

Classes: {meta["label_classes"]}. Metrics: {metrics or "none"}. Not for diagnostic use.

## Use

```python
from training.inference import Predictor          # this repository's training/ package (MONAI, pydicom)
predictor = Predictor.from_bundle("path/to/this/bundle")
predictor.predict(["image.dcm"])
```

Or with MONAI only:
`python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json
--bundle_root . --dataset_dir DICOM_DIR --output_file predictions.csv`.

`models/model.pt` is a plain state dict for the network in `configs/inference.json` (`network_def`): it loads in
any recent PyTorch with `torch.load(..., weights_only=True)`. `models/model.ts` (TorchScript) may need the PyTorch
version in `configs/metadata.json`. Where the model came from: `configs/metadata.json`, key `lineage`.
"""

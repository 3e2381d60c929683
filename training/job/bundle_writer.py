"""Write the trained model as a MONAI bundle (MONAI Bundle Specification): the layout training/job/bundle.py
describes, at the end of the job (training/job/train.py `run`, rank 0).

Nothing here touches the network: the metadata's "schema" URL is recorded as the specification asks, but never
fetched (tests validate against a stored copy of the schema). inference.json is written in MONAI config syntax for
MONAI's own tools; our loaders never evaluate it (training/job/bundle.py reads its plain fields as data).

The mode follows config.image_size: two values (H, W) write a 2-D bundle, byte for byte what this module wrote before
volumes existed (no "spatial_dims" key: a bundle without one is 2-D); three values (D, H, W) write a 3-D bundle, whose
inference.json says "spatial_dims": 3, whose network_def builds MONAI's 3-D network, whose preprocessing is a series
decoded by training.dataset.volume.read_volume (training.inference.LoadSeriesVolume), and whose TorchScript is traced
on a 1 x 1 x D x H x W input.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from training.job import model_card
from training.job.assessment import Assessment
from training.job.config import TrainConfig
from training.job.networks import network_spec

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
    judged: Assessment | None = None,
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
        judged: training/job/assessment.py's calibration, operating point and reports (None: temperature 1 and the
            config's threshold, as before calibration existed); the model card (docs/README.md) is written from it.

    Returns:
        model_dir.
    """
    configs, models, docs = model_dir / "configs", model_dir / "models", model_dir / "docs"
    for directory in (configs, models, docs):
        directory.mkdir(parents=True, exist_ok=True)
    dims = len(config.image_size)
    target, kwargs = network_spec(network_name, num_classes=len(classes), spatial_dims=dims)
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in network.state_dict().items()}
    torch.save(weights, models / "model.pt")
    temperature = judged.temperature if judged is not None else 1.0
    threshold = judged.operating_point.threshold if judged is not None else config.threshold
    inference = inference_config(
        target=target,
        kwargs=kwargs,
        classes=classes,
        image_size=config.image_size,
        window=config.window,
        threshold=threshold,
        positive_index=positive_index,
        temperature=temperature,
    )
    _write_json(configs / "inference.json", inference)
    meta = metadata(
        network_name=network_name,
        classes=classes,
        image_size=config.image_size,
        threshold=threshold,
        positive_index=positive_index,
        eval_metrics=eval_metrics,
        lineage=lineage,
    )
    if judged is not None:
        meta |= {"temperature": temperature, **judged.records()}
    _write_json(configs / "metadata.json", meta)
    usage = _readme(meta) if dims == 2 else _volume_readme(meta)
    card = model_card.render(meta, judged, usage) if judged is not None else usage
    (docs / "README.md").write_text(card, encoding="utf-8")
    if config.torchscript:
        export_torchscript(model_dir, image_size=config.image_size)
    return model_dir


def _volume_entries(config: dict[str, Any]) -> dict[str, Any]:
    """A 3-D inference.json: the mode, a series' preprocessing, and `run` over the series found in `dataset`."""
    items = list(config.items())
    after = [key for key, _ in items].index("image_size") + 1  # the mode beside the size it follows from
    config = dict([*items[:after], ("spatial_dims", 3), *items[after:]])
    config["preprocessing"] = {
        "_target_": "training.inference.LoadSeriesVolume",  # training.dataset.volume.read_volume, as in training
        "image_size": "@image_size",
        "window": "@window",
    }
    config["evaluator"] = {**config["evaluator"], "spatial_dims": "@spatial_dims"}
    config["run"] = ["$@evaluator.write_series_predictions(@dataset, @output_file)"]
    return config


def inference_config(
    *,
    target: str,
    kwargs: Mapping[str, Any],
    classes: Sequence[str],
    image_size: Sequence[int],
    window: Sequence[float] | None,
    threshold: float,
    positive_index: int,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """configs/inference.json: MONAI config syntax (`_target_`, `@ref`, `$expression`), runnable offline.

    `network_def` is what `monai.bundle.load` and `ckpt_export` instantiate; `network` adds the weights;
    `evaluator` is a training.inference.Predictor; `run` classifies `dataset_dir` into `output_file` (per file in 2-D,
    per series in 3-D: three image_size values).
    """
    config = {
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "class_names": list(classes),
        "image_size": [int(v) for v in image_size],
        "window": [float(v) for v in window] if window is not None else None,
        "threshold": float(threshold),
        "positive_index": int(positive_index),
        "temperature": float(temperature),  # calibration: probabilities are softmax(logits / temperature)
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
        "postprocessing": {"_target_": "training.inference.CalibratedSoftmax", "temperature": "@temperature"},
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
    return _volume_entries(config) if len(image_size) == 3 else config


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
    two = len(classes) == 2
    meta = {
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
            f"{image_size[0]}x{image_size[1]}, [0, 1]). Output: one logit per class; softmax(logits / temperature) "
            "gives calibrated probabilities."
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
        "network_data_format": _network_data_format(classes, image_size),
        "classes": list(classes),
        "network": network_name,
        "threshold": threshold if two else None,
        "positive_class": classes[positive_index] if two else None,
        "lineage": dict(lineage),
    }
    return _volume_metadata(meta, image_size) if len(image_size) == 3 else meta


def _volume_metadata(meta: dict[str, Any], image_size: Sequence[int]) -> dict[str, Any]:
    """metadata.json of a 3-D bundle: the task, the input and its preprocessing say series and volumes."""
    depth, height, width = (int(v) for v in image_size)
    decision = meta["description"].split(" probabilities.", 1)[1]
    meta["name"] = meta["name"].replace("DICOM image classifier", "DICOM series classifier")
    meta["task"] = meta["task"].replace("a 2-D DICOM image", "a DICOM series (a CT or MR volume)")
    meta["description"] = (
        f"MONAI {meta['network']} (3-D) trained from scratch on labeled DICOM series. Input: one series (the slices "
        "of a CT or MR series, or an enhanced multi-frame file) assembled by training.dataset.series.assemble and "
        "decoded by training.dataset.volume.read_volume (modality LUT, window, MONOCHROME1 inverted, oriented to "
        f"superior, posterior, left, resampled at one isotropic spacing to fit {depth}x{height}x{width} (D x H x W), "
        "zero padded, [0, 1]). Output: one logit per class; softmax(logits / temperature) gives calibrated "
        "probabilities." + decision
    )
    meta["image_classes"] = "single-channel grayscale volume (D, H, W), intensities in [0, 1]"
    meta["network_data_format"]["inputs"]["image"]["modality"] = "DICOM series (CT, MR: one volume a series)"
    return meta


def _network_data_format(classes: Sequence[str], image_size: Sequence[int]) -> dict[str, Any]:
    """metadata.json's "network_data_format": one grayscale image in, one probability per class out."""
    return {
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
                "channel_def": {str(i): name for i, name in enumerate(classes)},
            }
        },
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
                input_shape=[1, 1, *(int(v) for v in image_size)],  # 4-D for images, 5-D for volumes
                bundle_root=str(model_dir),
            )
    finally:
        monai_logger.setLevel(level)
    return path


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


def _volume_readme(meta: Mapping[str, Any]) -> str:
    """docs/README.md of a 3-D bundle: the 2-D text, with a series for an image."""
    text = _readme(meta).replace(
        'predictor.predict(["image.dcm"])',
        'predictions, bad = predictor.predict_volumes(["series_dir"])   # one answer per series found',
    )
    return text.replace(
        "--output_file predictions.csv`.",
        "--output_file predictions.csv` (one row per series), or\n"
        "`python -m training.predict path/to/this/bundle DICOM_DIR` (JSON, one answer per series).",
    )

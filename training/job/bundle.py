"""The trained model as a MONAI bundle (MONAI Bundle Specification), and how our loaders read it back: as data.

    MODEL_DIR/
      configs/metadata.json   versions, classes, input/output format, evaluation metrics, lineage
      configs/inference.json  the network, preprocessing and decision rule for MONAI's ConfigParser (offline)
      models/model.pt         the weights: a plain float32 state dict (torch.load(weights_only=True))
      models/model.ts         TorchScript with metadata.json and inference.json embedded (optional)
      docs/README.md          how to use it

training/job/bundle_writer.py writes it at the end of the job; this module is the trust boundary that
training/inference.py and training/predict.py load through. inference.json is MONAI config syntax (`_target_`,
`$expression`) for MONAI's own tools. Our loaders never evaluate it: `read_bundle` reads named plain fields as data and
checks each, `load_network` builds the network from training.job.networks and loads model.pt with weights_only=True.
models/model.ts (TorchScript is code) is never loaded.

The mode is data too: inference.json "spatial_dims" 3 with a 3-value image_size [D, H, W] is a 3-D bundle (a volume a
series); a bundle without "spatial_dims" is 2-D (every bundle written before volumes loads unchanged), and 2 must come
with [H, W]. Every loader and server follows `BundleSpec.spatial_dims`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch

from training.dataset.volume import MAX_TARGET_VOXELS, SIZE_RANGE
from training.job.calibration import TEMPERATURE_RANGE
from training.job.config import IMAGE_SIZE_RANGE, NETWORKS, check_image_size, check_network_input
from training.job.networks import build_network, network_spec

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
        image_size: (H, W), or (D, H, W) for a 3-D bundle (inference.json "image_size").
        window: (center, width) or None (inference.json "window").
        threshold: in [0, 1] (inference.json "threshold").
        positive_index: 0 <= i < classes (inference.json "positive_index").
        spatial_dims: 2 (one image a sample) or 3 (one series a sample) (inference.json "spatial_dims", 2 if absent).
        temperature: calibration: probabilities are softmax(logits / temperature) (inference.json "temperature", 1
            if absent: bundles written before calibration).
    """

    root: Path
    network: str
    class_names: tuple[str, ...]
    image_size: tuple[int, ...]
    window: tuple[float, float] | None
    threshold: float
    positive_index: int
    spatial_dims: int = 2
    temperature: float = 1.0

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
    names = _class_names(config_file, config.get("class_names"))
    dims = _spatial_dims(config_file, config.get("spatial_dims", 2))
    size = _image_size(config_file, config.get("image_size"), dims, network)
    window = _window(config_file, config.get("window"))

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

    temperature = config.get("temperature", 1.0)
    low, high = TEMPERATURE_RANGE
    if not _is_number(temperature) or not low <= temperature <= high:
        raise BundleError(config_file, "temperature", f"must be a number from {low} to {high} (the calibration); got "
                          f"{str(temperature)[:200]}")

    _check_network_def(config_file, config.get("network_def"), network, len(names), dims)
    return BundleSpec(
        root=root,
        network=network,
        class_names=names,
        image_size=size,
        window=window,
        threshold=float(threshold),
        positive_index=positive,
        spatial_dims=dims,
        temperature=float(temperature),
    )


def _class_names(config_file: Path, names: Any) -> tuple[str, ...]:
    """inference.json "class_names": 2 to MAX_CLASSES distinct, printable, non-blank names of bounded length."""
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
    return tuple(names)


def _spatial_dims(config_file: Path, dims: Any) -> int:
    """inference.json "spatial_dims": 2 or 3 (absent: 2, the bundles written before volumes)."""
    if not _is_int(dims) or dims not in (2, 3):
        raise BundleError(config_file, "spatial_dims", f"must be 2 (images) or 3 (volumes); got {str(dims)[:200]}")
    return dims


def _image_size(config_file: Path, size: Any, dims: int, network: str) -> tuple[int, ...]:
    """inference.json "image_size": [H, W] integers in IMAGE_SIZE_RANGE; in 3-D [D, H, W] within the training rule
    (config.check_image_size, check_network_input) and what read_volume can produce (volume.SIZE_RANGE, voxels)."""
    low, high = IMAGE_SIZE_RANGE
    if dims == 2:
        if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and low <= v <= high for v in size):
            raise BundleError(
                config_file, "image_size", f"must be [H, W], integers from {low} to {high}; got {str(size)[:200]}"
            )
        return (size[0], size[1])
    if not isinstance(size, list) or len(size) != 3 or not all(_is_int(v) for v in size):
        raise BundleError(config_file, "image_size", f"must be [D, H, W] with spatial_dims 3; got {str(size)[:200]}")
    try:
        check_network_input(network, check_image_size(size))
    except ValueError as exc:
        raise BundleError(config_file, "image_size", f"is refused: {exc}") from None
    volume_low, volume_high = SIZE_RANGE
    if not all(volume_low <= v <= volume_high for v in size) or math.prod(size) > MAX_TARGET_VOXELS:
        raise BundleError(config_file, "image_size", f"must have sides from {volume_low} to {volume_high} and at "
                          f"most {MAX_TARGET_VOXELS} voxels (training.dataset.volume); got {size}")
    return (size[0], size[1], size[2])


def _window(config_file: Path, window: Any) -> tuple[float, float] | None:
    """inference.json "window": null, or [center, width] with finite numbers and a positive width."""
    if window is not None and (
        not isinstance(window, list) or len(window) != 2 or not all(_is_number(v) for v in window) or not window[1] > 0
    ):
        raise BundleError(
            config_file,
            "window",
            f"must be null or [center, width], finite numbers, width > 0; got {str(window)[:200]}",
        )
    return (float(window[0]), float(window[1])) if window is not None else None


def _check_network_def(config_file: Path, network_def: Any, network: str, num_classes: int, dims: int) -> None:
    """inference.json's network_def must be exactly what we would write for the network (MONAI's tools build it)."""
    target, kwargs = network_spec(network, num_classes=num_classes, spatial_dims=dims)
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
    network = build_network(spec.network, num_classes=len(spec.class_names), spatial_dims=spec.spatial_dims)
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

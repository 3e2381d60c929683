"""Every hyperparameter of the training job, in one frozen dataclass, and the one way strings become it.

Each field is also a command-line flag of the same name (`--learning_rate 3e-4`; `--learning-rate` works too) and a
SageMaker hyperparameter of the same name. SageMaker hands hyperparameters over as strings, so every value is parsed
from a string here: booleans explicitly ("true"/"false", any case), tuples from "96,96", "96x96" or "[96, 96]".

The mode follows `image_size`: two values (H, W) train 2-D images, three (D, H, W, depth first) volumes
(`spatial_dims`). A size is checked against the network when the settings are read (`check_network_input`), from a
table of each network's smallest input, so a size the network cannot pool fails here and not inside a forward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# MONAI 2-D classification networks that build offline (no pretrained weights are downloaded).
NETWORKS = (
    "densenet121",
    "densenet169",
    "densenet201",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "none")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ON_BAD_FILE = ("fail", "skip")
# Each of (H, W) or (D, H, W): the one image-size rule, for TrainConfig, training/dataset/prepare.py DataOptions,
# training/dataset/dicom.py load_image and a bundle's inference.json (training/job/bundle.py).
IMAGE_SIZE_RANGE = (8, 4096)
# D*H*W of a volume at most (e.g. 64,256,256 or 160,160,160): a 3-D ResNet18 training step held about 2 KiB per voxel
# per sample (fp32, CPU, measured at 64^3), so a sample at this bound takes about 8 GiB: a batch of a few still fits
# one 80 GB GPU (BatchNorm needs a few samples a step) and a CPU host's memory; 4096^3 per axis alone would not.
MAX_VOXELS = 4_194_304
# The smallest size per axis each network can pool down to its classifier, in 2-D and in 3-D alike. Measured by
# forward passes on CPU (batch 1, one channel, eval mode) over sizes 1, 2, 3, ... until one passed, in both modes:
# below it the DenseNets' third transition pools an axis of 1 to 0, and MONAI's EfficientNet pads for its reference
# size so a kernel outgrows the input. tests/training/test_networks.py proves each entry (it passes, one less fails).
SMALLEST_SIZE = {
    "densenet121": 29,
    "densenet169": 29,
    "densenet201": 29,
    "resnet18": 1,
    "resnet34": 1,
    "resnet50": 1,
    "efficientnet-b0": 32,
    "efficientnet-b1": 16,
    "efficientnet-b2": 4,
}
AXES = {2: ("height", "width"), 3: ("depth", "height", "width")}


@dataclass(frozen=True)
class TrainConfig:
    """The hyperparameters of one training job; training/local_demo.py lists the synthetic demo's few overrides.

    Raises:
        ValueError: a value is out of range or not one of the allowed names; the message says which.
    """

    # --- network and input ---
    network: str = "densenet121"  # the public sample's network: 7M parameters, learns 2-D images from scratch
    image_size: tuple[int, ...] = (96, 96)  # (H, W): CPU-trainable (~80 images/s bf16 on 2 cores); use 224+ on GPUs
    # (D, H, W), depth first, for volumes (3-D networks)
    window: tuple[float, float] | None = None  # (center, width) for every file; None: each file's own window
    # --- optimization ---
    epochs: int = 20  # an upper bound: early stopping ends most runs sooner; the demo set converges in 3-5
    batch_size: int = 32  # BatchNorm needs a few dozen samples per step; fits CPU memory at 96x96
    optimizer: str = "adamw"  # adaptive steps train from scratch without tuning; weight decay kept out of them
    learning_rate: float = 1e-3  # AdamW's usual from-scratch rate; the sample's Adam 1e-5 left the loss flat
    weight_decay: float = 1e-2  # AdamW's own default (decoupled); with sgd use about 1e-4
    momentum: float = 0.9  # sgd only: the standard heavy-ball value
    schedule: str = "cosine"  # anneals to zero by the last epoch with no extra knobs; onecycle adds a warm-up
    class_weighting: bool = True  # inverse-frequency loss weights: a rare class is not ignored; no-op when balanced
    augment: float = 0.5  # strength of random flips/shifts in [0, 1]: small sets overfit without it; 0 turns it off
    precision: str = "auto"  # bf16 autocast where the chip has it (1.9x here), fp16 on older GPUs, else fp32
    precise_bn: int = 1024  # before validating, BatchNorm statistics recomputed on this many training images: the
    # running averages lag a network that changes fast, which shifts its decisions; 0 keeps the running averages
    channels_last: bool = True  # NHWC convolutions: faster with oneDNN on CPU and tensor cores on GPU
    threads: int = 0  # torch intra-op threads; 0 keeps PyTorch's default (one per physical core)
    seed: int = 0  # one seed for weights, shuffling, augmentation and the bootstrap: reruns repeat exactly
    # --- model selection and reporting ---
    patience: int = 5  # epochs without a better validation AUC before stopping; small sets are noisy; 0: never stop
    min_delta: float = 1e-3  # the AUC gain that counts as better: smaller gains are noise on a few hundred images
    threshold: float = 0.5  # two classes: positive when P(positive) >= threshold; 0.5 equals argmax
    target_sensitivity: float = 0.0  # two classes: instead of threshold, the highest threshold whose validation
    # sensitivity reaches this (e.g. 0.95 for a screening aid); 0: unset (training/job/operating_point.py)
    target_specificity: float = 0.0  # the same for specificity (the lowest such threshold); at most one target
    calibrate: bool = True  # temperature scaling fitted on validation: probabilities that mean what they say
    positive_class: str = ""  # two classes: the class sensitivity is about; "" means the last class name
    bootstrap_samples: int = 1000  # resamples for the 95% confidence intervals (percentile bootstrap)
    torchscript: bool = True  # also write models/model.ts (deployment without MONAI); model.pt is always written
    # --- data: these, image_size, window and seed give training/dataset/prepare.py DataOptions its defaults; ---
    # --- check_data_fields (below) is the rule of both ---
    val_fraction: float = 0.2  # share of train images held out (by patient) without a validation channel
    on_bad_file: str = "fail"  # "fail": stop on a bad file, listing all; "skip": train on the rest: nothing silent
    cache_memory_mb: int = 2048  # decoded uint8 images held in memory (~230,000 at 96x96); beyond it, on disk
    cache_dir: str = ""  # where a cache beyond cache_memory_mb spills (a memmap); "": the system's temp directory
    workers: int = 2  # decoding processes: the smallest training instances have 2 cores
    label_attribute: str = ""  # a Ground Truth output manifest's label attribute when it has several; "": its only one

    def __post_init__(self) -> None:
        _choice("network", self.network, NETWORKS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        if len(self.image_size) == 3:  # 2-D keeps its one size rule with DataOptions and load_image (see below)
            check_network_input(self.network, self.image_size)
        check_data_fields(self, volumes=True)  # the job reads either: training/job/train.py picks the data layer
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("patience", self.patience, 0)
        _at_least("threads", self.threads, 0)
        _at_least("bootstrap_samples", self.bootstrap_samples, 0)
        _at_least("precise_bn", self.precise_bn, 0)
        for name in ("learning_rate", "weight_decay", "momentum", "min_delta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "learning_rate" and value == 0):
                raise ValueError(f"{name} must be a finite number >= 0 (learning_rate > 0); got {value}")
        for name in ("augment", "threshold", "target_sensitivity", "target_specificity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1; got {getattr(self, name)}")
        if self.target_sensitivity and self.target_specificity:
            raise ValueError("set target_sensitivity or target_specificity, not both: each chooses the threshold")

    def hyperparameters(self) -> dict[str, str]:
        """The configuration as SageMaker hyperparameters: every field as the string this module parses back.

        Returns:
            Field name to string; `TrainConfig.from_strings(config.hyperparameters()) == config`.
        """
        return {f.name: format_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> TrainConfig:
        """Build a configuration from string values (hyperparameters), the rest staying at their defaults.

        Args:
            values: field name (or the name with '-' for '_') to its string form.

        Raises:
            ValueError: an unknown name, or a value that does not parse; the message names the field.
        """
        parsers = field_parsers()
        kwargs: dict[str, Any] = {}
        for key, text in values.items():
            name = key.replace("-", "_")
            if name not in parsers:
                raise ValueError(f"unknown hyperparameter {key!r}; known: {', '.join(sorted(parsers))}")
            try:
                kwargs[name] = parsers[name](text)
            except ValueError as exc:
                raise ValueError(f"hyperparameter {name}={text!r}: {exc}") from None
        return cls(**kwargs)


def check_data_fields(settings: Any, *, volumes: bool = False) -> None:
    """The rules of the data fields, written once for the two classes that carry them: TrainConfig and
    training/dataset/prepare.py DataOptions (the same names; DataOptions also takes its defaults from TrainConfig).

    Args:
        settings: a TrainConfig or a DataOptions.
        volumes: the settings are for the series data layer (training/dataset/prepare_volumes.py VolumeOptions),
            which reads volumes: three image_size values are not refused.

    Raises:
        ValueError: a value out of range or not one of the allowed names; the message names the field.
    """
    _choice("on_bad_file", settings.on_bad_file, ON_BAD_FILE)
    check_image_size(settings.image_size)
    if not volumes:
        check_two_dims(settings)
    check_window(settings.window)
    _at_least("workers", settings.workers, 1)
    _at_least("cache_memory_mb", settings.cache_memory_mb, 0)
    if not 0.0 <= settings.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), e.g. 0.2 (0: no validation); got {settings.val_fraction}")


def check_image_size(size: Sequence[Any]) -> tuple[int, ...]:
    """The image-size rule: (H, W) for 2-D images or (D, H, W) for volumes, each within IMAGE_SIZE_RANGE, and a
    volume within MAX_VOXELS.

    Args:
        size: the two or three sizes.

    Returns:
        The sizes as integers, in the order given.

    Raises:
        ValueError: not two or three sizes, one out of range, or a volume over MAX_VOXELS.
    """
    low, high = IMAGE_SIZE_RANGE
    if len(size) not in AXES or not all(low <= int(v) <= high for v in size):
        raise ValueError(
            f"image_size must be two sizes (H, W) or three (D, H, W), each between {low} and {high}, e.g. 96,96 or "
            f"32,96,96; got {tuple(size)}"
        )
    sizes = tuple(int(v) for v in size)
    if math.prod(sizes) > MAX_VOXELS:
        raise ValueError(
            f"image_size {format_value(sizes)} is {math.prod(sizes):,} voxels, over {MAX_VOXELS:,} (a 3-D network "
            f"holds about 2 KiB a voxel to train one sample): give a smaller size, e.g. 64,256,256 or 128,128,128"
        )
    return sizes


def spatial_dims(settings: Any) -> Literal[2, 3]:
    """The mode of a configuration: 2 for images (H, W), 3 for volumes (D, H, W).

    Args:
        settings: anything with an `image_size` (TrainConfig, training/dataset/prepare.py DataOptions).

    Returns:
        2 or 3: MONAI's `spatial_dims` of the networks and transforms for it.
    """
    return 3 if len(check_image_size(settings.image_size)) == 3 else 2


def check_network_input(network: str, image_size: Sequence[Any]) -> None:
    """The size rule of a network: each axis at least the network's SMALLEST_SIZE, the smallest it can pool.

    TrainConfig applies it to volumes. A 2-D size keeps the rule it shares with DataOptions and load_image (any size
    in IMAGE_SIZE_RANGE: tests/training/test_data_prepare.py holds the three together), so a 2-D size below the table
    still fails in the first forward pass, as before; the job may call this on 2-D sizes to fail earlier.

    Args:
        network: one of NETWORKS.
        image_size: (H, W) or (D, H, W).

    Raises:
        ValueError: an invalid size (check_image_size), or an axis below the smallest; the message names the axis and
            the smallest size that works.
    """
    sizes = check_image_size(image_size)
    smallest = SMALLEST_SIZE[network]
    for axis, value in zip(AXES[len(sizes)], sizes, strict=True):
        if value < smallest:
            raise ValueError(
                f"{network} in {len(sizes)}-D needs a {axis} of at least {smallest}; got {value} (image_size "
                f"{format_value(sizes)}): give a larger image_size, or a resnet (any size from {IMAGE_SIZE_RANGE[0]})"
            )


def check_two_dims(settings: Any) -> None:
    """Refuse a volume in the settings of the 2-D data layer (training/dataset/prepare.py DataOptions), which would
    read two of its three values silently; volumes have their own (training/dataset/prepare_volumes.py VolumeOptions).

    Raises:
        ValueError: image_size has three values.
    """
    if spatial_dims(settings) == 3:
        raise ValueError(
            "image_size with three values (a volume) is read by the series data layer (training/dataset/"
            "prepare_volumes.py VolumeOptions); these settings read 2-D images: give two values, e.g. 96,96; got "
            f"{format_value(tuple(settings.image_size))}"
        )


def check_window(window: Sequence[float] | None) -> None:
    """The window rule: None (each file's own window), or (center, width), finite numbers with width > 0.

    Raises:
        ValueError: anything else.
    """
    if window is not None and (
        len(window) != 2 or not all(math.isfinite(float(v)) for v in window) or not float(window[1]) > 0
    ):
        raise ValueError(
            f"window must be center,width: finite numbers with width > 0, e.g. 40,400 for CT; got {window}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--name` flag (and its `--na-me` spelling) per field, each taking a string and defaulting to None.

    None marks "not given on the command line", so that SageMaker's SM_HPS and then the dataclass default apply.

    Args:
        parser: the parser to extend.
    """
    group = parser.add_argument_group("hyperparameters (also SageMaker hyperparameters of the same name)")
    for field in dataclasses.fields(TrainConfig):
        flags = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        default = format_value(field.default)
        group.add_argument(*flags, dest=field.name, default=None, metavar="VALUE", help=f"default: {default!r}")


def from_arguments(namespace: argparse.Namespace, base: Mapping[str, str] | None = None) -> TrainConfig:
    """Build the configuration: a flag given on the command line, else the base value (SM_HPS), else the default.

    Args:
        namespace: parsed by a parser that `add_arguments` extended.
        base: hyperparameters as strings from the environment, e.g. `JobContext.hyperparameters`.

    Raises:
        ValueError: an unknown base name or a value that does not parse.
    """
    values = {key.replace("-", "_"): text for key, text in (base or {}).items()}
    for field in dataclasses.fields(TrainConfig):
        given = getattr(namespace, field.name, None)
        if given is not None:
            values[field.name] = given
    return TrainConfig.from_strings(values)


def parse_bool(text: str) -> bool:
    """Parse a boolean hyperparameter: true/false, yes/no, on/off, 1/0, in any case ("True" from the toolkit).

    Raises:
        ValueError: anything else.
    """
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false; got {text!r}")


def parse_pair(text: str, kind: Callable[[str], Any]) -> tuple[Any, Any]:
    """Parse two numbers from "96,96", "96x96", "[96, 96]" or a single "96" (both the same).

    Raises:
        ValueError: not one or two numbers.
    """
    parts = _numbers(text)
    if len(parts) != 2:
        raise ValueError(f"expected two numbers like 96,96; got {text!r}")
    return kind(parts[0]), kind(parts[1])


def parse_size(text: str) -> tuple[int, ...]:
    """Parse an image size: two numbers (H, W) as parse_pair reads them, or three (D, H, W) like "32,96,96".

    Raises:
        ValueError: not one, two or three integers.
    """
    parts = _numbers(text)
    if len(parts) not in (2, 3):
        raise ValueError(f"expected two numbers (H, W) like 96,96 or three (D, H, W) like 32,96,96; got {text!r}")
    return tuple(int(p) for p in parts)


def _numbers(text: str) -> list[str]:
    """The numbers of "96,96", "96x96", "[96, 96]", "32x96x96"; a single "96" counts twice (a square)."""
    parts = [p for p in text.strip().strip("[]()").replace("x", ",").replace(" ", ",").split(",") if p]
    return parts * 2 if len(parts) == 1 else parts


def parse_optional_pair(text: str) -> tuple[float, float] | None:
    """Parse a window "40,400"; "", "none" or "null" mean None."""
    if text.strip().lower() in ("", "none", "null"):
        return None
    return parse_pair(text, float)


def format_value(value: Any) -> str:
    """The string form of a field value that its parser reads back ("true", "96,96", "" for None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)


def json_to_string(value: Any) -> str:
    """A hyperparameter decoded from JSON (SM_HPS holds decoded values) back to the string SageMaker sent."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def field_parsers() -> dict[str, Callable[[str], Any]]:
    """Field name to the function that parses its string form, chosen by the field's type."""
    hints = typing.get_type_hints(TrainConfig)
    by_type: dict[Any, Callable[[str], Any]] = {
        int: lambda s: int(s.strip()),
        float: lambda s: float(s.strip()),
        str: lambda s: s.strip(),
        bool: parse_bool,
        tuple[int, ...]: parse_size,
        tuple[float, float] | None: parse_optional_pair,
    }
    return {f.name: by_type[hints[f.name]] for f in dataclasses.fields(TrainConfig)}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value}")

"""A 3-D bundle for the tests of volumes' inference: write_bundle on a freshly built (untrained) 3-D network.

Untrained is enough for what these tests hold (the mode, the loading, the per-series answers and the limits); the
trained 3-D bundle's accuracy is the job tests'. EfficientNet-B0 at 32^3 (its smallest size, config.SMALLEST_SIZE) is
the smallest 3-D network of config.NETWORKS in bytes (4.7 M parameters, 19 MB of model.pt).
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.job.bundle_writer import write_bundle
from training.job.config import TrainConfig
from training.job.networks import build_network

NETWORK = "efficientnet-b0"
SIZE = (32, 32, 32)
CLASSES = ("abnormal", "normal")


def volume_config(*, size: tuple[int, ...] = SIZE, torchscript: bool = False, window: tuple[float, float] | None
                  = (40.0, 400.0)) -> TrainConfig:
    """A TrainConfig for a volume job (what train.py passes write_bundle)."""
    return TrainConfig(network=NETWORK, image_size=size, torchscript=torchscript, window=window)


def write_volume_bundle(model_dir: Path, *, torchscript: bool = False, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A 3-D bundle of an untrained network (seeded), and that network (eval mode)."""
    torch.manual_seed(seed)
    network = build_network(NETWORK, num_classes=len(CLASSES), spatial_dims=3).eval()
    write_bundle(model_dir, network=network, network_name=NETWORK, classes=CLASSES,
                 config=volume_config(torchscript=torchscript), positive_index=0,
                 eval_metrics={"accuracy": None}, lineage={"job": "test"})
    return model_dir, network

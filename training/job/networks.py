"""The network factory: MONAI classifiers by name, built the same way for training, the bundle and inference.

`network_spec(name, num_classes, spatial_dims=2)` gives the MONAI class and keyword arguments (what the bundle's
inference.json instantiates); `build_network` instantiates it. The same names serve 2-D images (spatial_dims=2) and
volumes (spatial_dims=3: training.job.config.spatial_dims says which); the smallest input each can pool is
training.job.config.SMALLEST_SIZE (the settings are checked against it). No pretrained weights: nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.utils import instantiate

from training.job.config import NETWORKS


def network_spec(
    name: str, *, num_classes: int, in_channels: int = 1, spatial_dims: int = 2
) -> tuple[str, dict[str, Any]]:
    """The MONAI class path and its keyword arguments for a network name.

    Args:
        name: one of training.job.config.NETWORKS.
        num_classes: output logits.
        in_channels: image channels (1: grayscale DICOM).
        spatial_dims: 2 for images (H, W), 3 for volumes (D, H, W).

    Returns:
        (import path of the class, keyword arguments), JSON-ready for a bundle config's `_target_`.

    Raises:
        ValueError: an unknown name, fewer than 2 classes, or spatial_dims other than 2 or 3.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes; got {num_classes}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes); got {spatial_dims!r}")
    if name.startswith("densenet") and name in NETWORKS:
        target = f"monai.networks.nets.DenseNet{name[len('densenet') :]}"
        return target, {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": num_classes}
    if name.startswith("resnet") and name in NETWORKS:
        # MONAI's ResNet keeps the stride-2 7x7 stem and max-pool of the original; no pretraining
        return f"monai.networks.nets.{name}", {
            "spatial_dims": spatial_dims,
            "n_input_channels": in_channels,
            "num_classes": num_classes,
        }
    if name.startswith("efficientnet-") and name in NETWORKS:
        return "monai.networks.nets.EfficientNetBN", {
            "model_name": name,
            "pretrained": False,
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "num_classes": num_classes,
        }
    raise ValueError(f"network must be one of {', '.join(NETWORKS)}; got {name!r}")


def build_network(name: str, *, num_classes: int, in_channels: int = 1, spatial_dims: int = 2) -> torch.nn.Module:
    """Instantiate a MONAI network by name (see `network_spec`).

    Args:
        name: one of training.job.config.NETWORKS.
        num_classes: output logits.
        in_channels: image channels.
        spatial_dims: 2 for images (H, W), 3 for volumes (D, H, W).

    Returns:
        The network, on the CPU, in training mode.
    """
    target, kwargs = network_spec(name, num_classes=num_classes, in_channels=in_channels, spatial_dims=spatial_dims)
    network: torch.nn.Module = instantiate(target, "default", **kwargs)  # as the bundle parser does `_target_`
    return network

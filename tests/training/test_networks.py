"""training/job/networks.py: MONAI classifiers by name in 2-D and 3-D, and the table of each one's smallest input
(training/job/config.py SMALLEST_SIZE) proven by forward passes: the smallest size passes, one less fails."""

from __future__ import annotations

import json

import pytest
import torch

from training.job.config import NETWORKS, SMALLEST_SIZE
from training.job.networks import build_network, network_spec

# The 2-D specs as they were before 3-D came: a bundle's inference.json instantiates them, so they stay byte-equal.
SPECS_2D = {
    "densenet121": ("monai.networks.nets.DenseNet121", {"spatial_dims": 2, "in_channels": 1, "out_channels": 3}),
    "resnet50": ("monai.networks.nets.resnet50", {"spatial_dims": 2, "n_input_channels": 1, "num_classes": 3}),
    "efficientnet-b0": (
        "monai.networks.nets.EfficientNetBN",
        {"model_name": "efficientnet-b0", "pretrained": False, "spatial_dims": 2, "in_channels": 1, "num_classes": 3},
    ),
}


@pytest.mark.parametrize("name", sorted(SPECS_2D))
def test_2d_specs_are_unchanged_byte_for_byte(name: str) -> None:
    assert json.dumps(network_spec(name, num_classes=3)) == json.dumps(SPECS_2D[name])
    assert network_spec(name, num_classes=3, spatial_dims=2) == network_spec(name, num_classes=3)


@pytest.mark.parametrize("name", NETWORKS)
def test_3d_specs_differ_from_2d_only_in_spatial_dims(name: str) -> None:
    target_2d, kwargs_2d = network_spec(name, num_classes=2)
    target_3d, kwargs_3d = network_spec(name, num_classes=2, spatial_dims=3)
    assert target_3d == target_2d
    assert kwargs_3d == {**kwargs_2d, "spatial_dims": 3}


@pytest.mark.parametrize("dims", [1, 4])
def test_other_spatial_dims_are_refused(dims: int) -> None:
    with pytest.raises(ValueError, match=f"spatial_dims must be 2 .images. or 3 .volumes.; got {dims}"):
        network_spec("resnet18", num_classes=2, spatial_dims=dims)


def test_the_table_names_every_network() -> None:
    assert set(SMALLEST_SIZE) == set(NETWORKS)


@pytest.fixture
def without_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's own CPU convolutions: oneDNN spends about 1 s setting up each new shape of a deep network (the table
    cost 23 CPU-s with it, 5 without); which sizes a network can pool is the same shape rule either way (the search
    that wrote the table ran with oneDNN on)."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


@pytest.mark.usefixtures("without_onednn")
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NETWORKS)
def test_smallest_size_passes_and_one_less_fails_on_each_axis(name: str, dims: int) -> None:
    smallest = SMALLEST_SIZE[name]
    network = build_network(name, num_classes=2, spatial_dims=dims).eval()
    with torch.no_grad():
        assert network(torch.zeros(1, 1, *(smallest,) * dims)).shape == (1, 2)
        if smallest == 1:  # any size pools: nothing smaller to try
            return
        for axis in range(dims):
            shape = [smallest] * dims
            shape[axis] -= 1
            with pytest.raises(RuntimeError):
                network(torch.zeros(1, 1, *shape))

"""Checkpoints are data, never code: a crafted epoch-NNNN.pt is refused unrun, and the random states saved as
plain values come back exactly."""

from __future__ import annotations

import logging
import pathlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from training.job import checkpoint
from training.job.checkpoint import CheckpointError
from training.job.config import TrainConfig

CLASSES = ["abnormal", "normal"]
CONFIG = TrainConfig(network="resnet18", image_size=(32, 32), epochs=4)


class _Hostile:
    """Unpickling it touches a marker file: what a crafted checkpoint's code could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _hostile(directory: Path, marker: Path) -> Path:
    path = directory / "epoch-0009.pt"
    document = {"format": checkpoint.FORMAT, "epoch": 9, "job": None, "classes": CLASSES,
                "hyperparameters": CONFIG.hyperparameters(), "state": {"epoch": 9, "payload": _Hostile(marker)}}
    torch.save(document, path)
    return path


def _good(directory: Path, epoch: int, **extra: object) -> Path:
    model = torch.nn.Linear(4, 2)
    state = {"model": model.state_dict(), "epoch": epoch, "history": [], **extra}
    return checkpoint.save(directory, state=state, config=CONFIG, classes=CLASSES, job=None)


def test_a_hostile_checkpoint_is_skipped_unrun_for_the_older_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, marker = tmp_path / "checkpoints", tmp_path / "MARKER"
    _good(directory, 1)
    _hostile(directory, marker)
    with caplog.at_level(logging.WARNING):
        restored = checkpoint.restore(directory, config=CONFIG, classes=CLASSES)
    assert not marker.exists()  # its code never ran
    assert restored is not None and (restored.epoch, restored.path.name) == (1, "epoch-0001.pt")
    assert "epoch-0009.pt is unreadable" in caplog.text


def test_only_a_hostile_checkpoint_is_an_error_that_names_it(tmp_path: Path) -> None:
    directory, marker = tmp_path / "checkpoints", tmp_path / "MARKER"
    directory.mkdir()
    _hostile(directory, marker)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*epoch-0009\.pt: unreadable \(not a plain"):
        checkpoint.restore(directory, config=CONFIG, classes=CLASSES)
    with pytest.raises(CheckpointError, match=r"epoch-0009\.pt"):  # named as a file, too (resume_from)
        checkpoint.restore(directory / "epoch-0009.pt", config=CONFIG, classes=CLASSES)
    assert not marker.exists()


def test_the_random_states_survive_a_weights_only_load_exactly(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    saved = checkpoint.rng_state()
    expected = (torch.rand(5).tolist(), np.random.standard_normal(5).tolist(), np.random.randint(0, 2**31, 5).tolist(),
                [random.random() for _ in range(5)], random.gauss(0, 1))
    path = _good(tmp_path, 1, rng=saved)
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # plain data: no allow-list needed
    checkpoint.set_rng_state(loaded["state"]["rng"])
    again = (torch.rand(5).tolist(), np.random.standard_normal(5).tolist(), np.random.randint(0, 2**31, 5).tolist(),
             [random.random() for _ in range(5)], random.gauss(0, 1))
    assert again == expected

"""training/job/checkpoint.py on small real checkpoints: which one a run goes on from, and what it refuses."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.dataset.split import PreparedData, Split
from training.job import checkpoint, environment, train
from training.job.checkpoint import CheckpointError
from training.job.config import TrainConfig

CLASSES = ["abnormal", "normal"]
CONFIG = TrainConfig(network="resnet18", image_size=(32, 32), epochs=4)


def _state(epoch: int) -> dict:
    """A checkpoint's state as TrainState.state_dict() shapes it (a small model stands in for the network)."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": []}


def _save(directory: Path, epoch: int, *, config: TrainConfig = CONFIG, job: str | None = None) -> Path:
    return checkpoint.save(directory, state=_state(epoch), config=config, classes=CLASSES, job=job)


def test_the_newest_complete_checkpoint_is_restored_and_two_are_kept(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        _save(tmp_path, epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    restored = checkpoint.restore(tmp_path, config=CONFIG, classes=CLASSES)
    assert restored is not None and (restored.epoch, restored.path.name) == (3, "epoch-0003.pt")
    assert restored.state["epoch"] == 3 and set(restored.state["model"]) == {"weight", "bias"}


def test_an_empty_directory_means_a_fresh_start(tmp_path: Path) -> None:
    assert checkpoint.restore(tmp_path, config=CONFIG, classes=CLASSES) is None


def test_a_partial_write_is_never_taken_and_a_truncated_file_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    (tmp_path / ".epoch-0003.pt.partial").write_bytes(newest.read_bytes()[:1000])  # a write cut short
    restored = checkpoint.restore(tmp_path, config=CONFIG, classes=CLASSES)
    assert restored is not None and restored.epoch == 2
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short under the final name
    with caplog.at_level(logging.WARNING):
        restored = checkpoint.restore(tmp_path, config=CONFIG, classes=CLASSES)
    assert restored is not None and restored.epoch == 1
    assert "epoch-0002.pt is unreadable" in caplog.text


def test_all_unreadable_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "epoch-0001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*epoch-0001.pt: unreadable.*Delete the"):
        checkpoint.restore(tmp_path, config=CONFIG, classes=CLASSES)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"network": "densenet121"}, "network 'resnet18' (now 'densenet121')"),
        ({"image_size": (64, 64)}, "image_size '32,32' (now '64,64')"),
        ({"optimizer": "sgd"}, "optimizer 'adamw' (now 'sgd')"),
    ],
)
def test_an_incompatible_configuration_is_an_error_never_a_fresh_start(
    tmp_path: Path, change: dict, expected: str
) -> None:
    _save(tmp_path, 2)
    with pytest.raises(CheckpointError, match="cannot continue this run") as raised:
        checkpoint.restore(tmp_path, config=replace(CONFIG, **change), classes=CLASSES)
    assert expected in str(raised.value) and str(tmp_path / "epoch-0002.pt") in str(raised.value)


def test_other_classes_are_incompatible(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match=r"classes abnormal, normal \(now benign, malignant\)"):
        checkpoint.restore(tmp_path, config=CONFIG, classes=["benign", "malignant"])


def test_harmless_changes_are_logged_and_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save(tmp_path, 2)
    with caplog.at_level(logging.INFO):
        restored = checkpoint.restore(tmp_path, config=replace(CONFIG, epochs=10, patience=2), classes=CLASSES)
    assert restored is not None and restored.epoch == 2
    assert "epochs=10 (was 4)" in caplog.text and "patience=2 (was 5)" in caplog.text


def test_another_jobs_checkpoints_are_not_taken_for_a_restart(tmp_path: Path) -> None:
    _save(tmp_path, 1, job="job-a")
    assert checkpoint.restore(tmp_path, config=CONFIG, classes=CLASSES, job="job-a") is not None  # its own restart
    with pytest.raises(CheckpointError, match="holds checkpoints of job job-a, not of this job \\(job-b\\)"):
        checkpoint.restore(tmp_path, config=CONFIG, classes=CLASSES, job="job-b")


def test_sigterm_during_a_write_waits_for_the_rename(tmp_path: Path) -> None:
    received: list[bool] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append((tmp_path / "epoch-0001.pt").exists()))
    try:
        with checkpoint.deferred_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            assert received == []  # held
            _save(tmp_path, 1)  # nests a second deferral, as save() does
        assert received == [True]  # delivered once, after the checkpoint was complete
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tiny_data() -> PreparedData:
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> Split:
        labels = torch.arange(count) % 2
        images = (torch.rand(count, 1, 32, 32, generator=generator) * 100).to(torch.uint8)
        images[labels == 1, :, 8:20, 8:20] = 250
        return Split(images, labels, [f"f{i}.dcm" for i in range(count)], [f"p{i}" for i in range(count)])

    return PreparedData(classes=CLASSES, train=split(48), validation=split(16), test=None, summary={})


def test_fit_starts_from_a_named_checkpoint_and_refuses_a_missing_one(tmp_path: Path) -> None:
    config = TrainConfig(network="resnet18", image_size=(32, 32), epochs=2, batch_size=16, augment=0.0,
                         precision="fp32", precise_bn=0, patience=0)
    cpu = torch.device("cpu")
    state, _ = train.fit(config, _tiny_data(), device=cpu, checkpoint_dir=tmp_path / "first")
    assert [p.name for p in sorted((tmp_path / "first").iterdir())] == ["epoch-0001.pt", "epoch-0002.pt"]
    longer = replace(config, epochs=3)  # a new job: more epochs from the first job's end
    resumed, _ = train.fit(longer, _tiny_data(), device=cpu, resume_from=tmp_path / "first" / "epoch-0002.pt")
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == state.history
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        train.fit(longer, _tiny_data(), device=cpu, resume_from=tmp_path)  # holds a directory, no epoch-NNNN.pt


def test_the_contract_finds_sagemakers_checkpoint_directory_and_the_resume_channel(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "earlier").mkdir()
    parser = train.build_parser()
    env = {"SM_TRAINING_ENV": "{}", "SAGEMAKER_BASE_DIR": str(tmp_path), "SM_CHANNEL_TRAIN": str(tmp_path / "train"),
           "SM_CHANNEL_RESUME": str(tmp_path / "earlier")}
    context = environment.read_context(parser.parse_args([]), env)
    assert context.checkpoint_dir == tmp_path / "checkpoints" and context.resume_from == tmp_path / "earlier"
    local = environment.read_context(parser.parse_args([f"--train={tmp_path / 'train'}"]), {})
    assert local.checkpoint_dir is None and local.resume_from is None  # locally: only when asked

"""Spot interruptions, for real: the job runs as a process, is stopped with SIGTERM (what SageMaker sends) or killed
in the middle of writing a checkpoint, and is started again with the same command, as SageMaker restarts a spot job.
The faults come at an exact moment (hooks/faults/sitecustomize.py, loaded by the job's process), not by a race
against the clock: SIGTERM right after epoch 2's checkpoint, SIGTERM right after epoch 2's metrics line (before its
checkpoint is written), SIGKILL half-way through writing epoch 3's.

One uninterrupted run with the same seed is the reference. With one thread and fp32 the job's arithmetic is
deterministic, so a resumed run must reproduce the reference exactly: the same losses, accuracies and AUCs in every
epoch, the same best epoch and the same test report. (With several threads, or bf16, reductions may run in another
order: compare within about 1e-4 there.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.job.checkpoint import list_checkpoints
from training.job.metrics import parse_line
from training.local_demo import make_demo_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "hooks" / "faults"
EPOCHS = 4
SETTINGS = [
    "--network", "resnet18", "--image_size", "32,32", "--epochs", str(EPOCHS), "--batch_size", "16",
    "--threads", "1", "--precision", "fp32", "--workers", "1", "--patience", "0", "--bootstrap_samples", "100",
    "--torchscript", "false",
]  # fmt: skip


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """48 training and about 16 test images of other patients (the synthetic set): what is checked is that a restart
    reproduces the uninterrupted run exactly, which needs no more images than a few batches an epoch."""
    return make_demo_data(tmp_path_factory.mktemp("resume-data"), train_images=48, test_images=16)


def _command(workdir: Path, channels: dict[str, Path]) -> list[str]:
    return [
        sys.executable, "-m", "training", f"--train={channels['train']}", f"--test={channels['test']}",
        f"--model-dir={workdir / 'model'}", f"--output-dir={workdir / 'output'}",
        f"--checkpoint-dir={workdir / 'checkpoints'}", *SETTINGS,
    ]  # fmt: skip


def _start(workdir: Path, channels: dict[str, Path], log: str, fault: dict[str, str] | None = None) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if fault:
        environment.update(fault, PYTHONPATH=os.pathsep.join([str(FAULTS), str(ROOT)]))
    return subprocess.Popen(
        _command(workdir, channels), cwd=ROOT, env=environment, stdout=open(workdir / log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def _finish(workdir: Path, channels: dict[str, Path], log: str = "run.log") -> str:
    process = _start(workdir, channels, log)
    assert process.wait(timeout=600) == 0, (workdir / log).read_text()[-4000:]
    return (workdir / log).read_text()


def _epochs(text: str) -> list[int]:
    return [int(parse_line(line)["epoch"]) for line in text.splitlines() if line.startswith("epoch=")]


def _metrics(workdir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((workdir / "output" / "metrics.json").read_text())
    for row in loaded["history"]:
        row.pop("images_per_second")  # wall-clock speed: the one figure that may differ
    loaded.pop("seconds")
    return loaded


@pytest.fixture(scope="module")
def reference(channels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    text = _finish(workdir, channels)
    assert _epochs(text) == list(range(1, EPOCHS + 1))
    return _metrics(workdir)


def test_sigterm_after_epoch_2_then_a_restart_resumes_at_epoch_3_and_ends_as_an_uninterrupted_run(
    channels: dict[str, Path], reference: dict[str, Any], tmp_path: Path
) -> None:
    process = _start(tmp_path, channels, "first.log", fault={"SIGTERM_AFTER_CHECKPOINT_EPOCH": "2"})
    assert process.wait(timeout=600) == 128 + signal.SIGTERM
    first = (tmp_path / "first.log").read_text()
    assert "stopped: received signal SIGTERM" in first
    assert _epochs(first) == [1, 2]
    assert [epoch for epoch, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 1]
    assert not (tmp_path / "output" / "metrics.json").exists() and not (tmp_path / "model").exists()

    again = _finish(tmp_path, channels, "restart.log")
    assert "continuing at epoch 3" in again
    assert _epochs(again) == [3, 4]  # an interruption costs at most the epoch it hit
    assert _metrics(tmp_path) == reference  # exactly: every epoch's metrics, the best epoch and the test report
    assert (tmp_path / "model" / "models" / "model.pt").is_file()


def test_sigterm_right_after_an_epochs_metrics_line_still_saves_that_epoch_and_a_restart_goes_on_with_the_next(
    channels: dict[str, Path], reference: dict[str, Any], tmp_path: Path
) -> None:
    process = _start(tmp_path, channels, "first.log", fault={"SIGTERM_AFTER_METRICS_EPOCH": "2"})
    assert process.wait(timeout=600) == 128 + signal.SIGTERM
    first = (tmp_path / "first.log").read_text()
    assert "stopped: received signal SIGTERM" in first
    assert _epochs(first) == [1, 2]
    checkpoints = tmp_path / "checkpoints"
    assert [epoch for epoch, _ in list_checkpoints(checkpoints)] == [2, 1]  # the finished epoch was saved
    stale = checkpoints / ".epoch-0007.pt.partial"  # a name this run never writes: only the cleanup removes it
    stale.write_bytes(b"half a file an earlier crash left")

    again = _finish(tmp_path, channels, "restart.log")
    assert f"going on from {checkpoints / 'epoch-0002.pt'}" in again and "continuing at epoch 3" in again
    assert _epochs(again) == [3, 4]
    assert _metrics(tmp_path) == reference
    assert not stale.exists() and not list(checkpoints.glob(".*.partial"))


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_to_resume_from(
    channels: dict[str, Path], reference: dict[str, Any], tmp_path: Path
) -> None:
    process = _start(tmp_path, channels, "first.log", fault={"CRASH_IN_CHECKPOINT_EPOCH": "3"})
    assert process.wait(timeout=600) == -signal.SIGKILL
    checkpoints = tmp_path / "checkpoints"
    partial = checkpoints / ".epoch-0003.pt.partial"
    assert partial.stat().st_size > 0  # half a file under the temporary name ...
    assert [epoch for epoch, _ in list_checkpoints(checkpoints)] == [2, 1]  # ... never under a checkpoint's name

    again = _finish(tmp_path, channels, "restart.log")
    assert f"going on from {checkpoints / 'epoch-0002.pt'}" in again
    assert _epochs(again) == [3, 4]
    assert _metrics(tmp_path) == reference
    assert not partial.exists()  # the restart's own write of epoch 3 replaced it

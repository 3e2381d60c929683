"""Spot-safe checkpoints: one file per epoch, written so that a crash never leaves a file that looks complete.

Under SageMaker the checkpoint directory is /opt/ml/checkpoints, which SageMaker keeps in sync with the job's own
checkpoint S3 location (the launcher sets one per job with managed spot training). A spot interruption stops the
job with SIGTERM; SageMaker restarts the same job on a new instance and first copies that S3 location back, so
the restarted job finds its own checkpoints there and goes on from the newest complete one. A new job has an
empty location and starts fresh, unless it is given a checkpoint to start from (`--resume-from`, or the `resume`
channel).

A checkpoint (`epoch-0003.pt`) holds what `training.job.loop.TrainState.state_dict` returns (model, optimizer,
scheduler, gradient scaler, epoch, best score and weights, history, and the Python, NumPy and PyTorch random
states) and, beside it, the configuration, the class names and a format version. It is written to a temporary
name (`.epoch-0003.pt.partial`), flushed to disk, and only then renamed: a rename is atomic, so the final name
only ever names a whole file, and the partial name is never read; a save removes the partial files an earlier
crash left behind. Loading also checks the file: a truncated or corrupt one (a copy cut short, a full disk) is
skipped with a warning in favour of the one before it.

A checkpoint is data, never code: it holds only tensors and plain Python values (the NumPy and Python random
states as lists and numbers: `rng_state`, `set_rng_state`) and is loaded with `torch.load(weights_only=True)`,
which refuses any other pickled object. A file that needs more (a crafted `epoch-0009.pt` whose pickle would
run a command on resume) is treated as an unreadable one: named in the warning, skipped in favour of the one
before it, and named in the error when no good one is left. Its code never runs.

SIGTERM is held while a checkpoint is written, and the training loop holds it from an epoch's metrics line to its
checkpoint (`deferred_sigterm`): an interruption after an epoch has finished still saves that epoch, and the
restart goes on with the next one.

A checkpoint made with another network, image size, optimizer, schedule or set of classes cannot continue: that is
an error that says what differs, never a silent fresh start. Other changes (more epochs, another patience) are
logged and allowed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from training.job.config import TrainConfig

log = logging.getLogger(__name__)

FORMAT = 2  # bumped when the file's layout changes; another version is incompatible (2: plain random states)
KEEP = 2  # complete checkpoints kept: the newest and, in case it turns out unreadable, the one before
# The fields whose change makes the saved state meaningless for the new run (its tensors' shapes, its optimizer's
# or schedule's state, the preprocessing the weights learned on).
STRUCTURAL_FIELDS = ("network", "image_size", "window", "optimizer", "schedule")
_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used for this run; the message says which file, why, and what to do."""


class Interrupted(Exception):
    """SIGTERM arrived (a spot interruption or StopTrainingJob): the run stops; its last checkpoint stays."""


@dataclass(frozen=True)
class Restored:
    """A checkpoint a run goes on from: its file, the epochs it completed, and its saved training state."""

    path: Path
    epoch: int
    state: dict[str, Any]


def checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint taken after `epoch`."""
    return f"epoch-{epoch:04d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """The complete-named checkpoints of a directory, newest first (partial files are never listed)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def save(
    directory: Path, *, state: Mapping[str, Any], config: TrainConfig, classes: Sequence[str], job: str | None
) -> Path:
    """Write the checkpoint of the epoch `state` has completed, atomically, and prune older ones.

    Args:
        directory: the checkpoint directory (created when missing).
        state: TrainState.state_dict() of the run.
        config: the run's configuration (checked on load).
        classes: the class names (checked on load).
        job: the SageMaker job name, or None locally; recorded for the log of a resumed run.

    Returns:
        The checkpoint's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    epoch = int(state["epoch"])
    final = directory / checkpoint_name(epoch)
    partial = directory / f".{final.name}.partial"
    document = {
        "format": FORMAT,
        "epoch": epoch,
        "job": job,
        "classes": list(classes),
        "hyperparameters": config.hyperparameters(),
        "state": state,
    }
    with deferred_sigterm():  # an interruption waits for the rename: the file is whole or absent
        with open(partial, "wb") as fh:
            torch.save(document, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, final)
        _fsync_directory(directory)
    for stale in directory.glob(".epoch-*.pt.partial"):  # left by a write a crash (SIGKILL, power) cut short
        stale.unlink(missing_ok=True)
    for _, old in list_checkpoints(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return final


def restore(
    source: Path, *, config: TrainConfig, classes: Sequence[str], job: str | None = None
) -> Restored | None:
    """The newest complete checkpoint in `source` (a directory) or `source` itself (a file), checked against the run.

    Args:
        source: a checkpoint directory, or one checkpoint file (resume from a named checkpoint).
        config: this run's configuration.
        classes: this run's class names.
        job: this SageMaker job's name: the checkpoints must be its own (a restart); None: not checked.

    Returns:
        The checkpoint to go on from, or None when a directory holds none (a fresh start).

    Raises:
        CheckpointError: a named file that cannot be read, a directory whose checkpoints are all unreadable, or a
            checkpoint of an incompatible configuration.
    """
    if source.is_file():
        candidates = [(0, source)]
    elif source.is_dir():
        candidates = list_checkpoints(source)
        if not candidates:
            return None
    else:
        raise CheckpointError(f"checkpoint {source} does not exist; give a checkpoint file or a directory of them")
    problems = []
    for _, path in candidates:
        try:
            document = torch.load(path, map_location="cpu", weights_only=True)  # data only, no code
        except Exception as exc:  # truncated zip, pickle error, I/O error, not plain data: try the one before
            problems.append(f"{path.name}: unreadable ({_reason(exc)})")
            log.warning("checkpoint %s is unreadable (%s); trying the one before it", path, type(exc).__name__)
            continue
        if not isinstance(document, dict) or document.get("format") != FORMAT or "state" not in document:
            problems.append(f"{path.name}: not a checkpoint of this job (format {document.get('format', '?')!r})")
            continue
        if job and document.get("job") and document["job"] != job:
            raise CheckpointError(
                f"checkpoint location {source} holds checkpoints of job {document['job']}, not of this job ({job}): "
                "give each job its own checkpoint location (the launcher does), or start from that job's "
                "checkpoint with resume_from"
            )
        _check_compatible(path, document, config, classes)
        return Restored(path=path, epoch=int(document["epoch"]), state=document["state"])
    raise CheckpointError(
        f"no usable checkpoint in {source}: " + "; ".join(problems)
        + ". Delete the checkpoint location to start afresh, or point resume_from at a good checkpoint"
    )


def _check_compatible(path: Path, document: Mapping[str, Any], config: TrainConfig, classes: Sequence[str]) -> None:
    """Raise CheckpointError when the checkpoint cannot continue this run; log the harmless differences."""
    saved = TrainConfig.from_strings(document["hyperparameters"])
    mine = config.hyperparameters()
    theirs = saved.hyperparameters()
    structural = [f"{name} {theirs[name]!r} (now {mine[name]!r})" for name in STRUCTURAL_FIELDS
                  if theirs[name] != mine[name]]
    if list(document["classes"]) != list(classes):
        structural.append(f"classes {', '.join(document['classes'])} (now {', '.join(classes)})")
    if structural:
        raise CheckpointError(
            f"checkpoint {path} was made with " + "; ".join(structural) + ": it cannot continue this run. Use the "
            "checkpoint's settings, or start afresh with an empty checkpoint location (a new job gets its own)"
        )
    changed = [f"{name}={mine[name]} (was {theirs[name]})" for name in mine if mine[name] != theirs[name]]
    if changed:
        log.info("going on from %s with changed hyperparameters: %s", path.name, ", ".join(changed))


def _reason(exc: Exception) -> str:
    """One line on why a file did not load; a pickle that weights_only refused says so, without torch's advice."""
    text = str(exc)
    if "Weights only load failed" in text:
        detail = text.partition("WeightsUnpickler error:")[2].strip().splitlines()
        return "not a plain checkpoint, refused unrun: " + (detail[0] if detail else "objects other than tensors")
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def rng_state() -> dict[str, Any]:
    """The PyTorch, NumPy and Python random states as a tensor and plain values (loadable with weights_only=True)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)],
        "python": [int(version), [int(v) for v in internal], None if gauss_next is None else float(gauss_next)],
    }


def set_rng_state(saved: Mapping[str, Any]) -> None:
    """Restore exactly what `rng_state` returned."""
    torch.set_rng_state(saved["torch"])
    name, keys, position, has_gauss, cached_gaussian = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss,
                         cached_gaussian))
    version, internal, gauss_next = saved["python"]
    random.setstate((version, tuple(internal), gauss_next))


@contextlib.contextmanager
def deferred_sigterm() -> Iterator[None]:
    """Hold SIGTERM for the duration of the block (a checkpoint write), then deliver it."""
    received: list[int] = []
    with _sigterm_handler(lambda signum, _frame: received.append(signum)):
        yield
    if received:
        signal.raise_signal(signal.SIGTERM)  # to the handler restored above


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `Interrupted` inside the block (the training loop), so that the job exits at once and
    cleanly: SageMaker gives a spot instance two minutes, and an epoch's work since the last checkpoint is lost
    anyway."""

    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(f"received signal {signal.Signals(signum).name}")

    with _sigterm_handler(_raise):
        yield


@contextlib.contextmanager
def _sigterm_handler(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """Install a SIGTERM handler for the block and restore the previous one after it; outside the main thread,
    where Python allows no handlers, the block runs unchanged."""
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

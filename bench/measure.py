"""Timing, memory and machine-load helpers shared by the benchmarks, and the arithmetic of their figures (rates,
medians, per-epoch rows, time to a target accuracy). No torch: the parent process stays small."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil


def median_after_first(values: Sequence[float]) -> float:
    """The median of all values but the first, which pays the warm-up (allocator, oneDNN kernel selection, ITK's
    lazy loading, CUDA context); the first value alone when there is only one.

    Args:
        values: one figure per epoch or step, in order.

    Returns:
        The median, or nan for no values.
    """
    if not values:
        return float("nan")
    return float(statistics.median(values[1:] if len(values) > 1 else values))


class Clock:
    """Wall time and this process's CPU time (all its threads) since it was made.

    CPU time is the contention-robust figure: on a shared machine, wall time also counts the time slices other
    jobs took, while CPU time counts only work done here (with one thread per process it is what a dedicated
    core would take; with more, OpenMP's spin-waiting adds to it).
    """

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) since the clock was made."""
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def peak_memory_mib() -> dict[str, float]:
    """Peak resident memory of this process and of the largest of its waited-for child processes (Linux: KiB).

    Returns:
        {"peak_rss_mib": this process, "children_peak_rss_mib": the largest child (0 without children)}.
    """
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0  # ru_maxrss: KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    return {"peak_rss_mib": round(own, 1), "children_peak_rss_mib": round(children, 1)}


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every waited-for child process (and their waited-for children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def load_average() -> float:
    """The 1-minute load average (runnable processes; 2.0 fills 2 cores)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory = psutil.virtual_memory()
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    return {
        "cpu": model or platform.machine(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(memory.total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min": load_average(),
    }

def append_rates(rates: list[float], cpu_rates: list[float], images: int, clock: Clock) -> None:
    """Images per wall second and per CPU second since clock started."""
    wall, cpu = clock.read()
    rates.append(images / wall if wall > 0 else 0.0)
    cpu_rates.append(images / cpu if cpu > 0 else 0.0)


def rates_summary(rates: list[float], cpu_rates: list[float], *, key: str = "epochs") -> dict[str, Any]:
    """The medians after the first, and every value."""
    return {
        "images_per_second": median_after_first(rates),
        "images_per_cpu_second": median_after_first(cpu_rates),
        key: rounded(rates),
        f"{key}_per_cpu_second": rounded(cpu_rates),
    }


def epoch_row(
    epoch: int, seconds: float, cpu: float, images: int, loss: float, accuracy: float, eval_seconds: float | None
) -> dict[str, Any]:
    """One epoch's figures, rounded as the report prints them."""
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "images": images,
        "images_per_second": round(images / seconds, 2) if seconds > 0 else 0.0,
        "images_per_cpu_second": round(images / cpu, 2) if cpu > 0 else 0.0,
        "train_loss": round(loss, 5),
        "val_accuracy": round(accuracy, 4),
    }
    if eval_seconds is not None:
        row["eval_seconds"] = round(eval_seconds, 2)
    return row


def training_summary(rows: list[dict[str, Any]], target: float, *, setup_seconds: float) -> dict[str, Any]:
    """Throughput (median after the first epoch) and the training seconds until val accuracy first reached target."""
    elapsed, reached_at, seconds_to_target = setup_seconds, None, None
    for row in rows:
        elapsed += row["train_seconds"]
        if reached_at is None and row["val_accuracy"] >= target:
            reached_at, seconds_to_target = row["epoch"], round(elapsed, 1)
    return {
        "images_per_second": median_after_first([row["images_per_second"] for row in rows]),
        "images_per_cpu_second": median_after_first([row["images_per_cpu_second"] for row in rows]),
        "epochs": rows,
        "target_accuracy": target,
        "epochs_to_target": reached_at,
        "seconds_to_target": seconds_to_target,
        "best_val_accuracy": max((row["val_accuracy"] for row in rows), default=float("nan")),
    }


def rounded(values: Sequence[float]) -> list[float]:
    return [round(v, 2) for v in values]


def timed_fit(config: Any, data: Any, device: Any) -> tuple[Any, list[tuple[float, float, float]], float]:
    """training/job/train.py `fit`, with each epoch's `train_one_epoch` timed (wall, CPU) and its loss; fit's own
    validation each epoch is not in those times.

    Returns:
        (fit's final state, one (seconds, cpu seconds, loss) an epoch, fit's wall seconds in all).
    """
    from unittest import mock

    from training.job import loop, train

    clock: list[tuple[float, float, float]] = []
    original = loop.train_one_epoch

    def timed(*args: Any, **kwargs: Any) -> tuple[float, float]:
        epoch_clock = Clock()
        result = original(*args, **kwargs)  # ends with loss.item(): the device is synchronized
        clock.append((*epoch_clock.read(), result[0]))
        return result

    started = time.perf_counter()
    with mock.patch.object(loop, "train_one_epoch", timed):  # where loop.run_epochs looks it up
        state, _ = train.fit(config, data, device=device)
    return state, clock, time.perf_counter() - started

"""Timing, memory and machine-load helpers shared by the benchmarks (no torch: the parent process stays small)."""

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

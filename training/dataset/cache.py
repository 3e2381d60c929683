"""Reading headers and decoding images once, in a small process pool, into a cache at the training resolution.

This module imports numpy, pydicom, training.dataset.dicom and training.dataset.grayscale only (no torch, no MONAI):
decoding processes need nothing more, and where they must be spawned (no fork on the platform) they start in about
0.3 s instead of 3.5 s.

The cache is one contiguous uint8 array (N, 1, H, W), 1/255 steps of the [0, 1] image that `load_image` returns.
It is held in memory when it fits `budget_bytes`; otherwise it is a numpy memmap in `cache_dir`, whose file is
unlinked as soon as it is mapped, so it never outlives the process and needs no cleanup (Linux semantics; the
SageMaker containers run Linux). The operating system's page cache then keeps what fits of it in memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from training.dataset.dicom import DicomHeader, DicomReadError, load_image, read_header
from training.dataset.grayscale import Window, to_uint8

log = logging.getLogger(__name__)

# Below this many files per process, one process decodes them before a pool would have paid for itself.
MIN_FILES_PER_WORKER = 64
_CHUNK = 32  # files per task sent to a process: amortizes the pickling without starving the last process

Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass
class CacheBuffer:
    """The cache's storage.

    Attributes:
        array: uint8 array (N, 1, H, W), or (N, 1, D, H, W) for volumes.
        location: 'memory' or 'disk'.
    """

    array: np.ndarray
    location: str


@dataclass
class DecodeStats:
    """How the decoding went.

    Attributes:
        files: files decoded (including those that failed).
        seconds: wall time of the decoding.
        workers: processes used (1: in this process).
    """

    files: int
    seconds: float
    workers: int

    @property
    def files_per_second(self) -> float:
        """Decoding throughput."""
        return self.files / self.seconds if self.seconds > 0 else 0.0


def header_job(job: tuple[str, str]) -> tuple[DicomHeader | None, str | None]:
    """Read one file's header (runs in a decoding process).

    Args:
        job: (absolute path, path inside the channel).

    Returns:
        (header, None), or (None, reason) when the header cannot be read.
    """
    path, name = job
    try:
        return read_header(path, name=name), None
    except DicomReadError as exc:
        return None, exc.reason


def decode_job(job: tuple[str, str, tuple[int, int], Window | None]) -> tuple[np.ndarray | None, str | None]:
    """Decode and preprocess one file to the cache's uint8 (runs in a decoding process).

    Args:
        job: (absolute path, path inside the channel, (H, W), window or None).

    Returns:
        (uint8 array (H, W), None), or (None, reason) when the file cannot become an image.
    """
    path, name, size, window = job
    try:
        return to_uint8(load_image(path, image_size=size, window=window, name=name)[0]), None
    except DicomReadError as exc:
        return None, exc.reason
    except MemoryError:
        return None, "it does not fit in memory to decode"


def run_jobs(fn: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> Iterator[Result]:
    """Apply fn to each job, in order, in a spawned process pool when there are enough jobs to pay for it.

    Args:
        fn: a module-level function of this module (it must be importable in the child processes).
        jobs: the jobs.
        workers: the most processes to use; <= 1 runs everything in this process.

    Yields:
        fn(job) for each job, in order.
    """
    processes = min(workers, len(jobs) // MIN_FILES_PER_WORKER)
    if processes <= 1:
        for job in jobs:
            yield fn(job)
        return
    # Forked, as torch's DataLoader workers are on Linux: a spawned process re-imports the job's main module
    # (torch and MONAI: 3 s or more each, measured here) before decoding anything. The children run only numpy
    # and pydicom code, never torch, so the threads torch may have started in the parent do not matter to them.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_quiet_worker) as pool:
        yield from pool.map(fn, jobs, chunksize=_CHUNK)


def pool_size(jobs: int, workers: int) -> int:
    """How many processes `run_jobs` uses for this many jobs.

    Args:
        jobs: the number of jobs.
        workers: the most processes allowed.

    Returns:
        The number of processes (1: this process).
    """
    return max(1, min(workers, jobs // MIN_FILES_PER_WORKER))


def allocate(count: int, size: tuple[int, ...], *, budget_bytes: int, cache_dir: str | Path | None) -> CacheBuffer:
    """Create the cache's storage: in memory within the budget, else a memmap on local disk.

    Args:
        count: number of images (or volumes).
        size: (H, W), or (D, H, W) for volumes: the storage is (count, 1, *size).
        budget_bytes: the most memory the cache may take.
        cache_dir: where a disk cache goes; None: the system's temporary directory.

    Returns:
        The storage, zero-filled.

    Raises:
        OSError: the cache directory cannot hold the cache; the message says how much it needs.
    """
    shape = (count, 1, *size)
    needed = int(np.prod(shape))
    if needed <= budget_bytes or count == 0:
        return CacheBuffer(np.zeros(shape, dtype=np.uint8), "memory")
    directory = str(cache_dir) if cache_dir is not None else tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="dicom-cache-", suffix=".u8", dir=directory)
    os.close(handle)
    try:
        array = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
    except OSError as exc:
        raise OSError(
            f"the image cache needs {needed / 2**20:.0f} MiB on disk in {directory} ({exc}); raise "
            "cache_memory_mb or point cache_dir at a larger volume"
        ) from None
    finally:
        os.unlink(path)  # the mapping keeps the data; the name goes now so nothing is left behind
    return CacheBuffer(array, "disk")


def read_headers(
    jobs: Sequence[tuple[str, str]], workers: int
) -> tuple[list[DicomHeader | None], list[str | None], DecodeStats]:
    """Read many headers.

    Args:
        jobs: (absolute path, path inside the channel) per file.
        workers: the most processes to use.

    Returns:
        (headers, reasons, stats): per file a header or None, and None or the reason it failed.
    """
    start = time.perf_counter()
    headers: list[DicomHeader | None] = []
    reasons: list[str | None] = []
    for header, reason in run_jobs(header_job, jobs, workers):
        headers.append(header)
        reasons.append(reason)
    return headers, reasons, DecodeStats(len(jobs), time.perf_counter() - start, pool_size(len(jobs), workers))


def decode_into(
    buffer: np.ndarray,
    jobs: Sequence[tuple[str, str, tuple[int, int], Window | None]],
    workers: int,
    progress: Callable[[int, int], Any] | None = None,
) -> tuple[list[str | None], DecodeStats]:
    """Decode every job's file into buffer[i, 0].

    Args:
        buffer: uint8 array (N, 1, H, W), N == len(jobs).
        jobs: one decode job per row.
        workers: the most processes to use.
        progress: called with (done, total) now and then, for a log line.

    Returns:
        (reasons, stats): per row None, or the reason the file failed (its row stays zero).
    """
    start = time.perf_counter()
    reasons: list[str | None] = []
    report_every = max(1000, len(jobs) // 10)
    for row, (image, reason) in enumerate(run_jobs(decode_job, jobs, workers)):
        if image is not None:
            buffer[row, 0] = image
        reasons.append(reason)
        if progress is not None and (row + 1) % report_every == 0:
            progress(row + 1, len(jobs))
    return reasons, DecodeStats(len(jobs), time.perf_counter() - start, pool_size(len(jobs), workers))


def _quiet_worker() -> None:
    """Decoding processes: one thread each (the pool is the parallelism) and no warnings on stderr, since
    pydicom's warnings may quote element values such as PatientName."""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)

"""How cost grows with work, per unit (issue 23 item 3): the cases behind `python -m bench --only scaling`.

- `scaling_data`: at one data size (bench/__main__.py runs 1x, 4x and 16x the bench's --train-count) and one decode
  cache (in memory, or on disk: cache_memory_mb 0 spills it, as any set beyond the job's cache_memory_mb does),
  prepare's cost per image (listing, headers, decode), the loader's per image over whole epochs (training/dataset
  loader.py BatchLoader, augmentation on), and the job's training step's per image (bench/ceiling.py phases_of: the
  bench-only copy of the loop's step), its data wait apart.
- `scaling_decode`: prepare's decode (one process) of 16-bit uncompressed files of 256, 512 and 2048 pixels square,
  written for it from the synthetic set (training/synthetic.py stops at 1024): ms per file and ns per pixel.
- Serving at 1, 8 and 32 concurrent clients belongs to bench/serving_runtimes.py; until it is wired, the table has a
  row that says so (bench/__main__.py).

Every size is bounded before work starts: the data sizes by the command line (as the other cases), the decode files by
DECODE_COUNT and the sizes by training/dataset/dicom.py's MAX_FRAME_PIXELS.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from bench.ceiling import BATCH_SIZE, IMAGE_SIZE, phases_of, prepare_train
from training.dataset.dicom import MAX_FRAME_PIXELS
from training.dataset.loader import BatchLoader
from training.job.config import TrainConfig
from training.synthetic import generate

CACHES = {"memory": None, "disk": 0}  # cache_memory_mb: None keeps the job's 2048 MB; 0 puts the cache on disk
DECODE_SIZES = (256, 512, 2048)
DECODE_COUNT = 24  # files a decode size: 24 x 8 MiB at 2048
SERVING_CLIENTS = (1, 8, 32)


def scaling_data(
    *,
    train_dir: str,
    cache: str,
    loader_epochs: int = 2,
    steps: int = 3,
    warmup: int = 1,
    batch_size: int = BATCH_SIZE,
    image_size: Sequence[int] = IMAGE_SIZE,
    device: str = "cpu",
) -> dict[str, Any]:
    """Per-image cost of prepare, the loader and the training step on one set with one cache.

    Args:
        train_dir: the set (all of it the train split).
        cache: 'memory' or 'disk' (CACHES).
        loader_epochs: whole passes of the loader (>= 2: the first is warm-up).
        steps, warmup: timed and untimed training steps (the loader wraps around a short set); fewer than the
            ceiling's: the step's cost hardly depends on the data size, its data wait is what may, and the budget is
            10 minutes for the whole of scaling.
        batch_size, image_size: the job's.
        device: 'cpu' or 'cuda'.

    Returns:
        {"images", "cache" (where prepare put it), "prepare_ms_per_image", "loader_ms_per_image",
        "step_ms_per_image", "data_wait_ms_per_image", "loader_epochs": each epoch's images/s}.
    """
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}; got {cache!r}")
    if loader_epochs < 2:
        raise ValueError(f"loader_epochs must be >= 2 (the first is warm-up); got {loader_epochs}")
    config = TrainConfig(image_size=(int(image_size[0]), int(image_size[1])), batch_size=batch_size)
    data, prepare_seconds = prepare_train(train_dir, config, cache_memory_mb=CACHES[cache])
    target = torch.device(device)
    loader = BatchLoader(data.train, batch_size=batch_size, shuffle=True, augment=config.augment, seed=0,
                         drop_last=len(data.train) > batch_size, device=target)
    rates = []
    for epoch in range(1, loader_epochs + 1):
        loader.set_epoch(epoch)
        started, images = time.perf_counter(), 0
        for batch, _ in loader:
            images += int(batch.shape[0])
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        rates.append(images / (time.perf_counter() - started))
    step = phases_of(config, data, target, steps=steps, warmup=warmup)
    count = len(data.train)
    return {
        "images": count,
        "cache": str(data.summary.get("cache", {}).get("location", "?")),
        "prepare_ms_per_image": round(1000 * prepare_seconds / count, 4),
        "loader_ms_per_image": round(1000 / statistics.median(rates[1:]), 4),
        "step_ms_per_image": round(1000 / step["images_per_second"], 3),
        "data_wait_ms_per_image": round(step["phases"]["data_wait"] / batch_size, 4),
        "loader_epochs": [round(r, 1) for r in rates],
    }


def scaling_decode(
    *, sizes: Sequence[int] = DECODE_SIZES, count: int = DECODE_COUNT, image_size: Sequence[int] = IMAGE_SIZE
) -> dict[str, Any]:
    """Prepare's decode (one process, into the memory cache at image_size) of `count` 16-bit uncompressed files
    at each size.

    Args:
        sizes: rows and columns of the files (each within MAX_FRAME_PIXELS).
        count: files a size (4-256).
        image_size: the cache's (H, W), the job's.

    Returns:
        {"sizes": [{"size", "files", "ms_per_file", "ns_per_pixel", "files_per_second"}], "count"}.
    """
    if not 4 <= count <= 256:
        raise ValueError(f"count must be in [4, 256]; got {count}")
    too_large = [s for s in sizes if not 16 <= s or s * s > MAX_FRAME_PIXELS]
    if too_large:
        raise ValueError(f"sizes must be >= 16 and within {MAX_FRAME_PIXELS} pixels; got {too_large}")
    config = TrainConfig(image_size=(int(image_size[0]), int(image_size[1])), workers=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as scratch:
        source = Path(scratch) / "source"
        generate(source, count=count, size=256, label_format="metadata-json", seed=0)
        for size in sizes:
            folder = _resized_copy(source, Path(scratch) / str(size), size)
            data, _ = prepare_train(str(folder), config)
            decode = data.summary["decode"]
            seconds = float(decode["seconds"])
            rows.append({
                "size": size,
                "files": int(decode["files"]),
                "ms_per_file": round(1000 * seconds / count, 3),
                "ns_per_pixel": round(1e9 * seconds / (count * size * size), 3),
                "files_per_second": float(decode["files_per_second"]),
            })
    return {"sizes": rows, "count": count}


def _resized_copy(source: Path, folder: Path, size: int) -> Path:
    """Every file of source rewritten at size x size (nearest-neighbour resampling, 16-bit, uncompressed), with the
    labels file alongside."""
    folder.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.suffix != ".dcm":
            (folder / path.name).write_bytes(path.read_bytes())
            continue
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        rows = np.arange(size) * pixels.shape[0] // size
        columns = np.arange(size) * pixels.shape[1] // size
        resized = np.ascontiguousarray(pixels[rows][:, columns]).astype(np.uint16)
        ds.set_pixel_data(resized, photometric_interpretation=str(ds.PhotometricInterpretation), bits_stored=16)
        ds.save_as(folder / path.name, enforce_file_format=True)
    return folder


CASES: dict[str, Callable[..., dict[str, Any]]] = {"scaling_data": scaling_data, "scaling_decode": scaling_decode}

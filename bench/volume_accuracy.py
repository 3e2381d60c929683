"""The time to 0.95 validation accuracy of the 3-D job on its synthetic set (issue 21's figure), with the job's own fit.

The set is training.synthetic's order-only CT series (`generate_volumes(order_only=True)`: the class visible only in
the order of the slices along the slice normal, files written in random order under random names), split by patient
with the job's val_fraction; `prepare_volumes` decodes it once (its seconds count towards the time), then
training/job/train.py `fit` trains the 3-D ResNet18 with the job's defaults (AdamW, cosine schedule, augmentation,
class weighting, precision auto: fp32 for volumes on a CPU, channels_last_3d), early stopping off so every epoch runs.
The clock is the wall time of the loop's own `train_one_epoch` (fit's per-epoch validation is not counted), as the 2-D
`train_ours` in bench/cases.py measures it; tests/training/test_volume_job.py trains the same set at the same size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.measure import Clock, epoch_row, timed_fit, training_summary
from training import synthetic
from training.dataset.prepare_volumes import VolumeOptions, prepare_volumes
from training.dataset.pseudonym_key import KEY_BYTES
from training.job import distributed, runtime
from training.job.config import TrainConfig

# tests/training/test_volume_job.py's set and size: 48 series (24 patients) of 8 slices of 32x32, trained at 8x24x24
SERIES = {"count": 48, "slices": 8, "size": 32, "seed": 3}
GRID = (8, 24, 24)
KEY = bytes(range(KEY_BYTES))  # the patients are synthetic: a fixed key, so the user's local key is never made


def accuracy_volumes_ours(*, epochs: int = 8, grid: tuple[int, int, int] = GRID, count: int = SERIES["count"],
                          batch_size: int = 8, target_accuracy: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Train the order-only set with the job's fit; the seconds (decode included) until validation accuracy first
    reached target_accuracy.

    Returns:
        measure.training_summary's figures (rates in volumes/s, "seconds_to_target", "epochs_to_target", the epochs),
        plus "prepare_seconds", "autocast", "memory_format", "threads", "grid", "series" and "validation_series".
    """
    config = TrainConfig(network="resnet18", image_size=grid, batch_size=batch_size, epochs=epochs, patience=0,
                         seed=seed, bootstrap_samples=0, val_fraction=0.25)
    runtime.seed_everything(seed)
    with tempfile.TemporaryDirectory(prefix="bench-volume-accuracy-") as scratch:
        root = Path(scratch) / "train"
        synthetic.generate_volumes(root, **{**SERIES, "count": count}, order_only=True)  # type: ignore[arg-type]
        clock = Clock()
        options = VolumeOptions.from_config(config, pseudonym_key=KEY)
        data = prepare_volumes({"train": root}, options)
        prepare_seconds = clock.read()[0]
        state, timings, _ = timed_fit(config, data, torch.device("cpu"))
    volumes = (len(data.train) // batch_size) * batch_size if len(data.train) > batch_size else len(data.train)
    rows = [epoch_row(epoch, seconds, cpu, volumes, loss, float(history["val_accuracy"]), None)
            for epoch, ((seconds, cpu, loss), history) in enumerate(zip(timings, state.history, strict=True), start=1)]
    summary = training_summary(rows, target_accuracy, setup_seconds=prepare_seconds)
    compute = runtime.Compute.of(config, torch.device("cpu"), distributed.World())
    summary.update(
        prepare_seconds=round(prepare_seconds, 3),
        autocast=str(compute.dtype).replace("torch.", "") if compute.dtype is not None else "off (fp32)",
        memory_format=str(compute.memory_format).replace("torch.", ""),
        threads=torch.get_num_threads(),
        grid=list(grid),
        series=len(data.train) + len(data.validation),
        validation_series=len(data.validation),
    )
    return summary


CASES = {"accuracy_volumes_ours": accuracy_volumes_ours}

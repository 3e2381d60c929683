"""The benchmark cases: each measures one thing and returns its figures as a JSON-ready dict.

(a) is the public sample (bench/public_sample.py); (b) is ours: training/dataset/prepare.py's `prepare` and
`BatchLoader`, and the job's own loop (training/job/train.py `fit`, whose epochs run training/job/loop.py's
`train_one_epoch` and `evaluate`) at the job's defaults except for the public sample's image size and batch size.
`serving` has no (a): it trains a bundle with the real job and measures training/serve.py's HTTP server on one file.
bench/child.py runs each case in a process of its own; the smoke tests call them directly on tiny sets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench import ceiling, public_sample, scaling, serving_runtimes, volume_accuracy, volumes
from bench.ceiling import pair, sync
from bench.measure import Clock, append_rates, epoch_row, rates_summary, timed_fit, training_summary
from training.dataset.loader import BatchLoader
from training.dataset.prepare import DataOptions, prepare
from training.dataset.split import PreparedData
from training.job import runtime, train
from training.job.config import TrainConfig
from training.serve import measure_serving

log = logging.getLogger(__name__)


def loader_public_sample(
    *, train_dir: str, epochs: int, batch_size: int = public_sample.BATCH_SIZE, seed: int = 1, device: str = "cpu"
) -> dict[str, Any]:
    """(a) Images per second the public sample's DataLoader delivers to the training step, with no model.

    Args:
        train_dir: a metadata-json synthetic set (bench/datasets.py).
        epochs: passes over the set; the first is reported apart (warm-up).
        batch_size: images per batch.
        seed: seeds the shuffling and the random transforms.
        device: 'cpu', or 'cuda' for the sample's GPU settings (10 workers, pinned memory, batches copied there).

    Returns:
        {"images_per_second": median of the epochs after the first, "epochs": per-epoch images/s, "images": N}.
    """
    public_sample.require_itk()
    torch.manual_seed(seed)
    target = torch.device(device)
    files, labels, _ = public_sample.file_list(train_dir)
    loader = public_sample.train_loader(files, labels, batch_size=batch_size, seed=seed, cuda=target.type == "cuda")
    rates: list[float] = []
    cpu_rates: list[float] = []
    for _ in range(epochs):
        clock, images = Clock(), 0
        for batch in loader:
            inputs = batch[0].to(target)
            images += int(inputs.shape[0])
        sync(target)
        append_rates(rates, cpu_rates, images, clock)
    return {**rates_summary(rates, cpu_rates), "images": len(files)}


def loader_ours(
    *,
    train_dir: str,
    epochs: int,
    batch_size: int = public_sample.BATCH_SIZE,
    image_size: Sequence[int] = public_sample.SPATIAL_SIZE,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """(b) Images per second our BatchLoader delivers to the training step (augmentation on), with no model; and
    the one-time cost of `prepare` (listing, headers, decoding into the uint8 cache) that a job pays once.

    Args:
        train_dir: the same set as (a); all of it is the train split (val_fraction 0).
        epochs: passes over the set; the first is reported apart.
        batch_size: images per batch.
        image_size: (H, W) of the cache and the batches.
        seed: seeds the order and the augmentation.
        device: where batches are built ('cpu' or 'cuda').

    Returns:
        {"images_per_second", "epochs", "images", "prepare_seconds", "decode": the cache's figures}.
    """
    config = TrainConfig(image_size=pair(image_size), batch_size=batch_size, seed=seed)
    data, prepare_seconds = _prepare({"train": train_dir}, config, val_fraction=0.0)
    target = torch.device(device)
    loader = BatchLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        augment=config.augment,
        seed=seed,
        drop_last=len(data.train) > batch_size,  # as fit builds it (training/job/train.py _train_loader)
        device=target,
    )
    rates: list[float] = []
    cpu_rates: list[float] = []
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        clock, images = Clock(), 0
        for batch, _ in loader:
            images += int(batch.shape[0])
        sync(target)
        append_rates(rates, cpu_rates, images, clock)
    return {
        **rates_summary(rates, cpu_rates),
        "images": len(data.train),
        "prepare_seconds": round(prepare_seconds, 3),
        "decode": data.summary.get("decode", {}),
        "augment": config.augment,
    }


def train_public_sample(
    *,
    train_dir: str,
    val_dir: str,
    epochs: int,
    batch_size: int = public_sample.BATCH_SIZE,
    seed: int = 1,
    target_accuracy: float = 0.95,
    device: str = "cpu",
) -> dict[str, Any]:
    """(a) The public sample's loop: images per second of its epochs, and the training time to target_accuracy.

    Validation (added; the sample has none) runs after every epoch and is not counted in either figure.

    Args:
        train_dir, val_dir: metadata-json synthetic sets.
        epochs: epochs to run (the cap for time-to-accuracy).
        batch_size: images per batch.
        seed: the sample's --seed default is 1.
        target_accuracy: the validation accuracy whose first epoch ends the time-to-accuracy clock.
        device: 'cpu' or 'cuda' (the sample's GPU loader settings).

    Returns:
        {"images_per_second", "epochs": per-epoch rows, "seconds_to_target" (None: not reached), ...}.
    """
    public_sample.require_itk()
    torch.manual_seed(seed)
    target = torch.device(device)
    cuda = target.type == "cuda"
    files, labels, classes = public_sample.file_list(train_dir)
    val_files, val_labels, _ = public_sample.file_list(val_dir)
    loader = public_sample.train_loader(files, labels, batch_size=batch_size, seed=seed, cuda=cuda)
    model = public_sample.build_model(len(classes), target)
    optimizer = public_sample.build_optimizer(model)
    loss_function = torch.nn.CrossEntropyLoss()
    rows = []
    for epoch in range(1, epochs + 1):
        clock = Clock()
        loss, images = public_sample.train_epoch(model, loader, optimizer, loss_function, target)
        seconds, cpu = clock.read()
        started = time.perf_counter()
        accuracy = public_sample.evaluate(model, val_files, val_labels, target, batch_size=batch_size, cuda=cuda)
        rows.append(epoch_row(epoch, seconds, cpu, images, loss, accuracy, time.perf_counter() - started))
        log.info("(a) %s", rows[-1])
    return training_summary(rows, target_accuracy, setup_seconds=0.0)


def train_ours(
    *,
    train_dir: str,
    val_dir: str,
    epochs: int,
    batch_size: int = public_sample.BATCH_SIZE,
    image_size: Sequence[int] = public_sample.SPATIAL_SIZE,
    seed: int = 0,
    target_accuracy: float = 0.95,
    device: str = "cpu",
) -> dict[str, Any]:
    """(b) Our loop as train.py runs it: `prepare`, then `training.job.train.fit` with the job's defaults (AdamW,
    cosine schedule, augmentation, class weighting, autocast 'auto', channels_last) at the given image and batch
    size, early stopping off so that every epoch runs.

    The epoch time is the wall time of the loop's own `train_one_epoch` (wrapped here only to read the clock); fit's
    per-epoch validation is not counted. Time-to-accuracy includes `prepare` (the decode cache is part of (b)).

    Args:
        train_dir, val_dir: the same sets as (a), as the train and validation channels.
        epochs: epochs to run (the cap for time-to-accuracy).
        batch_size: images per batch.
        image_size: (H, W).
        seed: TrainConfig.seed.
        target_accuracy: the validation accuracy whose first epoch ends the time-to-accuracy clock.
        device: 'cpu' or 'cuda'.

    Returns:
        Like `train_public_sample`, plus "prepare_seconds", "autocast", "channels_last" and "threads".
    """
    config = TrainConfig(
        image_size=pair(image_size), batch_size=batch_size, epochs=epochs, patience=0, seed=seed, bootstrap_samples=0
    )
    target = torch.device(device)
    runtime.seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    data, prepare_seconds = _prepare({"train": train_dir, "validation": val_dir}, config)
    state, clock, fit_seconds = timed_fit(config, data, target)
    images = (len(data.train) // batch_size) * batch_size if len(data.train) > batch_size else len(data.train)
    rows = [
        epoch_row(epoch, seconds, cpu, images, loss, float(history["val_accuracy"]), None)
        for epoch, ((seconds, cpu, loss), history) in enumerate(zip(clock, state.history, strict=True), start=1)
    ]
    summary = training_summary(rows, target_accuracy, setup_seconds=prepare_seconds)
    dtype = runtime.autocast_dtype(config.precision, target)
    summary.update(
        prepare_seconds=round(prepare_seconds, 3),
        validation_and_bookkeeping_seconds=round(fit_seconds - sum(row[0] for row in clock), 2),
        autocast=str(dtype).replace("torch.", "") if dtype is not None else "off (fp32)",
        channels_last=config.channels_last,
        threads=torch.get_num_threads(),
    )
    return summary


def serving(
    *,
    train_dir: str,
    val_dir: str,
    dicom_path: str | None = None,
    requests: int = 200,
    concurrency: int = 8,
    workers: int = 0,
    epochs: int = 1,
    hyperparameters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Requests per second and latency of the served model: train a bundle with the real job, then measure
    training/serve.py's server (gunicorn, `python -m training.serve`) on localhost with one DICOM file.

    The bundle comes from `training.job.train.main`, the job's own entry point (as training/local_demo.py runs it), with
    the job's defaults (96x96 DenseNet121) for `epochs` epochs on train_dir, val_dir as its validation channel, into
    a temporary model directory. Its accuracy does not matter here: the work per request does not depend on it.

    Args:
        train_dir, val_dir: a synthetic set (bench/datasets.py): the job's train and validation channels.
        dicom_path: the file every request sends; None: the first file of val_dir (by name).
        requests: timed requests (after 2 x workers warm-up requests; training/serve.py's measure_serving).
        concurrency: clients sending at once.
        workers: server worker processes; 0: one per core (the server's own default).
        epochs: the job's epochs.
        hyperparameters: other job flags, name to value (e.g. {"image_size": "32,32"} in the smoke tests).

    Returns:
        measure_serving's figures (requests, concurrency, workers, cores, errors, seconds, requests_per_second,
        p50_ms, p99_ms, max_ms), plus "model" (network, image_size, epochs, train_seconds) and "file" (name, rows,
        columns, bytes).

    Raises:
        RuntimeError: the job failed (its log is in the case's output).
    """
    import pydicom

    if dicom_path is None:
        files = sorted(Path(val_dir).glob("*.dcm"))
        if not files:
            raise FileNotFoundError(f"{val_dir} holds no .dcm file to send")
        dicom_path = str(files[0])
    header = pydicom.dcmread(dicom_path, stop_before_pixels=True)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        model_dir = Path(scratch) / "model"
        argv = [f"--train={train_dir}", f"--validation={val_dir}", f"--model-dir={model_dir}"]
        argv += [f"--output-dir={Path(scratch) / 'output'}", "--epochs", str(epochs)]
        for name, value in (hyperparameters or {}).items():
            argv += [f"--{name}", str(value)]
        started = time.perf_counter()
        status = train.main(argv)
        train_seconds = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"the job (python -m training {' '.join(argv)}) failed with status {status}")
        inference = json.loads((model_dir / "configs" / "inference.json").read_text(encoding="utf-8"))
        metadata = json.loads((model_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
        figures = measure_serving(
            model_dir, dicom_path, requests=requests, concurrency=concurrency, workers=workers or None
        )
    figures["model"] = {
        "network": str(metadata.get("network", "?")),
        "image_size": [int(v) for v in inference["image_size"]],
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
    }
    figures["file"] = {
        "name": Path(dicom_path).name,
        "rows": int(header.Rows),
        "columns": int(header.Columns),
        "bytes": Path(dicom_path).stat().st_size,
    }
    return figures


def _prepare(
    channels: dict[str, str], config: TrainConfig, *, val_fraction: float | None = None
) -> tuple[PreparedData, float]:
    """training/dataset/prepare.py's prepare with the job's data options for this config; timed."""
    options = DataOptions.from_config(config)
    if val_fraction is not None:
        options = dataclasses.replace(options, val_fraction=val_fraction)
    started = time.perf_counter()
    data = prepare(channels, options)
    return data, time.perf_counter() - started


CASES: dict[str, Callable[..., dict[str, Any]]] = {
    "loader_public_sample": loader_public_sample,
    "loader_ours": loader_ours,
    "train_public_sample": train_public_sample,
    "train_ours": train_ours,
    "serving": serving,
    **ceiling.CASES,  # the ceiling, the job's own loop figure, its phases (bench/ceiling.py)
    **scaling.CASES,  # cost per unit as work grows (bench/scaling.py)
    **volumes.CASES,  # the 3-D benchmark (bench/volumes.py)
    **volume_accuracy.CASES,  # the 3-D job's time to 0.95 (bench/volume_accuracy.py)
    **serving_runtimes.CASES,  # serving's shares, runtimes and scaling (bench/serving_runtimes.py)
}

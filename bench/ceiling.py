"""The training loop's ceiling, the loop's own figure, and where the loop's time goes (issue 23 item 1).

The ceiling is the training step alone: DenseNet121 forward, the loss, backward and the job's optimizer step
(training/job/runtime.py make_optimizer: AdamW, fused), on one batch already in memory, at the loop's network, batch,
image size and thread count (both processes inherit the same OMP_NUM_THREADS). Variants: fp32 and bf16 (on CUDA the
GPU's best autocast type instead of bf16 where it differs), each in contiguous and channels_last memory. Each takes
`warmup` untimed steps (at least 2), then `steps` timed ones (at least 6 in `make bench`): its figure is their median,
its spread (max - min) / median of them. bench/__main__.py measures it before and after the loop; the higher counts.

The loop's figure is the job's own: `python -m training` in a process of its own (bench/process.py run_module) at the
job's defaults but for image size, batch and epochs, its `images_per_second` metric lines read back with
training/job/metrics.py parse_line, the median of the epochs after the first. A loop cannot beat its bare step: a
share above 100 % plus the spread means the ceiling measures less than the loop does (bench/report.py fails the run).

`loop_phases` splits the loop's step into data wait, forward, backward, optimizer and bookkeeping, with a bench-only
copy of training/job/loop.py train_one_epoch's step and perf_counter between phases (CUDA synchronized at each): the
production loop holds no timer. The same copy gives bench/scaling.py its training-step figures.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.process import run_module
from training.dataset.loader import BatchLoader
from training.dataset.prepare import DataOptions, prepare
from training.job import distributed as dist
from training.job import loop
from training.job.config import TrainConfig
from training.job.metrics import parse_line
from training.job.networks import build_network
from training.job.runtime import Compute, autocast_dtype, make_optimizer, make_scaler, make_scheduler

log = logging.getLogger(__name__)

BATCH_SIZE = 100  # the public sample's, and the issue's
IMAGE_SIZE = (108, 96)  # the public sample's spatial size, (H, W)
WARMUP = 2  # untimed steps: the allocator, oneDNN's kernel choice, the fused optimizer's first state
STEPS = 6  # timed steps a variant (the minimum)
PHASES = ("data_wait", "forward", "backward", "optimizer", "bookkeeping")


def ceiling(
    *,
    variants: Sequence[Mapping[str, Any]] | None = None,
    batch_size: int = BATCH_SIZE,
    image_size: Sequence[int] = IMAGE_SIZE,
    warmup: int = WARMUP,
    steps: int = STEPS,
    device: str = "cpu",
) -> dict[str, Any]:
    """The bare training step's images per second, per variant (this module's docstring says what it holds).

    Args:
        variants: each {"precision": 'fp32' | 'bf16' | 'fp16', "channels_last": bool}; None: `default_variants`.
        batch_size: images a step.
        image_size: (H, W).
        warmup: untimed steps first (>= 1).
        steps: timed steps (>= 1).
        device: 'cpu' or 'cuda'.

    Returns:
        {"variants": [each variant with "images_per_second" (median), "spread", "steps" (every timed step's rate),
        "job_default" (the variant the job's defaults train in)], "threads", "batch_size", "image_size", "warmup"}.
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"warmup and steps must be >= 1; got {warmup} and {steps}")
    target = torch.device(device)
    default = job_default_variant(device)
    results = []
    for variant in default_variants(device) if variants is None else variants:
        config = TrainConfig(
            image_size=pair(image_size),
            batch_size=batch_size,
            precision=str(variant["precision"]),
            channels_last=bool(variant["channels_last"]),
        )
        rates = _step_rates(config, target, warmup=warmup, steps=steps)
        results.append({**variant, **spread_of(rates), "job_default": dict(variant) == default})
        log.info("ceiling %s", results[-1])
    return {
        "variants": results,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "image_size": list(pair(image_size)),
        "warmup": warmup,
    }


def _step_rates(config: TrainConfig, device: torch.device, *, warmup: int, steps: int) -> list[float]:
    """Images per second of each timed step: forward, loss, backward and the job's optimizer, on one batch."""
    torch.manual_seed(0)
    compute = Compute.of(config, device, dist.World())
    model = build_network(config.network, num_classes=2).to(device)
    model = model.to(memory_format=compute.memory_format)  # type: ignore[call-overload]  # torch's stubs omit it
    model.train()
    optimizer = make_optimizer(config, model)
    images = torch.rand(config.batch_size, 1, *config.image_size, device=device)
    images = images.contiguous(memory_format=compute.memory_format)
    labels = torch.arange(config.batch_size, device=device) % 2
    criterion = torch.nn.CrossEntropyLoss()
    rates = []
    for step in range(warmup + steps):
        sync(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=compute.dtype or torch.float32, enabled=compute.dtype is not None):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if step >= warmup:
            rates.append(config.batch_size / (time.perf_counter() - started))
    return rates


def spread_of(rates: Sequence[float]) -> dict[str, Any]:
    """The median of the timed steps' rates, and their spread (max - min) / median."""
    median = float(statistics.median(rates))
    spread = (max(rates) - min(rates)) / median if median > 0 else float("nan")
    return {"images_per_second": median, "spread": round(spread, 4), "steps": [round(r, 2) for r in rates]}


def default_variants(device: str = "cpu") -> list[dict[str, Any]]:
    """fp32 and bf16 (CUDA without bf16: fp16), each contiguous and channels_last."""
    low = "fp16" if device.startswith("cuda") and best_precision(device) == "fp16" else "bf16"
    return [{"precision": p, "channels_last": cl} for p in ("fp32", low) for cl in (False, True)]


def job_default_variant(device: str = "cpu") -> dict[str, Any]:
    """The variant the job's defaults train in (precision 'auto', TrainConfig.channels_last)."""
    return {"precision": best_precision(device), "channels_last": TrainConfig().channels_last}


def best_precision(device: str = "cpu") -> str:
    """The autocast type training/job/runtime.py's precision 'auto' picks here: 'bf16' or 'fp16' on CUDA, 'bf16' on CPUs
    with AVX512-BF16 or AMX, else 'fp32'."""
    dtype = autocast_dtype("auto", torch.device(device))
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype is not None else "fp32"


def loop_job(
    *,
    train_dir: str,
    val_dir: str,
    epochs: int = 4,
    batch_size: int = BATCH_SIZE,
    image_size: Sequence[int] = IMAGE_SIZE,
    hyperparameters: Mapping[str, str] | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """The job's own `images_per_second`: `python -m training` on train_dir and val_dir, read from its metric lines.

    Args:
        train_dir, val_dir: the job's train and validation channels.
        epochs: the job's epochs (>= 2: the first is warm-up and not counted).
        batch_size, image_size: the job's; every other hyperparameter keeps the job's default.
        hyperparameters: other job flags, name to value (the smoke tests shrink the job with them).
        timeout: seconds before the job is stopped.

    Returns:
        {"images_per_second": median of the epochs after the first, "epochs": each epoch's figure, "argv": the flags}.

    Raises:
        BenchError: the job failed (the end of its output is in the message).
        ValueError: epochs < 2, or the job printed fewer than 2 metric lines.
    """
    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (the first is warm-up); got {epochs}")
    height, width = pair(image_size)
    flags = {"epochs": str(epochs), "image_size": f"{height},{width}", "batch_size": str(batch_size)}
    flags.update(hyperparameters or {})
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as scratch:
        argv = [f"--train={train_dir}", f"--validation={val_dir}", f"--model-dir={Path(scratch) / 'model'}"]
        argv += [f"--output-dir={Path(scratch) / 'output'}"]
        for name, value in flags.items():
            argv += [f"--{name}", value]
        output = run_module("training", argv, timeout=timeout)
    by_epoch: dict[float, float] = {}  # the first line of each epoch (the job repeats the best one at its end)
    for metrics in map(parse_line, output.splitlines()):
        if "epoch" in metrics and "train:images_per_second" in metrics:
            by_epoch.setdefault(metrics["epoch"], metrics["train:images_per_second"])
    rates = list(by_epoch.values())
    if len(rates) < 2:
        raise ValueError(f"the job printed {len(rates)} metric line(s) with images_per_second; 2 or more are needed")
    return {
        "images_per_second": float(statistics.median(rates[1:])),
        "epochs": [round(r, 2) for r in rates],
        "flags": flags,
    }


def loop_phases(
    *,
    train_dir: str,
    steps: int = STEPS,
    warmup: int = WARMUP,
    batch_size: int = BATCH_SIZE,
    image_size: Sequence[int] = IMAGE_SIZE,
    cache_memory_mb: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Where the loop's step spends its time: the job's data, network, optimizer, schedule, scaler and loss at its
    defaults (as training/job/train.py fit builds them), through a bench-only copy of train_one_epoch's step.

    Args:
        train_dir: the data (all of it the train split); prepared with the job's options.
        steps: timed steps (the loader wraps around when the set is shorter); warmup: untimed steps first.
        batch_size, image_size: the job's.
        cache_memory_mb: the decode cache's memory budget; None: the job's (0 forces the cache to disk).
        device: 'cpu' or 'cuda'.

    Returns:
        {"images_per_second" (of the timed steps), "phases": mean ms a step per phase, "shares": each phase's share,
        "cache": 'memory' or 'disk', "images": the set's size, "prepare_seconds", "decode": prepare's decode figures}.
    """
    config = TrainConfig(image_size=pair(image_size), batch_size=batch_size)
    data, prepare_seconds = prepare_train(train_dir, config, cache_memory_mb=cache_memory_mb)
    return {
        **phases_of(config, data, torch.device(device), steps=steps, warmup=warmup),
        "cache": str(data.summary.get("cache", {}).get("location", "?")),
        "images": len(data.train),
        "prepare_seconds": round(prepare_seconds, 3),
        "decode": data.summary.get("decode", {}),
    }


def prepare_train(train_dir: str, config: TrainConfig, *, cache_memory_mb: int | None = None) -> tuple[Any, float]:
    """training/dataset/prepare.py's prepare of train_dir, all of it the train split, with the job's data options
    (cache_memory_mb: the cache's memory budget instead of the job's; 0 puts it on disk); timed.

    Returns:
        (the prepared data, seconds).
    """
    options = dataclasses.replace(DataOptions.from_config(config), val_fraction=0.0)
    if cache_memory_mb is not None:
        options = dataclasses.replace(options, cache_memory_mb=cache_memory_mb)
    started = time.perf_counter()
    data = prepare({"train": train_dir}, options)
    return data, time.perf_counter() - started


def phases_of(config: TrainConfig, data: Any, device: torch.device, *, steps: int, warmup: int) -> dict[str, Any]:
    """`warmup` then `steps` timed steps of the instrumented copy of the loop's step on prepared data.

    Returns:
        {"images_per_second" (of the timed steps), "phases": mean ms a step per phase, "shares": each phase's share}.
    """
    step, batches = _instrumented_step(config, data, device)
    totals = dict.fromkeys(PHASES, 0.0)
    for index in range(warmup + steps):
        times = step(batches)
        if index >= warmup:
            totals = {phase: totals[phase] + times[phase] for phase in PHASES}
    seconds = sum(totals.values())
    return {
        "images_per_second": steps * config.batch_size / seconds if seconds > 0 else 0.0,
        "phases": {phase: round(1000 * value / steps, 2) for phase, value in totals.items()},
        "shares": {phase: round(value / seconds, 4) if seconds > 0 else 0.0 for phase, value in totals.items()},
    }


Step = Callable[[Iterator[tuple[torch.Tensor, torch.Tensor]]], dict[str, float]]


def _instrumented_step(config: TrainConfig, data: Any, device: torch.device) -> tuple[Step, Iterator[Any]]:
    """fit's objects and an endless batch iterator, and one step of train_one_epoch timed phase by phase."""
    torch.manual_seed(config.seed)
    compute = Compute.of(config, device, dist.World())
    model = build_network(config.network, num_classes=len(data.classes)).to(device)
    model = model.to(memory_format=compute.memory_format)  # type: ignore[call-overload]  # torch's stubs omit it
    model.train()
    loader = BatchLoader(data.train, batch_size=config.batch_size, shuffle=True, augment=config.augment,
                         seed=config.seed, drop_last=len(data.train) > config.batch_size, device=device)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch=len(loader))
    scaler, criterion = make_scaler(compute), loop.make_criterion(config, data, compute)
    loss_sum = torch.zeros((), device=device)
    dtype = compute.dtype

    def step(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        marks = [time.perf_counter()]

        def mark() -> None:
            sync(device)
            marks.append(time.perf_counter())

        images, labels = next(batches)
        images = images.contiguous(memory_format=compute.memory_format)
        mark()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        mark()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        mark()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        mark()
        finite = torch.isfinite(loss.detach())
        loss_sum.add_(torch.where(finite, loss.detach(), 0.0) * labels.shape[0])
        mark()
        return {phase: marks[i + 1] - marks[i] for i, phase in enumerate(PHASES)}

    return step, _endless(loader)


def _endless(loader: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        epoch += 1
        loader.set_epoch(epoch)
        yield from loader


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pair(values: Sequence[int]) -> tuple[int, int]:
    """(H, W) from an image size of two values."""
    if len(values) != 2:
        raise ValueError(f"image_size must be (H, W); got {values}")
    return int(values[0]), int(values[1])


CASES: dict[str, Callable[..., dict[str, Any]]] = {"ceiling": ceiling, "loop_job": loop_job, "loop_phases": loop_phases}

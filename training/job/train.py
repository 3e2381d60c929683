"""Train a MONAI classifier on DICOM images: the job SageMaker runs, and the same job locally.

    python -m training --train DIR [--validation DIR] [--test DIR] --model-dir DIR --output-dir DIR [--epochs N]

Every hyperparameter is a flag of its field's name in training/job/config.py (`--learning_rate 3e-4`). Under SageMaker
the paths and hyperparameters come from the training contract (training/job/environment.py) instead.

Top to bottom: read the configuration, prepare the data (training/dataset/prepare.py decodes every image once into a
cache), build the network and optimizer, then per epoch train, validate, print one metric line, keep the best weights by
validation AUC and stop on a plateau; finally evaluate the test channel once with the best weights (bootstrap 95%
intervals), and write the MONAI bundle (model directory) and the metrics and figures (output directory).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.dataset.loader import BatchLoader
from training.dataset.prepare import DataError, DataOptions, prepare
from training.dataset.split import PreparedData, Split
from training.job import bundle, checkpoint, environment, evaluation, lineage, plots
from training.job import config as config_module
from training.job import distributed as dist
from training.job.checkpoint import CheckpointError, Interrupted
from training.job.config import TrainConfig
from training.job.environment import JobContext
from training.job.metrics import format_line
from training.job.networks import build_network
from training.job.runtime import (
    Compute,
    autocast_dtype,
    make_optimizer,
    make_scheduler,
    pick_device,
    rank_batch_size,
    seed_everything,
)

log = logging.getLogger(__name__)

# Two-class names that mean "no finding": the other class is then the positive one (positive_class="").
NEGATIVE_NAMES = ("normal", "negative", "healthy", "benign", "no_finding", "no-finding", "nofinding", "control", "0")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the job from the command line and the environment.

    Args:
        argv: the arguments (default sys.argv[1:]); SageMaker passes hyperparameters as `--name value`.
        environ: the environment (default os.environ).

    Returns:
        0 on success, 1 when the data is unusable (the message lists why); bad arguments exit with 2.
    """
    if not logging.getLogger().handlers:  # a host (tests, a notebook) may have configured logging already
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(argv)
    ignored, rejected = environment.split_injected(unknown)
    if rejected:
        parser.error(f"unknown arguments {' '.join(rejected)}: "
                     "hyperparameters are the fields of training/job/config.py")
    if ignored:
        log.info("ignoring SageMaker's own arguments: %s", " ".join(ignored))
    try:
        context = environment.read_context(namespace, environ, interactive=sys.stdout.isatty())
        config = config_module.from_arguments(namespace, context.hyperparameters)
        rank_batch_size(config.batch_size, dist.World(size=context.world_size))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run(config, context)
    except (DataError, CheckpointError) as exc:
        log.error("error: %s", exc)
        environment.write_failure(str(exc), environ)
        return 1
    except Interrupted as exc:
        log.warning("stopped: %s; a restart of this job goes on from its last checkpoint", exc)
        return 128 + 15  # what a process ended by SIGTERM reports
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: the contract's path flags and one flag per hyperparameter (no abbreviations)."""
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    environment.add_arguments(parser)
    config_module.add_arguments(parser)
    return parser


@dataclass
class TrainState:
    """Everything training changes, in one object: what a checkpoint saves and a resumed run restores.

    Attributes:
        model, optimizer, scheduler, scaler: the training objects (scheduler None for schedule=none).
        epoch: epochs completed.
        best_score: the selection score of the best epoch (validation AUC; see `selection_score`).
        best_epoch: that epoch (0: none yet).
        best_weights: a CPU copy of the model's weights at the best epoch.
        history: one metrics dict per completed epoch.
        stopped: early stopping ended the run (a restart must not train on).
        trainer: the module the training step calls (DistributedDataParallel around `model`), or None for `model`.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False
    trainer: nn.Module | None = None

    def observe(self, score: float, *, min_delta: float) -> bool:
        """Record the score of the epoch just completed; keep the weights when it beats the best by min_delta.

        Returns:
            Whether this epoch is the new best.
        """
        if not score > self.best_score + min_delta:
            return False
        self.best_score, self.best_epoch = score, self.epoch
        self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, random number generators included."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
            "history": self.history,
            "stopped": self.stopped,
            "rng": checkpoint.rng_state(),  # plain values: the file loads with weights_only=True
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_score, self.best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        self.best_weights, self.history = state["best_weights"], list(state["history"])
        self.stopped = bool(state.get("stopped", False))
        checkpoint.set_rng_state(state["rng"])


@dataclass
class Evaluation:
    """A model's outputs on one split: loss, softmax probabilities (N x C) and labels (N)."""

    loss: float
    probabilities: np.ndarray
    labels: np.ndarray


@dataclass
class JobResult:
    """What a run produced.

    Attributes:
        history: one metrics dict per epoch.
        best_epoch: the epoch whose weights the bundle holds.
        validation: the validation report of the best weights; test: the test report, or None.
        bundle_dir: the MONAI bundle; metrics_file: the output directory's metrics.json (None on ranks > 0).
        seconds: wall time of the run.
    """

    history: list[dict[str, float]]
    best_epoch: int
    validation: dict[str, Any]
    test: dict[str, Any] | None
    bundle_dir: Path | None
    metrics_file: Path | None
    seconds: float


def run(config: TrainConfig, context: JobContext) -> JobResult:
    """Prepare the data, train, evaluate, and write the bundle and reports (rank 0 only).

    Args:
        config: the hyperparameters.
        context: paths and environment (training/job/environment.py).

    Raises:
        DataError: the data cannot be used; the message lists every problem.
    """
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(context)
    world = dist.start(rank=context.rank, local_rank=context.local_rank, world_size=context.world_size, device=device)
    if world.rank > 0:  # one voice in the logs: the other ranks report only warnings and errors
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _run(config, context, device=device, world=world, started=started)
    finally:
        dist.stop(world)


def _run(
    config: TrainConfig, context: JobContext, *, device: torch.device, world: dist.World, started: float
) -> JobResult:
    dtype = autocast_dtype(config.precision, device)
    log.info(
        "device %s, autocast %s, %d threads, network %s at %dx%d",
        device,
        dtype or "off (fp32)",
        torch.get_num_threads(),
        config.network,
        *config.image_size,
    )
    s3 = lineage.read_s3_manifest(context.manifest)  # read first: a bad record fails now, not after training
    data = _prepare_everywhere(config, context, world)
    state, result = fit(
        config,
        data,
        device=device,
        progress=context.progress_bar and world.rank == 0,
        world=world,
        checkpoint_dir=context.checkpoint_dir if world.rank == 0 else None,
        restore_from=context.checkpoint_dir,
        resume_from=context.resume_from,
        job=context.job_name,
    )
    validation = evaluation.evaluation_report(**_report_args(config, data.classes, result["validation"]))
    test = None
    has_test = dist.gather_objects(data.test is not None and len(data.test) > 0, world)
    if any(has_test):
        test_split = data.test if data.test is not None else _empty_like(data.validation)
        outputs = evaluate(
            state.model,
            test_split,
            device=device,
            dtype=dtype,
            config=config,
            num_classes=len(data.classes),
            world=world,
        )
        test = evaluation.evaluation_report(**_report_args(config, data.classes, outputs))
        if world.rank == 0:
            print_test_report(test)
    spread = _distributed_record(data, world) if world.active else None  # a collective: every rank takes part
    seconds = time.perf_counter() - started
    if world.rank > 0:
        return JobResult(state.history, state.best_epoch, validation, test, None, None, seconds)
    origin = lineage.job_lineage(config=config, context=context, data=lineage.data_lineage(data.manifest, s3))
    if spread is not None:
        origin["distributed"] = spread
    bundle_dir = bundle.write_bundle(
        context.model_dir,
        network=state.model,
        network_name=config.network,
        classes=data.classes,
        config=config,
        positive_index=positive_index(data.classes, config.positive_class),
        eval_metrics=_headline(test or validation),
        lineage=origin,
    )
    metrics_file = write_outputs(
        context.output_dir,
        state=state,
        classes=data.classes,
        validation=validation,
        test=test,
        seconds=seconds,
        extra={"distributed": spread} if spread is not None else None,
    )
    log.info("bundle: %s", bundle_dir)
    log.info("metrics and figures: %s", context.output_dir)
    return JobResult(state.history, state.best_epoch, validation, test, bundle_dir, metrics_file, seconds)


def fit(
    config: TrainConfig,
    data: PreparedData,
    *,
    device: torch.device,
    progress: bool = False,
    world: dist.World | None = None,
    checkpoint_dir: Path | None = None,
    restore_from: Path | None = None,
    resume_from: Path | None = None,
    job: str | None = None,
) -> tuple[TrainState, dict[str, Evaluation]]:
    """The epoch loop: train, validate, print the metric line, keep the best weights, stop on a plateau.

    Args:
        config: the hyperparameters.
        data: the prepared data (this rank's shard of it), or splits of tensors in tests.
        device: where to train.
        progress: show a progress bar per epoch.
        world: the processes training together (training/job/distributed.py); None: this one alone.
        checkpoint_dir: write a checkpoint there after every epoch (rank 0 passes it; None: none).
        restore_from: this job's checkpoint directory: when it holds a checkpoint (a restarted job), go on from the
            newest complete one.
        resume_from: otherwise, a checkpoint (file or directory) to start from; None: a fresh start.
        job: this job's name, checked against the checkpoints' (None locally).

    Returns:
        The final state, its model holding the best weights, and {"validation": outputs of the best weights}.

    Raises:
        CheckpointError: a checkpoint that cannot continue this run.
        Interrupted: SIGTERM arrived during the loop; the last checkpoint stays for the restart.
    """
    world = world or dist.World()
    seed_everything(config.seed)
    compute = Compute.of(config, device, world)
    dtype, memory_format = compute.dtype, compute.memory_format
    model = build_network(config.network, num_classes=len(data.classes)).to(device)
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs omit it
    batch_size = rank_batch_size(config.batch_size, world)
    loader = BatchLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        augment=config.augment,
        seed=config.seed + 1_000_003 * world.rank,  # each rank its own order and augmentation of its own shard
        drop_last=len(data.train) > batch_size,  # a ragged last batch of 1-2 images makes BatchNorm noisy
        device=device,
    )
    steps = dist.all_min(len(loader), world, device)  # every rank the same number of steps: DDP's requirement
    optimizer = make_optimizer(config, model)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, steps_per_epoch=steps),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        trainer=dist.wrap(model, world, device),
    )
    counts = dist.all_sum(torch.bincount(data.train.labels.cpu(), minlength=len(data.classes)).tolist(), world, device)
    weights = class_weights_from_counts(torch.tensor(counts), len(data.classes)) if config.class_weighting else None
    criterion = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    positive = positive_index(data.classes, config.positive_class)
    log.info(
        "classes %s%s; %d training and %d validation images%s; %d steps an epoch",
        ", ".join(data.classes),
        f" (positive: {data.classes[positive]})" if len(data.classes) == 2 else "",
        len(data.train),
        len(data.validation),
        f" on rank 0 of {world.size} (batches of {batch_size} a rank)" if world.active else "",
        steps,
    )
    restored = _restore(config, data.classes, restore_from=restore_from, resume_from=resume_from, job=job)
    if restored is not None:
        state.load_state_dict(restored.state)
        log.info("going on from %s: %d epoch(s) done, continuing at epoch %d", restored.path, state.epoch,
                 state.epoch + 1)
    with checkpoint.stop_on_sigterm():
        _epochs(state, config, data, loader, criterion, compute,
                _Plan(steps=steps, positive=positive, progress=progress, checkpoint_dir=checkpoint_dir, job=job))
    assert state.best_weights is not None
    model.load_state_dict(state.best_weights)
    log.info("best epoch %d: %s", state.best_epoch, format_line(state.history[state.best_epoch - 1]))
    best = evaluate(
        model, data.validation, device=device, dtype=dtype, config=config, num_classes=len(data.classes), world=world
    )
    return state, {"validation": best}


@dataclass(frozen=True)
class _Plan:
    """What fit decided for its epochs: steps an epoch (the same on every rank), the positive class, whether to show
    progress, and where the checkpoints go (None: none) with the job they belong to."""

    steps: int
    positive: int
    progress: bool
    checkpoint_dir: Path | None
    job: str | None


def _epochs(state: TrainState, config: TrainConfig, data: PreparedData, loader: BatchLoader, criterion: nn.Module,
            compute: Compute, plan: _Plan) -> None:
    """The epochs from the state's next one to the last, or to early stopping; a checkpoint after each."""
    model = state.model
    world = compute.world
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.stopped:
            break
        loader.set_epoch(epoch)
        train_loss, images_per_second = train_one_epoch(
            state, loader, criterion, dtype=compute.dtype, memory_format=compute.memory_format,
            progress=plan.progress, epoch=epoch, world=world, steps=plan.steps,
        )
        if config.precise_bn:
            recompute_batchnorm(
                model, data.train, config=config, dtype=compute.dtype, seed=epoch + 1_000_003 * world.rank,
                images=max(1, config.precise_bn // world.size),
            )
            dist.average_buffers(model, world)
        outputs = evaluate(
            model,
            data.validation,
            device=compute.device,
            dtype=compute.dtype,
            config=config,
            num_classes=len(data.classes),
            criterion=criterion,
            world=world,
        )
        scores = evaluation.classification_metrics(
            outputs.probabilities, outputs.labels, threshold=config.threshold, positive=plan.positive
        )
        state.epoch = epoch
        with checkpoint.deferred_sigterm():  # SIGTERM after the metrics line waits for this epoch's checkpoint
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": outputs.loss,
                "val_accuracy": scores["accuracy"],
                "val_auc": scores["auc"],
                "images_per_second": images_per_second,
            }
            if world.rank == 0:
                print(format_line(row), flush=True)
            state.history.append(row)
            improved = state.observe(selection_score(row, epoch), min_delta=config.min_delta)
            if not improved and config.patience and epoch - state.best_epoch >= config.patience:
                log.info(
                    "stopping early: no better validation AUC for %d epochs (best: epoch %d)",
                    config.patience,
                    state.best_epoch,
                )
                state.stopped = True
            if plan.checkpoint_dir is not None:
                written = checkpoint.save(
                    plan.checkpoint_dir, state=state.state_dict(), config=config, classes=data.classes, job=plan.job
                )
                log.info("checkpoint %s", written)


def _restore(
    config: TrainConfig,
    classes: Sequence[str],
    *,
    restore_from: Path | None,
    resume_from: Path | None,
    job: str | None,
) -> checkpoint.Restored | None:
    """This job's newest checkpoint (a restart), else the named one (resume_from), else None (a fresh start)."""
    if restore_from is not None and restore_from.exists():  # absent: the job's first start
        restored = checkpoint.restore(restore_from, config=config, classes=classes, job=job)
        if restored is not None:
            return restored
    if resume_from is not None:
        restored = checkpoint.restore(resume_from, config=config, classes=classes, job=None)
        if restored is None:
            raise CheckpointError(f"resume_from {resume_from} holds no checkpoint (epoch-NNNN.pt files)")
        return restored
    return None


def train_one_epoch(
    state: TrainState,
    loader: BatchLoader,
    criterion: nn.Module,
    *,
    dtype: torch.dtype | None,
    memory_format: torch.memory_format,
    progress: bool,
    epoch: int,
    world: dist.World | None = None,
    steps: int | None = None,
) -> tuple[float, float]:
    """One pass over the training batches (the first `steps` of them: every rank takes as many).

    The hot path holds no host-device synchronization: the loss is summed on the device and read once at the end.

    Returns:
        (mean training loss over all ranks, images per second of all ranks including batch preparation).
    """
    world = world or dist.World()
    model, optimizer, scaler = state.trainer or state.model, state.optimizer, state.scaler
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    images_seen = 0
    started = time.perf_counter()
    batches = itertools.islice(loader, steps if steps is not None else len(loader))
    total = steps if steps is not None else len(loader)
    for images, labels in tqdm(batches, total=total, desc=f"epoch {epoch}", leave=False, disable=not progress):
        images = images.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if state.scheduler is not None:
            state.scheduler.step()
        loss_sum += loss.detach() * labels.shape[0]
        images_seen += labels.shape[0]
    seconds = time.perf_counter() - started
    loss, seen = dist.all_sum([loss_sum.item(), images_seen], world, device)  # the epoch's one synchronization
    rate = dist.all_sum([images_seen / seconds if seconds > 0 else 0.0], world, device)[0]
    return loss / max(seen, 1), rate


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: Split,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    config: TrainConfig,
    num_classes: int,
    criterion: nn.Module | None = None,
    world: dist.World | None = None,
) -> Evaluation:
    """The model's softmax outputs on a split, and the loss (class-weighted as in training when given).

    In a distributed job each rank evaluates its shard and the outputs of all are gathered, in file order: every
    rank returns the whole split's outputs.

    Args:
        model: the network (put in eval mode here).
        split: the images and labels.
        device: where the model is.
        dtype: the autocast type, or None.
        config: batch size and memory format.
        num_classes: the number of classes (the shape of an empty split's outputs).
        criterion: the training loss; None: plain cross-entropy.
        world: the processes of the job; None: this one alone.
    """
    world = world or dist.World()
    model.eval()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    loader = BatchLoader(split, batch_size=2 * config.batch_size, shuffle=False, augment=0.0, seed=0, device=device)
    logits, labels = [], []
    for images, batch_labels in loader:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits.append(model(images.contiguous(memory_format=memory_format)).float())
        labels.append(batch_labels)
    mine = torch.cat(logits).cpu() if logits else torch.zeros(0, num_classes)
    mine_labels = torch.cat(labels).cpu() if labels else torch.zeros(0, dtype=torch.int64)
    all_logits, all_labels = dist.gather_outputs(mine, mine_labels, split.files, world)
    if len(all_labels) == 0:
        return Evaluation(float("nan"), np.zeros((0, num_classes), np.float32), np.zeros(0, np.int64))
    weight = getattr(criterion, "weight", None)
    loss = nn.functional.cross_entropy(all_logits, all_labels, weight=weight.cpu() if weight is not None else None)
    return Evaluation(
        float(loss), torch.softmax(all_logits, dim=1).cpu().numpy(), all_labels.cpu().numpy().astype(np.int64)
    )


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    split: Split,
    *,
    config: TrainConfig,
    dtype: torch.dtype | None,
    seed: int,
    images: int | None = None,
) -> None:
    """Recompute BatchNorm statistics as plain averages over `images` (default `config.precise_bn`) training
    images, unaugmented.

    "Precise BN" (as in pycls and Detectron2): the running averages kept during training mix statistics of
    networks that no longer exist, and a network trained from scratch for a few hundred steps changes fast, so its
    evaluation-mode outputs, and with them the decisions at the threshold, are shifted. Forward passes only.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or len(split) == 0:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    device = next(model.parameters()).device
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    loader = BatchLoader(
        split, batch_size=config.batch_size, shuffle=True, augment=0.0, seed=config.seed + seed, device=device
    )
    model.train()
    seen, limit = 0, images if images is not None else config.precise_bn
    for batch, _ in loader:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(batch.contiguous(memory_format=memory_format))
        seen += batch.shape[0]
        if seen >= limit:
            break
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def selection_score(row: Mapping[str, float], epoch: int) -> float:
    """What "better" means for model selection: validation AUC; where undefined (one class), -loss; else the epoch.

    Whether AUC is defined depends only on the validation labels, so one run never mixes the scales.
    """
    if math.isfinite(row["val_auc"]):
        return row["val_auc"]
    if math.isfinite(row["val_loss"]):
        return -row["val_loss"]
    return float(epoch)  # no validation images: the last epoch is kept


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights N / (C * n_c), so that each class contributes equally to the loss."""
    return class_weights_from_counts(torch.bincount(labels.cpu(), minlength=num_classes), num_classes)


def class_weights_from_counts(counts: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`class_weights` from the class counts (of all ranks' shards, in a distributed job)."""
    counts = counts.clamp(min=1).float()
    return counts.sum() / (num_classes * counts)


def positive_index(classes: Sequence[str], positive_class: str) -> int:
    """The positive class of a two-class problem: the named one; else the class that is not a "normal"-like name;
    else the second one. (Multi-class problems have none; 1 is returned and unused.)

    Raises:
        ValueError: a positive_class that is not a class.
    """
    if positive_class:
        if positive_class not in classes:
            raise ValueError(f"positive_class {positive_class!r} is not a class; the classes are {', '.join(classes)}")
        return list(classes).index(positive_class)
    negatives = [i for i, name in enumerate(classes) if name.strip().lower() in NEGATIVE_NAMES]
    if len(classes) == 2 and len(negatives) == 1:
        return 1 - negatives[0]
    return 1


def data_options(config: TrainConfig, context: JobContext) -> DataOptions:
    """The data layer's options from the hyperparameters and this process's rank."""
    from training.dataset.pseudonym_key import resolve_key  # the key: a file, the job's channel or the local key

    key = resolve_key(context.pseudonym_key_file, from_channel=context.pseudonym_key_from_channel,
                      data_dirs=list(context.channels.values()))
    return DataOptions.from_config(config, pseudonym_key=key, rank=context.rank, world_size=context.world_size)


def print_test_report(report: Mapping[str, Any]) -> None:
    """The test metrics: one line for SageMaker's regexes, then each with its 95% interval for people."""
    metrics = report["metrics"]
    values = {f"test_{name}": _nan(entry["value"]) for name, entry in metrics.items()}
    print(format_line(values), flush=True)
    for name, entry in metrics.items():
        low, high = (_nan(v) for v in entry["ci95"])
        log.info("test %-11s %.4f  (95%% CI %.4f-%.4f, n=%d)", name, _nan(entry["value"]), low, high, report["n"])


def write_outputs(
    output_dir: Path,
    *,
    state: TrainState,
    classes: Sequence[str],
    validation: Mapping[str, Any],
    test: Mapping[str, Any] | None,
    seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """metrics.json, confusion_matrix.csv, learning_curve.png and confusion_matrix.png in the output directory.

    The confusion matrix is the test set's when there is one, else the validation set's.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    shown, split = (test, "test") if test is not None else (validation, "validation")
    metrics_file = output_dir / "metrics.json"
    document = {
        "classes": list(classes),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "history": state.history,
        "validation": validation,
        "test": test,
        "confusion_matrix": {"split": split, "matrix": shown["confusion_matrix"]},
        "seconds": round(seconds, 1),
        **(extra or {}),
    }
    metrics_file.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    rows = [",".join(["true\\predicted", *classes])]
    rows += [
        ",".join([name, *map(str, counts)]) for name, counts in zip(classes, shown["confusion_matrix"], strict=True)
    ]
    (output_dir / "confusion_matrix.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    plots.learning_curve(state.history, output_dir / "learning_curve.png", best_epoch=state.best_epoch)
    plots.confusion_matrix(
        shown["confusion_matrix"], classes, output_dir / "confusion_matrix.png", title=f"{split} (n={shown['n']})"
    )
    return metrics_file


def _prepare_everywhere(config: TrainConfig, context: JobContext, world: dist.World) -> PreparedData:
    """Prepare this rank's shard; in a distributed job, every rank fails when one does (none waits forever)."""
    try:
        data, failure = prepare(context.channels, data_options(config, context), output_dir=context.output_dir), None
        positive_index(data.classes, config.positive_class)
    except (DataError, ValueError) as exc:
        data, failure = None, str(exc)
    failures = [(rank, text) for rank, text in enumerate(dist.gather_objects(failure, world)) if text]
    if failures:
        rank, text = failures[0]
        raise DataError(text if not world.active else f"rank {rank}: {text}")
    assert data is not None
    return data


def _empty_like(split: Split) -> Split:
    """A split with no images (a rank whose test shard is empty still takes part in gathering)."""
    return Split(images=split.images[:0], labels=split.labels[:0], files=[], patients=[])


def _distributed_record(data: PreparedData, world: dist.World) -> dict[str, Any]:
    """How the job was spread: processes, backend and each rank's share of every split."""
    sizes = dist.gather_objects(
        {"train": len(data.train), "validation": len(data.validation), "test": len(data.test or [])}, world
    )
    return {
        "world_size": world.size,
        "backend": world.backend,
        "images_per_rank": {side: [entry[side] for entry in sizes] for side in ("train", "validation", "test")},
    }


def _report_args(config: TrainConfig, classes: Sequence[str], outputs: Evaluation) -> dict[str, Any]:
    return {
        "probabilities": outputs.probabilities,
        "labels": outputs.labels,
        "classes": classes,
        "threshold": config.threshold,
        "positive": positive_index(classes, config.positive_class),
        "samples": config.bootstrap_samples,
        "seed": config.seed,
    }


def _headline(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The metric values of a report, for the bundle's eval_metrics."""
    return {name: entry["value"] for name, entry in report["metrics"].items()}


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)

"""The epoch loop: one pass over the training batches, evaluation on a split, precise BatchNorm statistics, and the
loop over the epochs that prints the metric line, keeps the best weights, stops on a plateau and checkpoints.

training/job/train.py `fit` builds what the loop needs (network, loader, optimizer, loss) and calls `run_epochs`.
What training changes is one object, `TrainState`, which is also what a checkpoint saves (training/job/checkpoint.py);
where and in what form the loop computes (device, autocast type, memory format, world) is one `runtime.Compute`
(training/job/runtime.py).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.dataset.loader import BatchLoader
from training.dataset.split import PreparedData, Split
from training.job import checkpoint, evaluation
from training.job import distributed as dist
from training.job.config import TrainConfig
from training.job.metrics import format_line
from training.job.runtime import Compute, memory_format

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """Training cannot go on: no step of an epoch had a finite loss."""


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
        if state["scaler"]:  # empty from a disabled scaler (before it ran in every precision): keep the fresh one
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_score, self.best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        self.best_weights, self.history = state["best_weights"], list(state["history"])
        self.stopped = bool(state.get("stopped", False))
        checkpoint.set_rng_state(state["rng"])


@dataclass
class Evaluation:
    """A model's outputs on one split: loss, softmax probabilities (N x C), labels (N) and the logits (N x C) the
    probabilities came from (calibration fits its temperature on them)."""

    loss: float
    probabilities: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None = None


@dataclass(frozen=True)
class Plan:
    """What fit decided for its epochs: steps an epoch (the same on every rank), the positive class, whether to show
    progress, and where the checkpoints go (None: none) with the job they belong to."""

    steps: int
    positive: int
    progress: bool
    checkpoint_dir: Path | None
    job: str | None


def run_epochs(
    state: TrainState,
    config: TrainConfig,
    data: PreparedData,
    loader: BatchLoader,
    criterion: nn.Module,
    compute: Compute,
    plan: Plan,
) -> None:
    """The epochs from the state's next one to the last, or to early stopping; a checkpoint after each."""
    model = state.model
    world = compute.world
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.stopped:
            break
        loader.set_epoch(epoch)
        train_loss, images_per_second = train_one_epoch(
            state, loader, criterion, compute, progress=plan.progress, epoch=epoch, steps=plan.steps
        )
        if config.precise_bn:
            recompute_batchnorm(
                model,
                data.train,
                config=config,
                dtype=compute.dtype,
                seed=epoch + 1_000_003 * world.rank,
                images=max(1, config.precise_bn // world.size),
            )
            dist.average_buffers(model, world)
        outputs = evaluate(
            model, data.validation, compute, config=config, num_classes=len(data.classes), criterion=criterion
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


def train_one_epoch(
    state: TrainState,
    loader: BatchLoader,
    criterion: nn.Module,
    compute: Compute,
    *,
    progress: bool,
    epoch: int,
    steps: int | None = None,
) -> tuple[float, float]:
    """One pass over the training batches (the first `steps` of them: every rank takes as many).

    The hot path holds no host-device synchronization: the loss is summed on the device and read once at the end
    (GradScaler's check of the gradients syncs only with an optimizer that is not fused: SGD). A step whose loss is not
    finite is not applied (the scaler skips it), left out of the mean and counted in a warning.

    Raises:
        Diverged: no step of the epoch had a finite loss.

    Returns:
        (mean training loss over all ranks, images per second of all ranks including batch preparation).
    """
    world, device, dtype = compute.world, compute.device, compute.dtype
    model, optimizer, scaler = state.trainer or state.model, state.optimizer, state.scaler
    model.train()
    loss_sum = torch.zeros((), device=device)
    skipped = torch.zeros((), device=device, dtype=torch.long)  # steps whose loss was not finite
    counted = torch.zeros((), device=device, dtype=torch.long)  # the images of the other steps
    images_seen = 0
    started = time.perf_counter()
    batches = itertools.islice(loader, steps if steps is not None else len(loader))
    total = steps if steps is not None else len(loader)
    for images, labels in tqdm(batches, total=total, desc=f"epoch {epoch}", leave=False, disable=not progress):
        images = images.contiguous(memory_format=compute.memory_format)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if state.scheduler is not None:
            state.scheduler.step()
        finite = torch.isfinite(loss.detach())
        loss_sum += torch.where(finite, loss.detach(), 0.0) * labels.shape[0]
        skipped += ~finite
        counted += finite * labels.shape[0]
        images_seen += labels.shape[0]
    seconds = time.perf_counter() - started
    # the epoch's one synchronization
    loss, seen, bad = dist.all_sum([loss_sum.item(), counted.item(), skipped.item()], world, device)
    if bad:  # the scaler did not apply those steps: their gradients are not finite either
        log.warning(
            "epoch %d: %d step(s) whose loss is not finite skipped (if it repeats: a lower learning_rate, "
            "or precision fp32)",
            epoch,
            int(bad),
        )
    if bad and not seen:
        raise Diverged(
            f"epoch {epoch}: the loss of every training step was not finite: training diverges at these "
            "settings; lower learning_rate, or use precision fp32"
        )
    rate = dist.all_sum([images_seen / seconds if seconds > 0 else 0.0], world, device)[0]
    return loss / max(seen, 1), rate


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: Split,
    compute: Compute,
    *,
    config: TrainConfig,
    num_classes: int,
    criterion: nn.Module | None = None,
) -> Evaluation:
    """The model's softmax outputs on a split, and the loss (class-weighted as in training when given).

    In a distributed job each rank evaluates its shard and the outputs of all are gathered, in file order: every
    rank returns the whole split's outputs.

    Args:
        model: the network (put in eval mode here).
        split: the images and labels.
        compute: where the model is (device, autocast type, memory format) and the processes of the job.
        config: the batch size (evaluation batches are twice the training batch).
        num_classes: the number of classes (the shape of an empty split's outputs).
        criterion: the training loss; None: plain cross-entropy.
    """
    device, dtype = compute.device, compute.dtype
    model.eval()
    loader = BatchLoader(split, batch_size=2 * config.batch_size, shuffle=False, augment=0.0, seed=0, device=device)
    logits, labels = [], []
    for images, batch_labels in loader:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits.append(model(images.contiguous(memory_format=compute.memory_format)).float())
        labels.append(batch_labels)
    mine = torch.cat(logits).cpu() if logits else torch.zeros(0, num_classes)
    mine_labels = torch.cat(labels).cpu() if labels else torch.zeros(0, dtype=torch.int64)
    all_logits, all_labels = dist.gather_outputs(mine, mine_labels, split.files, compute.world)
    if len(all_labels) == 0:
        empty = np.zeros((0, num_classes), np.float32)
        return Evaluation(float("nan"), empty, np.zeros(0, np.int64), empty)
    weight = getattr(criterion, "weight", None)
    loss = nn.functional.cross_entropy(all_logits, all_labels, weight=weight.cpu() if weight is not None else None)
    return Evaluation(
        float(loss),
        torch.softmax(all_logits, dim=1).cpu().numpy(),
        all_labels.cpu().numpy().astype(np.int64),
        all_logits.cpu().numpy(),
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
    layout = memory_format(config)
    loader = BatchLoader(
        split, batch_size=config.batch_size, shuffle=True, augment=0.0, seed=config.seed + seed, device=device
    )
    model.train()
    seen, limit = 0, images if images is not None else config.precise_bn
    for batch, _ in loader:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(batch.contiguous(memory_format=layout))
        seen += batch.shape[0]
        if seen >= limit:
            break
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def selection_score(row: Mapping[str, float], epoch: int) -> float:
    """What "better" means for model selection: validation AUC; where undefined (one class), -loss; else the epoch.

    A perfect AUC (1.0, common on a small validation set) can rise no further, while the decisions at the threshold may
    still be wrong: among perfect epochs the lower validation loss is better (1 + 1 / (1 + loss), above every AUC), so
    the job does not keep the first epoch that ranked all validation samples right but classed a fifth wrong.
    Whether AUC is defined depends only on the validation labels, so one run never mixes the scales.
    """
    if math.isfinite(row["val_auc"]):
        if row["val_auc"] >= 1.0 and math.isfinite(row["val_loss"]):
            return 1.0 + 1.0 / (1.0 + row["val_loss"])
        return row["val_auc"]
    if math.isfinite(row["val_loss"]):
        return -row["val_loss"]
    return float(epoch)  # no validation images: the last epoch is kept


def make_criterion(config: TrainConfig, data: PreparedData, compute: Compute) -> nn.Module:
    """The training loss: cross-entropy, weighted by `class_weights` of all ranks' training shards when
    config.class_weighting."""
    world, device, num_classes = compute.world, compute.device, len(data.classes)
    counts = dist.all_sum(torch.bincount(data.train.labels.cpu(), minlength=num_classes).tolist(), world, device)
    weights = class_weights(torch.tensor(counts), num_classes) if config.class_weighting else None
    return nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)


def class_weights(counts: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights N / (C * n_c) from the class counts, so that each class contributes equally to the
    loss."""
    counts = counts.clamp(min=1).float()
    return counts.sum() / (num_classes * counts)

"""Several processes, one job: what torchrun (SageMaker's Torchrun distribution) starts, with no flag to set.

torchrun starts one process per GPU (or one per instance on CPU) and gives each RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; training/job/environment.py reads them. With WORLD_SIZE above 1 the job:

- joins the process group: NCCL between GPUs, gloo on CPUs;
- prepares only its shard of every split (training/dataset/prepare.py: each rank decodes and caches every WORLD_SIZE-th
file); - trains a DistributedDataParallel model; `batch_size` stays the global batch, split evenly over the ranks, and
  every rank takes the same number of steps an epoch (the smallest shard's), so that the optimization is the same
  whatever the number of processes;
- after each epoch, averages the BatchNorm statistics over the ranks (each recomputed them on its own shard) and
  gathers the validation outputs of all shards, so that every rank computes the same metrics and takes the same
  early-stopping decision;
- writes the bundle, metrics, figures and checkpoints on rank 0 only.

With one process every function here is a no-op.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank, local rank, number of processes and the backend (None: one process)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def active(self) -> bool:
        """Whether several processes train together."""
        return self.size > 1


def start(*, rank: int, local_rank: int, world_size: int, device: torch.device, timeout_s: float = 1800) -> World:
    """Join torchrun's process group when there is more than one process.

    Args:
        rank, local_rank, world_size: from the environment torchrun sets (training/job/environment.py).
        device: this process's device: NCCL for CUDA, gloo for the CPU.
        timeout_s: how long a collective may wait for the others (first-epoch decoding included).

    Returns:
        The world.
    """
    if world_size <= 1:
        return World()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("process %d of %d (local rank %d), backend %s", rank, world_size, local_rank, backend)
    return World(rank=rank, local_rank=local_rank, size=world_size, backend=backend)


def stop(world: World) -> None:
    """Leave the process group."""
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The model to train: DistributedDataParallel over the ranks, or the model itself."""
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def gather_objects(value: Any, world: World) -> list[Any]:
    """Every rank's `value`, in rank order (small Python objects: statuses, counts)."""
    if not world.active:
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def all_min(value: int, world: World, device: torch.device) -> int:
    """The smallest `value` over the ranks."""
    if not world.active:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def all_sum(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sums over the ranks."""
    if not world.active:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def average_buffers(model: nn.Module, world: World) -> None:
    """Average the floating-point buffers (BatchNorm statistics) over the ranks, so every rank holds one model."""
    if not world.active:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world.size)


def gather_outputs(
    logits: torch.Tensor, labels: torch.Tensor, files: Sequence[str], world: World
) -> tuple[torch.Tensor, torch.Tensor]:
    """All shards' logits and labels, in the order one process would have them (by file), on every rank.

    Args:
        logits: this rank's N x C logits (CPU).
        labels: its N labels (CPU).
        files: its N file names, the split's order key.
        world: the world.
    """
    if not world.active:
        return logits, labels
    parts = gather_objects((logits.numpy(), labels.numpy(), list(files)), world)
    all_files = [f for _, _, names in parts for f in names]
    order = np.argsort(np.array(all_files, dtype=object), kind="stable")
    all_logits = np.concatenate([p[0] for p in parts])[order]
    all_labels = np.concatenate([p[1] for p in parts])[order]
    return torch.from_numpy(all_logits), torch.from_numpy(all_labels)

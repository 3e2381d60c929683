"""Where and how the job computes: the device, the precision, the optimizer and its schedule, seeds and each rank's
share of a batch (training/job/train.py tells the job's story with them; training/job/loop.py computes in the form
one `Compute` gives)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.job import distributed as dist
from training.job.config import TrainConfig, spatial_dims
from training.job.environment import JobContext


def rank_batch_size(batch_size: int, world: dist.World) -> int:
    """Each rank's share of the global batch (batch_size is the batch of one optimizer step, for any number of
    processes, so that the learning rate means the same).

    Raises:
        ValueError: fewer images than processes in a batch.
    """
    if batch_size < world.size:
        raise ValueError(f"batch_size {batch_size} is smaller than the {world.size} processes; raise batch_size")
    return batch_size // world.size


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum); weight decay on weight matrices and kernels, not on biases and norms.

    AdamW runs fused (one kernel over all parameters, CPU and GPU alike): on a 3-D ResNet18's 33M parameters its step
    took 0.02 s on 2 cores here against 0.07-0.11 s for the default per-tensor loop.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)


def make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, stepped every batch over all configured epochs."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=total)
    return None


def autocast_dtype(precision: str, device: torch.device, spatial_dims: int = 2) -> torch.dtype | None:
    """The autocast type for a precision setting; None means fp32 (no autocast).

    auto: bf16 where the hardware computes it natively (CUDA with bf16; CPUs with AVX512-BF16 or AMX), fp16 on
    older GPUs (with loss scaling), else fp32: emulated bf16 on a CPU without it is slower than fp32. Volumes on the
    CPU: fp32, since PyTorch's CPU bf16 conv3d backward gives non-finite weight gradients (DenseNet121 3-D on the
    first step, ResNet18 3-D within a few epochs, measured here with torch 2.13; tests/training/test_job_loop.py
    shows it), and bf16 asked for there is refused.

    Raises:
        ValueError: bf16 for volumes on the CPU.
    """
    if spatial_dims == 3 and device.type == "cpu" and precision in ("bf16", "auto"):
        if precision == "bf16":
            raise ValueError("precision bf16 trains volumes wrong on the CPU (PyTorch's bf16 conv3d backward gives "
                             "non-finite gradients): give precision auto or fp32 (or train on a GPU)")
        return None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None


def pick_device(context: JobContext) -> torch.device:
    """This process's GPU when there is one (torchrun's LOCAL_RANK picks it), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", context.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (weights initialization; the loaders seed themselves per epoch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); private PyTorch checks, so guarded."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


@dataclass(frozen=True)
class Compute:
    """Where and in what form one process computes: what the epoch loop passes down instead of four arguments.

    Attributes:
        device: this process's GPU, else the CPU (pick_device).
        dtype: the autocast type, None for fp32 (autocast_dtype).
        memory_format: channels_last (channels_last_3d for volumes) or contiguous, for the model and its batches.
        world: the processes training together (training/job/distributed.py).
    """

    device: torch.device
    dtype: torch.dtype | None
    memory_format: torch.memory_format
    world: dist.World

    @classmethod
    def of(cls, config: TrainConfig, device: torch.device, world: dist.World) -> Compute:
        """The settings of `config` (precision, channels_last) on `device`."""
        return cls(
            device=device,
            dtype=autocast_dtype(config.precision, device, spatial_dims(config)),
            world=world,
            memory_format=memory_format(config),
        )


def make_scaler(compute: Compute) -> torch.amp.GradScaler:
    """The gradient scaler, in every precision, so that a step whose gradients are not finite is skipped, not applied
    (it happened in 3-D bf16 on the CPU, rarely, and left every weight NaN); it scales the loss only in fp16: a scale
    of 1 (or another power of 2 after a skip) leaves fp32 and bf16 gradients exactly as they are."""
    return torch.amp.GradScaler(compute.device.type, init_scale=2.0**16 if compute.dtype == torch.float16 else 1.0)


def memory_format(config: TrainConfig) -> torch.memory_format:
    """channels_last for images (N x H x W x C), channels_last_3d for volumes, or contiguous when turned off."""
    if not config.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims(config) == 3 else torch.channels_last

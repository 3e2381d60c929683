"""The 3-D benchmark cases (issue 21 item 7): series as samples, (a) the pipeline a MONAI user writes first against
(b) ours, on the same synthetic CT series (bench/datasets.py `make_volume_set`), with the same network.

(a) `monai.data.Dataset` of series folders, every epoch: LoadImaged(reader="ITKReader", ensure_channel_first=True)
    reads a whole series folder (ITK's GDCM series reader orders the slices by position, whatever the file names),
    ScaleIntensityd, Resized to the grid, RandRotate90d in the slice plane (the MONAI 3-D classification tutorial's
    augmentation), Transposed from ITK's (x, y, z) to our (D, H, W); a torch DataLoader (0 workers, as the 2-D public
    sample on a CPU); the tutorial's step: Adam, cross-entropy, fp32, `loss.item()` every step.
(b) training/dataset/prepare_volumes.py `prepare_volumes` (headers, assembly, decode once into the uint8 cache; its
    cost is reported apart) + BatchLoader (augment_volumes on the cached tensors) + training/job/loop.py
    `train_one_epoch` with the job's optimizer, schedule, class weighting, precision rule (`auto`: fp32 for volumes
    on the CPU, `train_volumes` says why; --volume-precision chooses) and memory format (channels_last_3d), the
    model, loader and state built as train.py's `fit` builds them (its validation each epoch is not part of a rate).

Each case returns JSON-ready figures; rates are in samples (volumes) per second under the 2-D cases' key names.
The time to a validation accuracy with the job's own 3-D `fit` is bench/volume_accuracy.py's.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset
from monai.transforms import Compose, LoadImaged, RandRotate90d, Resized, ScaleIntensityd, Transposed
from torch.utils.data import DataLoader

from bench.measure import Clock, append_rates, rates_summary, rounded
from bench.public_sample import require_itk
from training.dataset.loader import BatchLoader
from training.dataset.prepare_volumes import VolumeOptions, prepare_volumes
from training.dataset.pseudonym_key import KEY_BYTES
from training.dataset.split import PreparedData
from training.job import distributed as dist
from training.job import loop, runtime
from training.job.config import TrainConfig
from training.job.networks import build_network

log = logging.getLogger(__name__)

GRID = (32, 64, 64)  # (D, H, W): both networks fit (DenseNet121 needs 29 an axis) and 2 cores train it in minutes
BATCH_SIZE = 4  # volumes a step: the MONAI 3-D tutorial's order of magnitude (2), doubled for steadier rates
MONAI_LEARNING_RATE = 1e-4  # the MONAI 3-D classification tutorial's Adam
BENCH_KEY = b"bench-volumes".ljust(KEY_BYTES, b"\0")  # synthetic patients: any fixed key; the user's stays untouched


def series_folders(train_dir: str | Path) -> tuple[list[str], list[int], list[str]]:
    """(a)'s file list: each series folder of a 'folders' set (CLASS/series-N/*.dcm), its label index, the classes.

    Args:
        train_dir: a set written by generate_volumes(label_format="folders").

    Returns:
        (series folders, label indices, sorted class names).
    """
    root = Path(train_dir)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    folders, labels = [], []
    for index, name in enumerate(classes):
        for folder in sorted(p for p in (root / name).iterdir() if p.is_dir()):
            folders.append(str(folder))
            labels.append(index)
    return folders, labels, classes


def monai_transforms(grid: Sequence[int], *, seed: int) -> Compose:
    """(a)'s per-item transforms (this module's docstring), seeded so that runs repeat."""
    depth, height, width = (int(v) for v in grid)
    transforms = Compose(
        [
            LoadImaged(keys="image", reader="ITKReader", image_only=True, ensure_channel_first=True),
            ScaleIntensityd(keys="image"),
            Resized(keys="image", spatial_size=(width, height, depth)),  # ITK's axes: x (columns), y (rows), z
            RandRotate90d(keys="image", prob=0.8, spatial_axes=(0, 1)),
            Transposed(keys="image", indices=(0, 3, 2, 1)),  # (1, x, y, z) -> (1, D, H, W), as our cache holds it
        ]
    )
    transforms.set_random_state(seed=seed)
    return transforms


def monai_loader(train_dir: str, grid: Sequence[int], *, batch_size: int, seed: int, workers: int = 0) -> DataLoader:
    """(a)'s DataLoader: every series decoded from its files by ITK, every epoch."""
    require_itk()
    folders, labels, _ = series_folders(train_dir)
    items = [{"image": folder, "label": label} for folder, label in zip(folders, labels, strict=True)]
    dataset = Dataset(data=items, transform=monai_transforms(grid, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=generator)


def loader_volumes_monai(
    *, train_dir: str, epochs: int, grid: Sequence[int] = GRID, batch_size: int = BATCH_SIZE, seed: int = 0
) -> dict[str, Any]:
    """(a) Volumes per second the MONAI pipeline delivers to the training step, no model.

    Args:
        train_dir: a 'folders' volume set.
        epochs: passes over it; the first (ITK's lazy loading) is reported apart.
        grid: (D, H, W) of the batches.
        batch_size: volumes a batch.
        seed: the order and the random rotation.

    Returns:
        {"images_per_second": median of the epochs after the first, "epochs", "volumes", "shape"}.
    """
    loader = monai_loader(train_dir, grid, batch_size=batch_size, seed=seed)
    rates: list[float] = []
    cpu_rates: list[float] = []
    shape: list[int] = []
    for _ in range(epochs):
        clock, volumes = Clock(), 0
        for batch in loader:
            shape = list(batch["image"].shape[1:])
            volumes += int(batch["image"].shape[0])
        append_rates(rates, cpu_rates, volumes, clock)
    return {**rates_summary(rates, cpu_rates), "volumes": len(loader.dataset), "shape": shape}  # type: ignore[arg-type]


def loader_volumes_ours(
    *, train_dir: str, epochs: int, grid: Sequence[int] = GRID, batch_size: int = BATCH_SIZE, seed: int = 0
) -> dict[str, Any]:
    """(b) Volumes per second our BatchLoader delivers (augment_volumes on), no model; and the one-time cost of
    prepare_volumes (listing, headers, assembly, decoding into the cache) that a job pays once.

    Args and returns: as `loader_volumes_monai`, plus "prepare_seconds" and "decode" (prepare_volumes' figures).
    """
    data, prepare_seconds = prepare_volume_set(train_dir, grid, seed=seed)
    loader = _batches(data, batch_size=batch_size, seed=seed)
    rates: list[float] = []
    cpu_rates: list[float] = []
    shape: list[int] = []
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        clock, volumes = Clock(), 0
        for images, _ in loader:
            shape = list(images.shape[1:])
            volumes += int(images.shape[0])
        append_rates(rates, cpu_rates, volumes, clock)
    return {
        **rates_summary(rates, cpu_rates),
        "volumes": len(data.train),
        "shape": shape,
        "prepare_seconds": round(prepare_seconds, 3),
        "decode": data.summary.get("decode", {}),
    }


def train_volumes(
    *,
    pipeline: str,
    train_dir: str,
    network: str,
    epochs: int,
    grid: Sequence[int] = GRID,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    precision: str = "auto",
) -> dict[str, Any]:
    """Training throughput of (a) 'monai' or (b) 'ours' (this module's docstring), with the same network.

    Args:
        pipeline: 'monai' (a) or 'ours' (b).
        train_dir: a 'folders' volume set.
        network: a name build_network knows, built with spatial_dims=3.
        epochs: epochs to run; the first is reported apart.
        grid, batch_size, seed: as `loader_volumes_monai`.
        precision: (b)'s TrainConfig.precision; the job's 'auto' is fp32 for volumes on the CPU (training/job/runtime.py
            autocast_dtype): there, in bf16, DenseNet121 3-D's conv3d gradients were not finite from the first step
            and ResNet18's loss went NaN in its second epoch at 32x64x64. (a) computes in fp32 always.

    Returns:
        {"images_per_second" (volumes), "epochs": per-epoch rates, "losses" (NaN shows a diverged run),
        "losses_finite", "network", "autocast"}; (b) adds
        "prepare_seconds" (apart from the rates) and "threads".

    Raises:
        ValueError: an unknown pipeline.
    """
    if pipeline not in TRAINERS:
        raise ValueError(f"pipeline must be one of {', '.join(TRAINERS)}; got {pipeline!r}")
    torch.manual_seed(seed)
    run_epoch, extra = TRAINERS[pipeline](train_dir, network, epochs, grid, batch_size, seed, precision)
    rates: list[float] = []
    cpu_rates: list[float] = []
    losses: list[float] = []
    for epoch in range(1, epochs + 1):
        clock = Clock()
        loss, volumes = run_epoch(epoch)
        append_rates(rates, cpu_rates, volumes, clock)
        losses.append(loss)
        log.info("(%s) %s: %.2f volumes/s, loss %.4f", pipeline, network, rates[-1], loss)
    finite = all(math.isfinite(loss) for loss in losses)
    return {
        **rates_summary(rates, cpu_rates),
        "losses": rounded(losses),
        "losses_finite": finite,
        "network": network,
        **extra,
    }


EpochRunner = Callable[[int], tuple[float, int]]  # epoch -> (mean loss, volumes trained)


def _monai_trainer(
    train_dir: str, network: str, epochs: int, grid: Sequence[int], batch_size: int, seed: int, precision: str
) -> tuple[EpochRunner, dict[str, Any]]:
    """(a)'s epoch: the MONAI 3-D classification tutorial's step (Adam, cross-entropy, fp32, loss.item() a step)."""
    loader = monai_loader(train_dir, grid, batch_size=batch_size, seed=seed)
    model = build_network(network, num_classes=2, spatial_dims=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=MONAI_LEARNING_RATE)
    loss_function = torch.nn.CrossEntropyLoss()

    def run_epoch(epoch: int) -> tuple[float, int]:
        model.train()
        volumes, total = 0, 0.0
        for batch in loader:
            inputs, labels = batch["image"].as_tensor(), batch["label"]
            optimizer.zero_grad()
            loss = loss_function(model(inputs), labels)
            loss.backward()
            optimizer.step()
            total += loss.item() * int(labels.shape[0])
            volumes += int(labels.shape[0])
        return total / max(volumes, 1), volumes

    return run_epoch, {"autocast": "off (fp32)"}


def _our_trainer(
    train_dir: str, network: str, epochs: int, grid: Sequence[int], batch_size: int, seed: int, precision: str
) -> tuple[EpochRunner, dict[str, Any]]:
    """(b)'s epoch: prepare_volumes once, then loop.train_one_epoch with the state fit would build."""
    # The job's defaults otherwise: its precision rule (fp32 for volumes on the CPU) and channels_last_3d.
    config = TrainConfig(network=network, image_size=tuple(int(v) for v in grid), batch_size=batch_size,
                         epochs=epochs, seed=seed, precision=precision)
    runtime.seed_everything(seed)
    data, prepare_seconds = prepare_volume_set(train_dir, grid, seed=seed)
    device = torch.device("cpu")
    compute = runtime.Compute.of(config, device, dist.World())
    model = build_network(network, num_classes=len(data.classes), spatial_dims=3)
    model = model.to(memory_format=compute.memory_format)  # type: ignore[call-overload]  # torch's stubs omit it
    loader = _batches(data, batch_size=batch_size, seed=seed, augment=config.augment)
    optimizer = runtime.make_optimizer(config, model)
    state = loop.TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=runtime.make_scheduler(config, optimizer, steps_per_epoch=len(loader)),
        scaler=runtime.make_scaler(compute),
    )
    criterion = loop.make_criterion(config, data, compute)
    volumes = len(loader) * batch_size if loader.drop_last else len(data.train)

    def run_epoch(epoch: int) -> tuple[float, int]:
        loader.set_epoch(epoch)
        loss, _ = loop.train_one_epoch(state, loader, criterion, compute, progress=False, epoch=epoch)
        return loss, volumes

    dtype = compute.dtype
    return run_epoch, {
        "prepare_seconds": round(prepare_seconds, 3),
        "autocast": str(dtype).replace("torch.", "") if dtype is not None else "off (fp32)",
        "threads": torch.get_num_threads(),
        "memory_format": str(compute.memory_format).replace("torch.", ""),
    }


TRAINERS = {"monai": _monai_trainer, "ours": _our_trainer}


def prepare_volume_set(train_dir: str, grid: Sequence[int], *, seed: int) -> tuple[PreparedData, float]:
    """prepare_volumes of the whole set as the train split (val_fraction 0), timed."""
    options = VolumeOptions(
        image_size=tuple(int(v) for v in grid), val_fraction=0.0, seed=seed, pseudonym_key=BENCH_KEY
    )
    clock = Clock()
    data = prepare_volumes({"train": train_dir}, options)
    return data, clock.read()[0]


def _batches(data: PreparedData, *, batch_size: int, seed: int, augment: float | None = None) -> BatchLoader:
    """The training loader as train.py's _train_loader builds it (augmentation at the job's default strength)."""
    return BatchLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        augment=TrainConfig().augment if augment is None else augment,
        seed=seed,
        drop_last=len(data.train) > batch_size,
    )


CASES: dict[str, Callable[..., dict[str, Any]]] = {
    "loader_volumes_monai": loader_volumes_monai,
    "loader_volumes_ours": loader_volumes_ours,
    "train_volumes_monai": functools.partial(train_volumes, pipeline="monai"),
    "train_volumes_ours": functools.partial(train_volumes, pipeline="ours"),
}

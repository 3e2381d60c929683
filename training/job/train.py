"""Train a MONAI classifier on DICOM images: the job SageMaker runs, and the same job locally.

    python -m training --train DIR [--validation DIR] [--test DIR] --model-dir DIR --output-dir DIR [--epochs N]

Every hyperparameter is a flag of its field's name in training/job/config.py (`--learning_rate 3e-4`). Under SageMaker
the paths and hyperparameters come from the training contract (training/job/environment.py) instead.

Top to bottom (main -> run -> fit): read the configuration, prepare the data (training/dataset/prepare.py decodes every
image once into a cache), build the network and optimizer, then per epoch train, validate, print one metric line, keep
the best weights by validation AUC and stop on a plateau; finally evaluate the test channel once with the best weights
(bootstrap 95% intervals), and write the MONAI bundle (model directory) and the metrics and figures (output directory).

This module tells that story; the rest lives beside it in training/job/: the epoch loop, evaluation on a split and
precise BatchNorm in loop.py, device, precision, optimizer and schedule in runtime.py, the metrics and the positive
class in evaluation.py, the end-of-job reports in reports.py, the bundle in bundle_writer.py (its layout and how it is
read back as data: bundle.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.dataset.loader import BatchLoader
from training.dataset.prepare import DataError, DataOptions, prepare
from training.dataset.split import PreparedData, Split
from training.job import assessment, bundle_writer, checkpoint, environment, lineage, loop, reports
from training.job import config as config_module
from training.job import distributed as dist
from training.job.checkpoint import CheckpointError, Interrupted
from training.job.config import TrainConfig, spatial_dims
from training.job.environment import JobContext
from training.job.evaluation import positive_index
from training.job.metrics import format_line
from training.job.networks import build_network
from training.job.runtime import (
    Compute,
    autocast_dtype,
    make_optimizer,
    make_scaler,
    make_scheduler,
    pick_device,
    rank_batch_size,
    seed_everything,
)

log = logging.getLogger(__name__)


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
        parser.error(
            f"unknown arguments {' '.join(rejected)}: hyperparameters are the fields of training/job/config.py"
        )
    if ignored:
        log.info("ignoring SageMaker's own arguments: %s", " ".join(ignored))
    try:
        context = environment.read_context(namespace, environ, interactive=sys.stdout.isatty())
        config = config_module.from_arguments(namespace, context.hyperparameters)
        rank_batch_size(config.batch_size, dist.World(size=context.world_size))
        autocast_dtype(config.precision, pick_device(context), spatial_dims(config))  # a precision the device lacks
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run(config, context)
    except (DataError, CheckpointError, loop.Diverged) as exc:
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
    compute = Compute.of(config, device, world)
    log.info(
        "device %s, autocast %s, %d threads, network %s%s at %s",
        device,
        compute.dtype or "off (fp32)",
        torch.get_num_threads(),
        config.network,
        " (3-D)" if spatial_dims(config) == 3 else "",
        "x".join(str(v) for v in config.image_size),
    )
    s3 = lineage.read_dataset_manifest(context.manifest)  # read first: a bad record fails now, not after training
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
    test_outputs, test_groups = _test_outputs(config, data, state.model, compute)  # collectives: every rank
    spread = _distributed_record(data, world) if world.active else None
    judged = assessment.assess(config, data.classes, result["validation"], test_outputs, test_groups,
                               _subgroups_of(data.validation, world))
    validation, test = judged.validation, judged.test
    if test is not None and world.rank == 0:
        reports.print_test_report(test, judged)
    seconds = time.perf_counter() - started
    if world.rank > 0:
        return JobResult(state.history, state.best_epoch, validation, test, None, None, seconds)
    origin = lineage.job_lineage(config=config, context=context, data=lineage.data_lineage(data.summary, s3))
    origin["data"]["sources"] = lineage.source_digests(data.summary, context.channels)
    if spread is not None:
        origin["distributed"] = spread
    bundle_dir = bundle_writer.write_bundle(
        context.model_dir,
        network=state.model,
        network_name=config.network,
        classes=data.classes,
        config=config,
        positive_index=positive_index(data.classes, config.positive_class),
        eval_metrics=reports.headline(test or validation),
        lineage=origin,
        judged=judged,
    )
    metrics_file = reports.write_outputs(
        context.output_dir,
        state=state,
        classes=data.classes,
        judged=judged,
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
) -> tuple[loop.TrainState, dict[str, loop.Evaluation]]:
    """Set up the training (network, loader, optimizer, schedule, loss; a checkpoint to go on from) and run the epoch
    loop (training/job/loop.py): train, validate, print the metric line, keep the best weights, stop on a plateau.

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
    model = build_network(config.network, num_classes=len(data.classes), spatial_dims=spatial_dims(config)).to(device)
    model = model.to(memory_format=compute.memory_format)  # type: ignore[call-overload]  # torch's stubs omit it
    loader = _train_loader(config, data.train, compute)
    steps = dist.all_min(len(loader), world, device)  # every rank the same number of steps: DDP's requirement
    optimizer = make_optimizer(config, model)
    state = loop.TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, steps_per_epoch=steps),
        scaler=make_scaler(compute),
        trainer=dist.wrap(model, world, device),
    )
    criterion = loop.make_criterion(config, data, compute)
    positive = positive_index(data.classes, config.positive_class)
    log.info(
        "classes %s%s; %d training and %d validation %s%s; %d steps an epoch",
        ", ".join(data.classes),
        f" (positive: {data.classes[positive]})" if len(data.classes) == 2 else "",
        len(data.train),
        len(data.validation),
        "series" if spatial_dims(config) == 3 else "images",
        f" on rank 0 of {world.size} (batches of {loader.batch_size} a rank)" if world.active else "",
        steps,
    )
    restored = _restore(config, data.classes, restore_from=restore_from, resume_from=resume_from, job=job)
    if restored is not None:
        state.load_state_dict(restored.state)
        log.info(
            "going on from %s: %d epoch(s) done, continuing at epoch %d", restored.path, state.epoch, state.epoch + 1
        )
    with checkpoint.stop_on_sigterm():
        loop.run_epochs(
            state,
            config,
            data,
            loader,
            criterion,
            compute,
            loop.Plan(steps=steps, positive=positive, progress=progress, checkpoint_dir=checkpoint_dir, job=job),
        )
    assert state.best_weights is not None
    model.load_state_dict(state.best_weights)
    log.info("best epoch %d: %s", state.best_epoch, format_line(state.history[state.best_epoch - 1]))
    best = loop.evaluate(model, data.validation, compute, config=config, num_classes=len(data.classes))
    return state, {"validation": best}


def _train_loader(config: TrainConfig, train: Split, compute: Compute) -> BatchLoader:
    """This rank's training batches: its share of the global batch, its own order and augmentation of its shard."""
    world = compute.world
    batch_size = rank_batch_size(config.batch_size, world)
    return BatchLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        augment=config.augment,
        seed=config.seed + 1_000_003 * world.rank,  # each rank its own order and augmentation of its own shard
        drop_last=len(train) > batch_size,  # a ragged last batch of 1-2 images makes BatchNorm noisy
        device=compute.device,
    )


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


def data_options(config: TrainConfig, context: JobContext) -> DataOptions:
    """The data layer's options from the hyperparameters and this process's rank: VolumeOptions for volumes."""
    from training.dataset.pseudonym_key import resolve_key  # the key: a file, the job's channel or the local key

    key = resolve_key(
        context.pseudonym_key_file,
        from_channel=context.pseudonym_key_from_channel,
        data_dirs=list(context.channels.values()),
    )
    options = DataOptions
    if spatial_dims(config) == 3:
        from training.dataset.prepare_volumes import VolumeOptions  # MONAI's transforms: 4 s to import, 3-D only

        options = VolumeOptions
    return options.from_config(config, pseudonym_key=key, rank=context.rank, world_size=context.world_size)


def _prepare_everywhere(config: TrainConfig, context: JobContext, world: dist.World) -> PreparedData:
    """Prepare this rank's shard; in a distributed job, every rank fails when one does (none waits forever)."""
    try:
        data, failure = (
            _reader(config)(context.channels, data_options(config, context), output_dir=context.output_dir),
            None,
        )
        positive_index(data.classes, config.positive_class)
        _check_operating_point(config, data)
    except (DataError, ValueError) as exc:
        data, failure = None, str(exc)
    failures = [(rank, text) for rank, text in enumerate(dist.gather_objects(failure, world)) if text]
    if failures:
        rank, text = failures[0]
        raise DataError(text if not world.active else f"rank {rank}: {text}")
    assert data is not None
    return data


def _check_operating_point(config: TrainConfig, data: PreparedData) -> None:
    """A target sensitivity or specificity needs two classes and validation images of both (checked before training).
    """
    target = "target_sensitivity" if config.target_sensitivity else "target_specificity"
    if not getattr(config, target):
        return
    if len(data.classes) != 2:
        raise DataError(f"{target} chooses a two-class threshold; the data has {len(data.classes)} classes: unset it")
    counts = data.summary.get("class_counts", {}).get("validation") or {}  # the whole split's, not this shard's
    present = sum(1 for n in counts.values() if n) if counts else len(set(data.validation.labels.tolist()))
    if present < 2:
        raise DataError(f"{target} is chosen on the validation set, which needs images of both classes: give a "
                        "validation channel or a larger val_fraction")


def _reader(config: TrainConfig) -> Any:
    """The data layer of the mode: prepare (one image a file) or prepare_volumes (series), imported when used."""
    if spatial_dims(config) == 2:
        return prepare
    from training.dataset.prepare_volumes import prepare_volumes

    return prepare_volumes


def _test_outputs(
    config: TrainConfig, data: PreparedData, model: nn.Module, compute: Compute
) -> tuple[loop.Evaluation | None, list[tuple[str, ...]] | None]:
    """The best weights' outputs on the whole test channel and its samples' subgroup values (gathered from every
    rank, in file order), or (None, None) without test images on any rank."""
    if not any(dist.gather_objects(data.test is not None and len(data.test) > 0, compute.world)):
        return None, None
    test_split = data.test if data.test is not None else _empty_like(data.validation)
    outputs = loop.evaluate(model, test_split, compute, config=config, num_classes=len(data.classes))
    return outputs, _subgroups_of(test_split, compute.world)


def _subgroups_of(split: Split, world: dist.World) -> list[tuple[str, ...]] | None:
    """A split's subgroup values of every rank, in file order (as loop.evaluate gathers its outputs); None when the
    data layer read none (a collective in a distributed job)."""
    values = split.subgroups if len(split.subgroups) == len(split.files) else [() for _ in split.files]
    pairs = list(zip(split.files, values, strict=True))
    if world.active:  # the order dist.gather_outputs gives the outputs: all ranks' files, stably sorted
        pairs = sorted((pair for part in dist.gather_objects(pairs, world) for pair in part), key=lambda p: p[0])
    groups = [group for _, group in pairs]
    return groups if any(groups) else None


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
        "images_per_rank": {side: [entry[side] for entry in sizes] for side in environment.DATA_CHANNELS},
    }



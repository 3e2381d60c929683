"""The training job's data layer: find, validate, split, decode once and cache the DICOM images of the channels.

`prepare(channels, options)` does everything before the first training step:

1. Lists each channel (training/dataset/labels.py: DICOM files at any depth, one label format per channel).
2. Checks the labels: 2+ classes in train (sorted class names; a label's index is its position); validation and
   test labels must be among them.
3. Reads every labeled file's header (every rank reads all of them: the split must come out the same on each).
4. Groups images by patient and splits train/validation by group, so no patient is on both sides, then deals each
   side out to the ranks (training/dataset/split.py: the grouping key, its fallbacks when PatientID is blank or
   shared, `val_fraction`, the shards). Given validation and test channels are used as they are; a patient in two
   channels is an error whatever `on_bad_file` says.
5. Decodes this rank's shard once (training/dataset/dicom.py rules; a small process pool, training/dataset/cache.py)
   into a uint8 cache at the training resolution: in memory within `cache_memory_mb`, else a memmap in `cache_dir`.
   Nothing reads a DICOM file after `prepare` returns.
6. Bad files (missing, truncated, not DICOM, no pixel data, undecodable, unknown label): with
   on_bad_file='fail' one DataError lists them all with their reasons; with 'skip' each is logged, the rest is
   used, and `bad_files.json` is written to `output_dir` (rank r > 0 writes `bad_files-rank{r}.json`).

Multi-process training: with (rank, world_size), each rank decodes and returns only its shard of each side
(training/dataset/split.py); shard sizes differ by at most one, more where 'skip' drops files of one shard. Metrics
computed per shard can be summed across ranks; a distributed loop must cope with ranks having different numbers of
batches (for example by using the smallest count, obtained with an all-reduce).

Privacy: files are named by their path inside the channel, patients by a keyed pseudonym (`patient_hash` in
training/dataset/split.py: HMAC-SHA256 with a secret 32-byte key, training/dataset/pseudonym_key.py). PatientID and
PatientName never reach a log, an error, the data's summary or bad_files.json, and without the key nobody can hash
guessed IDs to find a patient. The key (`DataOptions.pseudonym_key`; None: the local key of the user's
configuration folder) is never written out; the same key gives the same pseudonyms in `python -m training.check` and
in training runs.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from training.dataset.cache import allocate, decode_into, read_headers
from training.dataset.dicom import DICOMDIR_SOP_CLASS
from training.dataset.labels import ChannelListing, DataError, list_channel
from training.dataset.pseudonym_key import KEY_BYTES, local_key
from training.dataset.split import PreparedData, Record, Split, assign, in_shard_order
from training.job.config import TrainConfig, check_data_fields
from training.job.environment import DATA_CHANNELS

__all__ = ["DataError", "DataOptions", "prepare"]  # DataError (training/dataset/labels.py): what prepare raises

log = logging.getLogger(__name__)

BAD_FILES_JSON = "bad_files.json"


@dataclass(frozen=True)
class DataOptions:
    """How the data is read, checked, split and cached: the data fields of the job's hyperparameters, with their
    defaults and rules taken from TrainConfig (training/job/config.py explains each), and this process's place.

    Attributes:
        image_size, on_bad_file, window, val_fraction, seed, cache_memory_mb, workers: as TrainConfig's.
        cache_dir: TrainConfig.cache_dir as a path; None (TrainConfig's ""): the system's temporary directory.
        label_attribute: TrainConfig.label_attribute; None (TrainConfig's ""): a Ground Truth output manifest's only
            attribute.
        pseudonym_key: the secret key (KEY_BYTES bytes) of the patient pseudonyms; None: the local key
            (training/dataset/pseudonym_key.py). Never written out.
        rank: this process's rank in a multi-process job.
        world_size: the number of processes; each decodes and caches only its shard.
    """

    image_size: tuple[int, ...] = TrainConfig.image_size  # two values; three only in VolumeOptions (prepare_volumes)
    on_bad_file: str = TrainConfig.on_bad_file
    window: tuple[float, float] | None = TrainConfig.window
    val_fraction: float = TrainConfig.val_fraction
    seed: int = TrainConfig.seed
    pseudonym_key: bytes | None = field(default=None, repr=False)
    cache_memory_mb: int = TrainConfig.cache_memory_mb
    cache_dir: Path | None = None
    workers: int = TrainConfig.workers
    rank: int = 0
    world_size: int = 1
    label_attribute: str | None = None

    reads_volumes: ClassVar[bool] = False  # True in VolumeOptions (training/dataset/prepare_volumes.py)

    def __post_init__(self) -> None:
        check_data_fields(self, volumes=self.reads_volumes)
        if self.pseudonym_key is not None and len(self.pseudonym_key) != KEY_BYTES:
            raise ValueError(f"pseudonym_key must be {KEY_BYTES} bytes (training/dataset/pseudonym_key.py)")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank={self.rank}, world_size={self.world_size}")

    @classmethod
    def from_config(
        cls, config: TrainConfig, *, pseudonym_key: bytes | None = None, rank: int = 0, world_size: int = 1
    ) -> DataOptions:
        """The options of a training job: its hyperparameters' data fields, its key and this process's rank.

        Args:
            config: the job's hyperparameters.
            pseudonym_key: the 32-byte key; None: the local key.
            rank: this process's rank.
            world_size: the number of processes.
        """
        return cls(
            image_size=config.image_size,
            on_bad_file=config.on_bad_file,
            window=config.window,
            val_fraction=config.val_fraction,
            seed=config.seed,
            pseudonym_key=pseudonym_key,
            cache_memory_mb=config.cache_memory_mb,
            cache_dir=Path(config.cache_dir) if config.cache_dir else None,
            workers=config.workers,
            rank=rank,
            world_size=world_size,
            label_attribute=config.label_attribute or None,
        )


def prepare(
    channels: Mapping[str, str | Path], options: DataOptions, *, output_dir: str | Path | None = None
) -> PreparedData:
    """Find, validate, split, decode and cache the data (the steps are in this module's docstring).

    Args:
        channels: SageMaker channel name -> directory; 'train' required, 'validation' and 'test' optional.
        options: the data options.
        output_dir: where bad_files.json goes (the job's output data directory); None writes nothing.

    Returns:
        The prepared data for this rank.

    Raises:
        DataError: a dataset-level problem (no labels, two label formats, fewer than 2 classes, a patient in two
            channels, nothing left to train on), or bad files with on_bad_file='fail' (one error listing them all).
    """
    listings, classes, bad = _list_channels(channels, options.label_attribute)
    records = [
        Record(name, item, listing.root / item.file) for name, listing in listings.items() for item in listing.items
    ]
    records = drop_unknown_labels(records, classes, bad)
    records = _read_headers(records, options.workers, bad)
    key = options.pseudonym_key
    if key is None:
        key = local_key(data_dirs=[Path(d) for d in channels.values()])
    split_key = assign(
        records,
        key,
        val_fraction=options.val_fraction,
        seed=options.seed,
        has_validation="validation" in listings,
        world_size=options.world_size,
    )
    mine = [r for side in DATA_CHANNELS for r in in_shard_order(records, side) if r.owner == options.rank]
    buffer, decode_stats, decoded = _decode(mine, options)
    bad.extend(
        {"channel": r.channel, "file": r.file, "reason": reason}
        for r, reason in zip(mine, decoded, strict=True)
        if reason is not None
    )
    if bad:
        write_bad_files(bad, output_dir, options.rank)
        if options.on_bad_file == "fail":
            raise DataError(bad_report(bad), bad)
        for entry in bad:
            log.warning("skipping [%s] %s: %s", entry["channel"], entry["file"], entry["reason"])
    kept = [r for r, reason in zip(mine, decoded, strict=True) if reason is None]
    images = compact(buffer.array, [reason is None for reason in decoded])
    splits = make_splits(kept, images, classes)
    if len(splits["train"]) == 0:
        raise DataError(
            f"no training image is left for rank {options.rank} of {options.world_size} after removing the bad "
            "files; fix them or add images"
        )
    failed = {(e["channel"], e["file"]) for e in bad}
    summary = _summary(listings, records, classes, options, split_key, bad, failed, decode_stats, buffer.location)
    log_plan(summary)
    return PreparedData(
        classes=classes,
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"] if "test" in listings else None,
        summary=summary,
        bad_files=bad,
    )


def _list_channels(
    channels: Mapping[str, str | Path], label_attribute: str | None
) -> tuple[dict[str, ChannelListing], list[str], list[dict[str, str]]]:
    """Steps 1 and 2: each channel's labeled files, the train classes (2 or more) and the bad label entries."""
    unknown = sorted(set(channels) - set(DATA_CHANNELS))
    if unknown or "train" not in channels:
        raise DataError(
            f"channels must include 'train' and may include 'validation' and 'test'; got {sorted(channels)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    listings = {
        name: list_channel(name, Path(channels[name]), label_attribute=label_attribute)
        for name in DATA_CHANNELS
        if name in channels
    }
    bad: list[dict[str, str]] = [entry for listing in listings.values() for entry in listing.bad]
    for listing in listings.values():
        _log_listing(listing)
    classes = sorted({item.label for item in listings["train"].items})
    if len(classes) < 2:
        raise DataError(
            f"channel 'train' has {len(classes)} class(es) ({', '.join(classes) or 'none'}); single-label "
            "classification needs images of at least 2 classes"
        )
    return listings, classes, bad


def drop_unknown_labels(records: list[Record], classes: list[str], bad: list[dict[str, str]]) -> list[Record]:
    """Validation and test labels must be train classes."""
    known = set(classes)
    keep = []
    for record in records:
        if record.label in known:
            keep.append(record)
        else:
            bad.append(
                {
                    "channel": record.channel,
                    "file": record.file,
                    "reason": f"label '{record.label}' is not a class of the train channel ({', '.join(classes)})",
                }
            )
    return keep


def _read_headers(records: list[Record], workers: int, bad: list[dict[str, str]]) -> list[Record]:
    """Read every header; files whose header fails, or that are DICOMDIR indexes, are bad."""
    headers, reasons, stats = read_headers([(str(r.path), r.file) for r in records], workers)
    log.info("read %d headers in %.1f s (%d process(es))", stats.files, stats.seconds, stats.workers)
    keep = []
    for record, header, reason in zip(records, headers, reasons, strict=True):
        if header is not None and header.sop_class_uid == DICOMDIR_SOP_CLASS:
            reason = "a DICOMDIR index, not an image"
        if header is None or reason is not None:
            bad.append({"channel": record.channel, "file": record.file, "reason": reason or "unreadable header"})
            continue
        record.header = header
        keep.append(record)
    return keep


def _decode(mine: list[Record], options: DataOptions) -> tuple[Any, Any, list[str | None]]:
    """Decode this rank's files into the cache."""
    size = (int(options.image_size[0]), int(options.image_size[1]))
    buffer = allocate(len(mine), size, budget_bytes=options.cache_memory_mb * 2**20, cache_dir=options.cache_dir)
    window = (float(options.window[0]), float(options.window[1])) if options.window is not None else None
    jobs = [(str(r.path), r.file, size, window) for r in mine]
    reasons, stats = decode_into(
        buffer.array,
        jobs,
        options.workers,
        progress=lambda done, total: log.info("decoded %d of %d files", done, total),
    )
    log.info(
        "decoded %d files in %.1f s (%.0f files/s, %d process(es)) into a %s cache of %.1f MiB",
        stats.files,
        stats.seconds,
        stats.files_per_second,
        stats.workers,
        buffer.location,
        buffer.array.nbytes / 2**20,
    )
    return buffer, stats, reasons


def compact(array: np.ndarray, keep: list[bool]) -> np.ndarray:
    """Move the kept rows to the front (in order) and return that part."""
    target = 0
    for row, wanted in enumerate(keep):
        if wanted:
            if row != target:
                array[target] = array[row]
            target += 1
    return array[:target]


def make_splits(kept: list[Record], images: np.ndarray, classes: list[str]) -> dict[str, Split]:
    """Views of the cache per side (the cache is ordered train, validation, test)."""
    tensor = torch.from_numpy(images)
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    start = 0
    for side in DATA_CHANNELS:
        part = [r for r in kept if r.side == side]
        end = start + len(part)
        splits[side] = Split(
            images=tensor[start:end],
            labels=torch.tensor([index[r.label] for r in part], dtype=torch.int64),
            files=[r.file for r in part],
            patients=[r.patient for r in part],
            subgroups=[r.header.subgroups if r.header is not None else () for r in part],
        )
        start = end
    return splits


def _summary(
    listings: dict[str, ChannelListing],
    records: list[Record],
    classes: list[str],
    options: DataOptions,
    split_key: dict[str, Any],
    bad: list[dict[str, str]],
    failed: set[tuple[str, str]],
    stats: Any,
    location: str,
) -> dict[str, Any]:
    """The JSON-serializable lineage of the prepared data."""
    used = [r for r in records if (r.channel, r.file) not in failed]
    counts = {
        side: {name: sum(1 for r in used if r.side == side and r.label == name) for name in classes}
        for side in DATA_CHANNELS
    }
    patients = {side: len({r.patient for r in used if r.side == side}) for side in DATA_CHANNELS}
    settings = asdict(options)
    settings.pop("pseudonym_key", None)  # the secret is never written out
    settings["cache_dir"] = str(options.cache_dir) if options.cache_dir is not None else None
    return {
        "version": 1,
        "classes": classes,
        "channels": {
            name: {
                "label_format": listing.label_format,
                "label_source": listing.label_source,
                "labeled_files": len(listing.items),
                "skipped": listing.skipped,
            }
            for name, listing in listings.items()
        },
        **split_key,
        "class_counts": counts,
        "patients": patients,
        "files": [
            {
                "channel": r.channel,
                "file": r.file,
                "label": r.label,
                "patient": r.patient,
                "split": r.side,
                "rank": r.owner,
            }
            for r in sorted(used, key=lambda r: (r.channel, r.file))
        ],
        "bad_files": bad,
        "options": settings,
        "decode": {
            "files": stats.files,
            "seconds": round(stats.seconds, 3),
            "files_per_second": round(stats.files_per_second, 1),
            "processes": stats.workers,
        },
        "cache": {"location": location, "dtype": "uint8", "image_size": list(options.image_size)},
        "rank": options.rank,
        "world_size": options.world_size,
    }


def bad_report(bad: list[dict[str, str]]) -> str:
    """The one error that lists every bad file."""
    lines = [f"  [{e['channel']}] {e['file']}: {e['reason']}" for e in bad]
    return (
        f"{len(bad)} bad file(s) in the data (on_bad_file='fail'):\n"
        + "\n".join(lines)
        + "\nFix or remove them, or set on_bad_file='skip' to train on the rest."
    )


def write_bad_files(bad: list[dict[str, str]], output_dir: str | Path | None, rank: int) -> None:
    """bad_files.json in the output directory (one file a rank)."""
    if output_dir is None:
        return
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    name = BAD_FILES_JSON if rank == 0 else f"bad_files-rank{rank}.json"
    (directory / name).write_text(json.dumps(bad, indent=2) + "\n", encoding="utf-8")
    log.info("listed %d bad file(s) in %s", len(bad), directory / name)


def _log_listing(listing: ChannelListing) -> None:
    """One line for the channel and one per kind of skipped file."""
    log.info(
        "channel '%s': %d labeled DICOM file(s), labels from %s (%s)",
        listing.channel,
        len(listing.items),
        listing.label_source,
        listing.label_format,
    )
    by_reason: dict[str, list[str]] = defaultdict(list)
    for entry in listing.skipped:
        by_reason[entry["reason"]].append(entry["file"])
    for reason, files in sorted(by_reason.items()):
        examples = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        log.info("channel '%s': skipped %d file(s), %s: %s", listing.channel, len(files), reason, examples)


def log_plan(summary: dict[str, Any]) -> None:
    """The split in one line per side, and a warning for a class left without training images (or series)."""
    volumes = summary.get("kind") == "volumes"
    for side in DATA_CHANNELS:
        counts = summary["class_counts"][side]
        if sum(counts.values()):
            detail = ", ".join(f"{name} {count}" for name, count in counts.items())
            log.info("%s: %d %s of %d patient(s) (%s)", side, sum(counts.values()),
                     "series" if volumes else "image(s)", summary["patients"][side], detail)
    empty = [name for name, count in summary["class_counts"]["train"].items() if count == 0]
    if empty:
        log.warning("no training %s of class(es) %s is left: the model cannot learn them",
                    "series" if volumes else "image", ", ".join(empty))

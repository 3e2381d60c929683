"""The training job's data layer: find, validate, split, decode once and cache the DICOM images of the channels.

`prepare(channels, options)` does everything before the first training step:

1. Lists each channel (training/dataset/labels.py: DICOM files at any depth, one label format per channel).
2. Checks the labels: 2+ classes in train (sorted class names; a label's index is its position); validation and
   test labels must be among them.
3. Reads every labeled file's header (every rank reads all of them: the split must come out the same on each).
4. Groups images by patient and splits train/validation by group, so no patient is on both sides. The key is the
   labels.csv patient_id column, else PatientID. Where a file's PatientID is blank, or one value is shared by all
   files (as some de-identification leaves it), the file is grouped by StudyInstanceUID, and where that is blank or
   shared too, by the file itself; the manifest and the log say so (`split_key`, `split_key_counts`). Without a
   validation channel the split takes about `val_fraction` of each class's images (groups are assigned by their
   majority class, in a seeded random order). Given validation and test channels are used as they are; a patient
   in two channels is an error whatever `on_bad_file` says.
5. Decodes this rank's shard once (training/dataset/dicom.py rules; a small process pool, training/dataset/cache.py)
   into a uint8 cache at the training resolution: in memory within `cache_memory_mb`, else a memmap in `cache_dir`.
   Nothing reads a DICOM file after `prepare` returns.
6. Bad files (missing, truncated, not DICOM, no pixel data, undecodable, unknown label): with
   on_bad_file='fail' one DataError lists them all with their reasons; with 'skip' each is logged, the rest is
   used, and `bad_files.json` is written to `output_dir` (rank r > 0 writes `bad_files-rank{r}.json`).

Multi-process training: with (rank, world_size), each side (train, validation, test) is sorted by file path and
rank r keeps every world_size-th image starting at r: the shards are disjoint and together cover the side, and
their sizes differ by at most one (more where 'skip' drops files of one shard). Metrics computed per shard can be
summed across ranks; a distributed loop must cope with ranks having different numbers of batches (for example
by using the smallest count, obtained with an all-reduce).

Privacy: files are named by their path inside the channel, patients by a keyed pseudonym (`patient_hash`:
HMAC-SHA256 with a secret 32-byte key, training/dataset/pseudonym_key.py). PatientID and PatientName never reach a log,
an error, the manifest or bad_files.json, and without the key nobody can hash guessed IDs to find a patient. The
key (`DataOptions.pseudonym_key`; None: the local key of the user's configuration folder) is never written out;
the same key gives the same pseudonyms in `python -m training.check` and in training runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.dataset.cache import allocate, decode_into, read_headers
from training.dataset.dicom import DICOMDIR_SOP_CLASS, DicomHeader
from training.dataset.labels import LABEL_FORMATS, ChannelListing, DataError, LabeledFile, list_channel
from training.dataset.loader import BatchLoader, Split  # Split: the loader's input, named here too
from training.dataset.pseudonym_key import local_key

__all__ = [
    "BatchLoader",
    "DataError",
    "DataOptions",
    "LABEL_FORMATS",
    "PreparedData",
    "Split",
    "patient_hash",
    "prepare",
]

log = logging.getLogger(__name__)

CHANNELS = ("train", "validation", "test")
BAD_FILES_JSON = "bad_files.json"
_SIDES = ("train", "validation", "test")


@dataclass(frozen=True)
class DataOptions:
    """How the data is read, checked, split and cached.

    Attributes:
        image_size: (H, W) the training resolution; 96x96 keeps DenseNet121 fast on CPUs and shows a lesion.
        on_bad_file: 'fail' (one error listing every bad file; the default, so that nothing is dropped silently)
            or 'skip' (train on the rest, log each, write bad_files.json).
        window: (center, width) in modality units overriding every file's window; None: the file's window, else
            percentile scaling (training/dataset/dicom.py).
        val_fraction: share of the train channel's images held out for validation when no validation channel is
            given; 0.2 is the usual compromise for small medical sets.
        seed: seeds the train/validation split.
        pseudonym_key: the 32-byte secret key of the patient pseudonyms; None: the local key
            (training/dataset/pseudonym_key.py). Never written out.
        cache_memory_mb: MiB the image cache may take in memory; beyond it the cache is a memmap on disk.
            2048 MiB holds about 230,000 images at 96x96.
        cache_dir: where a disk cache goes; None: the system's temporary directory.
        workers: decoding processes on first read; 2 matches the smallest training instances (and this machine).
        rank: this process's rank in a multi-process job.
        world_size: the number of processes; each decodes and caches only its shard.
        label_attribute: the Ground Truth label attribute when a manifest holds several (chained jobs).
    """

    image_size: tuple[int, int] = (96, 96)
    on_bad_file: str = "fail"
    window: tuple[float, float] | None = None
    val_fraction: float = 0.2
    seed: int = 0
    pseudonym_key: bytes | None = field(default=None, repr=False)
    cache_memory_mb: int = 2048
    cache_dir: Path | None = None
    workers: int = 2
    rank: int = 0
    world_size: int = 1
    label_attribute: str | None = None

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or not all(8 <= int(v) <= 4096 for v in self.image_size):
            raise ValueError(f"image_size must be (H, W) with 8 <= H, W <= 4096; got {self.image_size}")
        if self.on_bad_file not in ("fail", "skip"):
            raise ValueError(f"on_bad_file must be 'fail' or 'skip'; got {self.on_bad_file!r}")
        if self.window is not None and (len(self.window) != 2 or not float(self.window[1]) > 0):
            raise ValueError(f"window must be (center, width) with width > 0, e.g. (40, 400); got {self.window}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        if self.pseudonym_key is not None and len(self.pseudonym_key) != 32:
            raise ValueError("pseudonym_key must be 32 bytes (training/dataset/pseudonym_key.py)")
        if self.cache_memory_mb < 0:
            raise ValueError(f"cache_memory_mb must be >= 0; got {self.cache_memory_mb}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank={self.rank}, world_size={self.world_size}")


@dataclass
class PreparedData:
    """Everything the training loop needs from the data.

    Attributes:
        classes: sorted class names; label index = position.
        train: this rank's training shard.
        validation: this rank's validation shard (possibly empty when there are fewer images than ranks).
        test: this rank's test shard, or None without a test channel.
        manifest: JSON-serializable lineage (module docstring; `manifest_keys` lists the keys).
        bad_files: {"channel", "file", "reason"} for each file not used.
    """

    classes: list[str]
    train: Split
    validation: Split
    test: Split | None
    manifest: dict[str, Any]
    bad_files: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Record:
    """One labeled file on its way through prepare()."""

    channel: str
    item: LabeledFile
    path: Path
    header: DicomHeader | None = None
    kind: str = ""  # what groups it: PatientID, patient_id column, StudyInstanceUID or file
    key: str = ""  # the raw grouping value: in memory only, never written
    patient: str = ""  # the keyed pseudonym
    side: str = ""
    owner: int = 0  # the rank that decodes and caches it

    @property
    def file(self) -> str:
        return self.item.file

    @property
    def label(self) -> str:
        return self.item.label


def patient_hash(kind: str, value: str, key: bytes) -> str:
    """The name a patient goes by in logs, errors and the manifest.

    Args:
        kind: 'patient', 'study' or 'file': what the value identifies (so equal strings of different kinds differ).
        value: the raw identifier.
        key: the secret 32-byte key (DataOptions.pseudonym_key).

    Returns:
        'p-' and 16 hex digits of HMAC-SHA256(key, kind \x1f value).
    """
    digest = hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()
    return f"p-{digest[:16]}"


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
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown or "train" not in channels:
        raise DataError(
            f"channels must include 'train' and may include 'validation' and 'test'; got {sorted(channels)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    listings = {
        name: list_channel(name, Path(channels[name]), label_attribute=options.label_attribute)
        for name in CHANNELS
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
    records = [
        _Record(name, item, listing.root / item.file) for name, listing in listings.items() for item in listing.items
    ]
    records = _drop_unknown_labels(records, classes, bad)
    records = _read_headers(records, options.workers, bad)
    key = options.pseudonym_key
    if key is None:
        key = local_key(data_dirs=[Path(d) for d in channels.values()])
    split_key = _assign_patients(records, key)
    _check_overlap(records, split_key["split_key"])
    _assign_sides(records, options, has_validation="validation" in listings)
    _assign_shards(records, options.world_size)
    mine = [r for side in _SIDES for r in _side(records, side) if r.owner == options.rank]
    buffer, decode_stats, decoded = _decode(mine, options)
    bad.extend(
        {"channel": r.channel, "file": r.file, "reason": reason}
        for r, reason in zip(mine, decoded, strict=True)
        if reason is not None
    )
    if bad:
        _write_bad_files(bad, output_dir, options.rank)
        if options.on_bad_file == "fail":
            raise DataError(_bad_report(bad), bad)
        for entry in bad:
            log.warning("skipping [%s] %s: %s", entry["channel"], entry["file"], entry["reason"])
    kept = [r for r, reason in zip(mine, decoded, strict=True) if reason is None]
    images = _compact(buffer.array, [reason is None for reason in decoded])
    splits = _splits(kept, images, classes)
    if len(splits["train"]) == 0:
        raise DataError(
            f"no training image is left for rank {options.rank} of {options.world_size} after removing the bad "
            "files; fix them or add images"
        )
    failed = {(e["channel"], e["file"]) for e in bad}
    manifest = _manifest(listings, records, classes, options, split_key, bad, failed, decode_stats, buffer.location)
    _log_plan(manifest)
    return PreparedData(
        classes=classes,
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"] if "test" in listings else None,
        manifest=manifest,
        bad_files=bad,
    )


def _drop_unknown_labels(records: list[_Record], classes: list[str], bad: list[dict[str, str]]) -> list[_Record]:
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


def _read_headers(records: list[_Record], workers: int, bad: list[dict[str, str]]) -> list[_Record]:
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


def _assign_patients(records: list[_Record], key: bytes) -> dict[str, Any]:
    """Choose each file's grouping key (module docstring, step 4) and hash it; report what was used."""

    def usable(values: list[str]) -> set[str]:
        held = Counter(v for v in values if v)
        # One value on every file that has one (several files) identifies nobody: de-identification left it.
        return set() if len(held) == 1 and next(iter(held.values())) > 1 else set(held)

    column = usable([r.item.patient_id or "" for r in records])
    patient_ids = usable([r.header.patient_id if r.header else "" for r in records])
    studies = usable([r.header.study_uid if r.header else "" for r in records])
    for record in records:
        header = record.header
        assert header is not None
        if record.item.patient_id and record.item.patient_id in column:
            record.kind, group, record.key = "patient_id column", "patient", record.item.patient_id
        elif header.patient_id in patient_ids:
            record.kind, group, record.key = "PatientID", "patient", header.patient_id
        elif header.study_uid in studies:
            record.kind, group, record.key = "StudyInstanceUID", "study", header.study_uid
        else:
            record.kind, group, record.key = "file", "file", f"{record.channel}/{record.file}"
        record.patient = patient_hash(group, record.key, key)
        record.key = f"{group}\x1f{record.key}"
    counts = Counter(record.kind for record in records)
    notes = []
    total = len(records)
    fallback = counts.get("StudyInstanceUID", 0) + counts.get("file", 0)
    if fallback:
        why = (
            "PatientID is the same in every file (de-identified?)"
            if not patient_ids and any(r.header and r.header.patient_id for r in records)
            else "PatientID is blank"
        )
        notes.append(
            f"{why} for {fallback} of {total} files: grouped by StudyInstanceUID ({counts.get('StudyInstanceUID', 0)})"
            f" or, where that is blank or shared too, by file ({counts.get('file', 0)})"
        )
        for note in notes:
            log.warning("patient split: %s", note)
    main = counts.most_common(1)[0][0] if counts else "PatientID"
    return {"split_key": main, "split_key_counts": dict(sorted(counts.items())), "split_key_notes": notes}


def _check_overlap(records: list[_Record], split_key: str) -> None:
    """A patient in two channels would leak between training and evaluation: always an error."""
    by_key: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    hashes: dict[str, str] = {}
    for record in records:
        by_key[record.key][record.channel].append(record.file)
        hashes[record.key] = record.patient
    clashes = []
    for key, sides in sorted(by_key.items(), key=lambda kv: hashes[kv[0]]):
        if len(sides) > 1:
            where = "; ".join(
                f"{channel}: {len(files)} file(s), e.g. {sorted(files)[0]}" for channel, files in sorted(sides.items())
            )
            clashes.append(f"  patient {hashes[key]} in {where}")
    if clashes:
        raise DataError(
            f"{len(clashes)} patient(s) appear in more than one channel (grouped by {split_key}, named by keyed "
            "hash), so evaluation would see patients the model trained on:\n"
            + "\n".join(clashes)
            + "\nMove each patient's images into one channel."
        )


def _assign_sides(records: list[_Record], options: DataOptions, *, has_validation: bool) -> None:
    """Train/validation by patient group (stratified by the group's majority class); given channels as they are."""
    for record in records:
        record.side = record.channel
    if has_validation or options.val_fraction == 0:
        return
    groups: dict[str, list[_Record]] = defaultdict(list)
    for record in records:
        if record.channel == "train":
            groups[record.key].append(record)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        labels = Counter(r.label for r in groups[key])
        majority = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        by_class[majority].append(key)
    rng = random.Random(options.seed)
    chosen: list[str] = []
    for label in sorted(by_class):
        keys = by_class[label]
        rng.shuffle(keys)
        target = options.val_fraction * sum(len(groups[k]) for k in keys)
        taken = 0
        for key in keys[:-1]:  # the last group stays in train: every class keeps training images
            size = len(groups[key])
            if taken + size / 2 > target:
                break
            chosen.append(key)
            taken += size
    if not chosen:
        candidates = [keys[0] for keys in by_class.values() if len(keys) > 1]
        if not candidates:
            raise DataError(
                f"cannot hold out a validation set: the train channel has {len(groups)} patient group(s), too few "
                "to split by patient; add patients, give a validation channel, or set val_fraction=0"
            )
        chosen.append(sorted(candidates)[0])
    for key in chosen:
        for record in groups[key]:
            record.side = "validation"


def _side(records: list[_Record], side: str) -> list[_Record]:
    """The records of one side, in their canonical (shard) order."""
    return sorted((r for r in records if r.side == side), key=lambda r: (r.channel, r.file))


def _assign_shards(records: list[_Record], world_size: int) -> None:
    """Every world_size-th record of each side, by path, belongs to one rank."""
    for side in _SIDES:
        for position, record in enumerate(_side(records, side)):
            record.owner = position % world_size


def _decode(mine: list[_Record], options: DataOptions) -> tuple[Any, Any, list[str | None]]:
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


def _compact(array: np.ndarray, keep: list[bool]) -> np.ndarray:
    """Move the kept rows to the front (in order) and return that part."""
    target = 0
    for row, wanted in enumerate(keep):
        if wanted:
            if row != target:
                array[target] = array[row]
            target += 1
    return array[:target]


def _splits(kept: list[_Record], images: np.ndarray, classes: list[str]) -> dict[str, Split]:
    """Views of the cache per side (the cache is ordered train, validation, test)."""
    tensor = torch.from_numpy(images)
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    start = 0
    for side in _SIDES:
        part = [r for r in kept if r.side == side]
        end = start + len(part)
        splits[side] = Split(
            images=tensor[start:end],
            labels=torch.tensor([index[r.label] for r in part], dtype=torch.int64),
            files=[r.file for r in part],
            patients=[r.patient for r in part],
        )
        start = end
    return splits


def _manifest(
    listings: dict[str, ChannelListing],
    records: list[_Record],
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
        side: {name: sum(1 for r in used if r.side == side and r.label == name) for name in classes} for side in _SIDES
    }
    patients = {side: len({r.patient for r in used if r.side == side}) for side in _SIDES}
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


def _bad_report(bad: list[dict[str, str]]) -> str:
    """The one error that lists every bad file."""
    lines = [f"  [{e['channel']}] {e['file']}: {e['reason']}" for e in bad]
    return (
        f"{len(bad)} bad file(s) in the data (on_bad_file='fail'):\n"
        + "\n".join(lines)
        + "\nFix or remove them, or set on_bad_file='skip' to train on the rest."
    )


def _write_bad_files(bad: list[dict[str, str]], output_dir: str | Path | None, rank: int) -> None:
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


def _log_plan(manifest: dict[str, Any]) -> None:
    """The split in one line per side, and a warning for a class left without training images."""
    for side in _SIDES:
        counts = manifest["class_counts"][side]
        if sum(counts.values()):
            detail = ", ".join(f"{name} {count}" for name, count in counts.items())
            log.info(
                "%s: %d image(s) of %d patient(s) (%s)", side, sum(counts.values()), manifest["patients"][side], detail
            )
    empty = [name for name, count in manifest["class_counts"]["train"].items() if count == 0]
    if empty:
        log.warning("no training image of class(es) %s is left: the model cannot learn them", ", ".join(empty))

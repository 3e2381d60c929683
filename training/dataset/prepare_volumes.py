"""The data layer for volumes (issue 21 item 4): series in, a cached uint8 N x 1 x D x H x W out, split by patient.

`prepare_volumes(channels, options)` is training/dataset/prepare.py's `prepare` for series, step for step:

1. Lists each channel's DICOM files (the DICOM marker, any depth, any names; at most series.MAX_FILES a channel) and
   assembles them into series (training/dataset/series.py), then labels each series (series_labels.py).
2. Checks the classes as 2-D does: 2+ in train; validation and test labels must be among them.
3. Groups series by patient and splits train/validation with split.py's `assign`, unchanged: a series is one record,
   named by its location in the channel, with its labels.csv patient_id, its PatientID and its StudyInstanceUID.
4. Decodes this rank's shard with volume.read_volume into a uint8 cache (cache.allocate: in memory within
   cache_memory_mb, else a memmap), in a process pool (cache.run_jobs).
5. Bad series (from assembly, from labels, from decoding) follow `on_bad_file` as bad files do: 'fail' raises one
   DataError listing them all; 'skip' logs each, and bad_files.json is written either way when `output_dir` is given.

Options: `VolumeOptions`, a DataOptions whose image_size is (D, H, W). DataOptions itself (the 2-D job's) still refuses
three values, as TrainConfig does, until train.py reads series.

Privacy: a series is named by its location (folder, or multi-frame file) and its position ('series 3'), a patient by
its keyed pseudonym; no UID or patient identifier reaches a log, an error, the summary or bad_files.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from training.dataset.cache import DecodeStats, allocate, pool_size, run_jobs
from training.dataset.dicom import DicomHeader, dicom_files_under
from training.dataset.grayscale import Window
from training.dataset.labels import DataError, LabeledFile
from training.dataset.prepare import (
    DataOptions,
    bad_report,
    compact,
    drop_unknown_labels,
    log_plan,
    make_splits,
    write_bad_files,
)
from training.dataset.pseudonym_key import local_key
from training.dataset.series import MAX_FILES, Series, SeriesReport, assemble
from training.dataset.series_labels import LabelledSeries, SeriesLabels, label_series
from training.dataset.split import PreparedData, Record, assign, in_shard_order
from training.dataset.volume import VolumeError, read_volume
from training.job.environment import DATA_CHANNELS

__all__ = ["VolumeOptions", "prepare_volumes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeOptions(DataOptions):
    """DataOptions for series: image_size is (D, H, W) (the rules of TrainConfig's data fields otherwise)."""

    reads_volumes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.image_size) != 3:
            raise ValueError(f"image_size must be three values (D, H, W) for volumes; got {tuple(self.image_size)}")


@dataclass
class _Channel:
    """One channel's series: assembled, labelled."""

    root: Path
    report: SeriesReport
    labels: SeriesLabels


def prepare_volumes(channels: Mapping[str, str | Path], options: DataOptions, *,
                    output_dir: str | Path | None = None) -> PreparedData:
    """Find, assemble, label, split, decode and cache the series (the steps are in this module's docstring).

    Args:
        channels: channel name -> directory; 'train' required, 'validation' and 'test' optional.
        options: the data options, image_size (D, H, W) (a VolumeOptions).
        output_dir: where bad_files.json goes; None writes nothing.

    Returns:
        This rank's prepared data: each Split's images are uint8 N x 1 x D x H x W, its files the series' locations.

    Raises:
        ValueError: image_size is not three values.
        DataError: as training/dataset/prepare.py's `prepare`, with series in place of files.
    """
    if len(options.image_size) != 3:
        raise ValueError(f"image_size must be three values (D, H, W) for volumes; got {tuple(options.image_size)}")
    found, bad = _read_channels(channels)
    classes = _classes(found)
    series = {(name, _record_name(item.series)): item for name, c in found.items() for item in c.labels.items}
    records = drop_unknown_labels([_record(channel, name, item, found[channel].root)
                                    for (channel, name), item in series.items()], classes, bad)
    key = options.pseudonym_key or local_key(data_dirs=[Path(d) for d in channels.values()])
    split_key = assign(records, key, val_fraction=options.val_fraction, seed=options.seed,
                       has_validation="validation" in found, world_size=options.world_size)
    mine = [r for side in DATA_CHANNELS for r in in_shard_order(records, side) if r.owner == options.rank]
    buffer, stats, reasons = _decode([series[(r.channel, r.file)].series for r in mine], options)
    bad += [{"channel": r.channel, "file": r.file, "reason": reason}
            for r, reason in zip(mine, reasons, strict=True) if reason is not None]
    if bad:
        write_bad_files(bad, output_dir, options.rank)
        if options.on_bad_file == "fail":
            raise DataError(bad_report(bad).replace("bad file(s)", "bad series or file(s)"), bad)
        for entry in bad:
            log.warning("skipping [%s] %s: %s", entry["channel"], entry["file"], entry["reason"])
    kept = [r for r, reason in zip(mine, reasons, strict=True) if reason is None]
    splits = make_splits(kept, compact(buffer.array, [reason is None for reason in reasons]), classes)
    if len(splits["train"]) == 0:
        raise DataError(f"no training series is left for rank {options.rank} of {options.world_size} after removing "
                        "the bad ones; fix them or add series")
    summary = _summary(found, records, classes, options, split_key, bad, stats, buffer.location)
    log_plan(summary)
    return PreparedData(classes=classes, train=splits["train"], validation=splits["validation"],
                        test=splits["test"] if "test" in found else None, summary=summary, bad_files=bad)


def _read_channels(channels: Mapping[str, str | Path]) -> tuple[dict[str, _Channel], list[dict[str, str]]]:
    """Step 1: each channel's series and labels; the bad series and label rows, each with its channel."""
    unknown = sorted(set(channels) - set(DATA_CHANNELS))
    if unknown or "train" not in channels:
        raise DataError(f"channels must include 'train' and may include 'validation' and 'test'; got "
                        f"{sorted(channels)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    found: dict[str, _Channel] = {}
    bad: list[dict[str, str]] = []
    for name in (n for n in DATA_CHANNELS if n in channels):
        root = Path(channels[name])
        report = assemble(_dicom_files(name, root), root=root)
        labels = label_series(name, root, report)
        found[name] = _Channel(root, report, labels)
        bad += [{"channel": name, **entry, "file": _bad_name(entry)} for entry in report.bad] + labels.bad
        log.info("channel '%s': %d series (%d labelled, labels from %s), %d bad, %d skipped", name,
                 len(report.series), len(labels.items), labels.label_format, len(report.bad),
                 len(labels.skipped) + len(report.skipped))
    return found, bad


def _dicom_files(channel: str, root: Path) -> list[Path]:
    """DICOM files below root (dicom.dicom_files_under: the marker, hidden folders and DICOMDIR left out); bounded."""
    if not root.is_dir():
        raise DataError(f"channel '{channel}': {root} is not a directory")
    try:
        return dicom_files_under(root, limit=MAX_FILES)
    except ValueError:
        raise DataError(f"channel '{channel}' holds more than {MAX_FILES} DICOM files "
                        "(training.dataset.series.MAX_FILES): split the data into several channels") from None

def _classes(found: dict[str, _Channel]) -> list[str]:
    """Step 2: the sorted train classes, at least two."""
    classes = sorted({item.label for item in found["train"].labels.items})
    if len(classes) < 2:
        raise DataError(f"channel 'train' has {len(classes)} class(es) ({', '.join(classes) or 'none'}) among its "
                        "series; single-label classification needs series of at least 2 classes")
    return classes


def _record(channel: str, name: str, item: LabelledSeries, root: Path) -> Record:
    """A series as split.py's record: one labelled 'file' whose header holds the series' patient and study."""
    return Record(channel, LabeledFile(name, item.label, item.patient_id), root,
                  DicomHeader(item.series.patient_id, item.series.study_uid, "", item.series.subgroups))


def _record_name(series: Series) -> str:
    """A series' name in records, the summary and bad_files.json: its location, and its part after a split."""
    part = series.name.partition(" part ")[2]
    return f"{series.location} (part {part})" if part else series.location


def _bad_name(entry: dict[str, str]) -> str:
    """A bad series' name as a record's (`_record_name`): a part split off is not the series it came from."""
    part = entry.get("series", "").partition(" part ")[2]
    return f"{entry['file']} (part {part})" if part else entry["file"]


def volume_job(job: tuple[Series, tuple[int, int, int], Window | None]) -> tuple[np.ndarray | None, str | None]:
    """Decode one series to the cache's uint8 (D, H, W) (runs in a decoding process).

    Returns:
        (array, None), or (None, reason) when the series cannot become a volume.
    """
    series, size, window = job
    try:
        return read_volume(series, size=size, window=window).array, None
    except VolumeError as exc:
        return None, str(exc)
    except MemoryError:
        return None, f"{series.name}: it does not fit in memory to decode"


def _decode(series: list[Series], options: DataOptions) -> tuple[Any, DecodeStats, list[str | None]]:
    """Step 4: this rank's series into the cache, in order."""
    size = (int(options.image_size[0]), int(options.image_size[1]), int(options.image_size[2]))
    buffer = allocate(len(series), size, budget_bytes=options.cache_memory_mb * 2**20, cache_dir=options.cache_dir)
    window = (float(options.window[0]), float(options.window[1])) if options.window is not None else None
    start = time.perf_counter()
    reasons: list[str | None] = []
    for row, (array, reason) in enumerate(run_jobs(volume_job, [(s, size, window) for s in series], options.workers)):
        if array is not None:
            buffer.array[row, 0] = array
        reasons.append(reason)
    stats = DecodeStats(len(series), time.perf_counter() - start, pool_size(len(series), options.workers))
    log.info("decoded %d series in %.1f s (%d process(es)) into a %s cache of %.1f MiB", stats.files, stats.seconds,
             stats.workers, buffer.location, buffer.array.nbytes / 2**20)
    return buffer, stats, reasons


def _summary(found: dict[str, _Channel], records: list[Record], classes: list[str], options: DataOptions,
             split_key: dict[str, Any], bad: list[dict[str, str]], stats: DecodeStats,
             location: str) -> dict[str, Any]:
    """The JSON-serializable lineage, in 2-D's shape (series in place of files), plus each channel's series."""
    failed = {(e["channel"], e["file"]) for e in bad}
    used = [r for r in records if (r.channel, r.file) not in failed]
    settings = asdict(options)
    settings.pop("pseudonym_key", None)  # the secret is never written out
    settings["cache_dir"] = str(options.cache_dir) if options.cache_dir is not None else None
    return {
        "version": 1, "kind": "volumes", "classes": classes,
        "channels": {name: {"label_format": c.labels.label_format, "labeled_series": len(c.labels.items),
                            "skipped": c.labels.skipped + c.report.skipped} for name, c in found.items()},
        **split_key,
        "class_counts": {side: {name: sum(r.side == side and r.label == name for r in used) for name in classes}
                         for side in DATA_CHANNELS},
        "patients": {side: len({r.patient for r in used if r.side == side}) for side in DATA_CHANNELS},
        "files": [{"channel": r.channel, "file": r.file, "label": r.label, "patient": r.patient, "split": r.side,
                   "rank": r.owner} for r in sorted(used, key=lambda r: (r.channel, r.file))],
        "series": {name: c.report.listing()["series"] for name, c in found.items()},
        "bad_files": bad, "options": settings,
        "decode": {"series": stats.files, "seconds": round(stats.seconds, 3), "processes": stats.workers},
        "cache": {"location": location, "dtype": "uint8", "image_size": list(options.image_size)},
        "rank": options.rank, "world_size": options.world_size,
    }

"""Labels per series (issue 21 item 3): the class of each volume `assemble` found (training/dataset/series.py).

A channel of series carries its labels in one of these forms, detected at its top level as 2-D labels are
(training/dataset/labels.py):

- `labels.csv` with a `series_uid` column and `label` (and optionally `patient_id`): one row per series, by its
  SeriesInstanceUID;
- `labels.csv` with `file,label`, where `file` names a series' folder (or a multi-frame file) inside the channel;
- no labels.csv: one folder per class at the top, one folder per series inside (`abnormal/series-12/*.dcm`): a
  series' class is the first folder of its location.

A series split into parts (series.py: a part of another orientation or size) gives its label to every part. A row
that names no series, a blank label or a series named twice with two labels is a bad entry, named by its line
number, never by the UID in it (a row naming a series that is bad as a whole is left to that series' own entry); a
series without a label is skipped and listed. The patient split is the data layer's, as in 2-D (the patient_id
column, else PatientID).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from training.dataset.labels import LABELS_CSV, DataError, normalize_path
from training.dataset.series import Series, SeriesReport

__all__ = ["FORMAT_FOLDERS", "FORMAT_SERIES_CSV", "LabelledSeries", "SeriesLabels", "label_series"]

FORMAT_SERIES_CSV = "labels.csv (series)"
FORMAT_FOLDERS = "folders (series)"
MAX_ROWS = 1_000_000  # rows of a labels.csv read (a series a row)


@dataclass(frozen=True)
class LabelledSeries:
    """A series, its label and the labels.csv patient_id given for it (raw: hash it before it reaches any output)."""

    series: Series
    label: str
    patient_id: str | None = None


@dataclass
class SeriesLabels:
    """A channel's labelled series, bad entries ({"channel", "file", "reason"}) and skipped series."""

    channel: str
    label_format: str
    items: list[LabelledSeries] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def label_series(channel: str, root: str | Path, report: SeriesReport) -> SeriesLabels:
    """The label of every series of `report` (assembled from the files under `root`), in the channel's form.

    Raises:
        DataError: labels.csv without a usable header, or no labels.csv and no class folders.
    """
    root = Path(root)
    if (root / LABELS_CSV).is_file():
        return _from_csv(channel, root / LABELS_CSV, report)
    return _from_folders(channel, report)


def _from_csv(channel: str, path: Path, report: SeriesReport) -> SeriesLabels:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        columns = [c.strip().lower() for c in next(reader, [])]
        key = next((c for c in ("series_uid", "file") if c in columns), None)
        if key is None or "label" not in columns:
            raise DataError(f"channel '{channel}': {LABELS_CSV} of series must start with a header row naming the "
                            f"columns series_uid,label (or file,label, file naming a series' folder); found "
                            f"{columns!r}. Add the header row.")
        listing = SeriesLabels(channel, FORMAT_SERIES_CSV)
        by_key = _series_by(report, key)
        chosen: dict[str, str] = {}  # series name -> label
        for line, row in enumerate(reader, start=2):
            if line > MAX_ROWS + 1:
                raise DataError(f"channel '{channel}': {LABELS_CSV} has more than {MAX_ROWS} rows: split the data")
            cells = dict(zip(columns, (cell.strip() for cell in row), strict=False))
            if not any(cells.values()):
                continue
            if cells.get(key, "") in report.unusable or normalize_path(cells.get(key, "")) in report.unusable:
                continue  # a bad series: its entry in the report says why
            _add_row(listing, by_key, chosen, cells, key, f"{LABELS_CSV} line {line}")
    labelled = {item.series.name for item in listing.items}
    listing.skipped += [{"file": s.location, "reason": f"a series without a label (no row in {LABELS_CSV})"}
                        for s in report.series if s.name not in labelled]
    return listing


def _series_by(report: SeriesReport, key: str) -> dict[str, list[Series]]:
    """The series by the value a row names them by: the SeriesInstanceUID, or the location (folder or file)."""
    found: dict[str, list[Series]] = {}
    for series in report.series:
        found.setdefault(series.series_uid if key == "series_uid" else series.location, []).append(series)
    return found


def _add_row(listing: SeriesLabels, by_key: dict[str, list[Series]], chosen: dict[str, str],
             cells: dict[str, str], key: str, where: str) -> None:
    value, label = cells.get(key, ""), cells.get("label", "")
    named = by_key.get(normalize_path(value) or "" if key == "file" else value, [])
    problem = ("its label is blank" if not label else
               f"it names no series found in the channel (check its {key})" if not named else None)
    if problem is None and any(chosen.setdefault(series.name, label) != label for series in named):
        problem = "it gives a series a second, different label"
    if problem:
        listing.bad.append({"channel": listing.channel, "file": where, "reason": problem})
        return
    for series in named:
        if all(item.series.name != series.name for item in listing.items):
            listing.items.append(LabelledSeries(series, label, cells.get("patient_id") or None))


def _from_folders(channel: str, report: SeriesReport) -> SeriesLabels:
    listing = SeriesLabels(channel, FORMAT_FOLDERS)
    for series in report.series:
        parts = PurePosixPath(series.location).parts
        if len(parts) < 2:
            listing.skipped.append({"file": series.location, "reason": "a series outside a class folder (no "
                                    f"{LABELS_CSV}: one folder per class, one folder per series inside)"})
            continue
        listing.items.append(LabelledSeries(series, parts[0]))
    if report.series and not listing.items:
        raise DataError(f"channel '{channel}': no {LABELS_CSV} and no class folders: give a {LABELS_CSV} with "
                        "series_uid,label, or one folder per class holding one folder per series")
    return listing

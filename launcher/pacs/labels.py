"""Labels for a pull (issue 20 item 3): a CSV naming studies becomes the channel's `labels.csv`.

The team's CSV names studies as the PACS knows them, by a `StudyInstanceUID` or an `AccessionNumber` column (a row
may fill either; where both are filled, the UID is used), and gives each a `label`:

    AccessionNumber,label
    ACC-0001,pneumonia

1. `read_study_labels(csv)` reads it, bounded (bytes, rows, label length) before any work; every problem is listed
   by its row number, never by the value in it (an accession number or a UID is an identifier).
2. `resolve_studies(rows, find)` asks the PACS which studies each row names (`find(filters)` gives the original
   StudyInstanceUIDs matching, e.g. {"AccessionNumber": "ACC-0001"}; launcher/pacs/pull.py's `find_studies` over
   DICOMweb or DIMSE). A row naming no study, or two rows giving one study two labels, is a LabelsError naming the
   rows; nothing is pulled until every row resolves.
3. After the pull, `write_labels_csv(out, studies, pseudonym_uid)` writes OUT/labels.csv in the job's own form
   (`file,label`, file names relative to OUT: training/dataset/labels.py), one row per pulled file of a labelled
   study; the study's folder is its keyed pseudonym, so no original UID is written. It is written through a temporary
   file and `os.replace`. The patient split needs no column: the pulled files' PatientID is the keyed pseudonym,
   and the job groups by it (training/dataset/split.py).

A study whose every instance was refused (burned-in text) has no file: its rows are reported, not an error.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import RE_VALID_UID

__all__ = ["LabelledStudy", "LabelsError", "LabelsReport", "StudyLabel", "read_study_labels", "resolve_studies",
           "write_labels_csv"]

KEYS = ("StudyInstanceUID", "AccessionNumber")  # the columns a row may name its study by, in order of preference
MAX_CSV_BYTES = 16 << 20
MAX_ROWS = 100_000
MAX_LABEL_CHARS = 64  # a class name, not a report
MAX_VALUE_CHARS = 64  # a UI's maximum length in PS3.5 (an SH, AccessionNumber, is 16)
SHOWN_ROWS = 20  # rows a message lists before "and N more"
OUTPUT_CSV = "labels.csv"  # training/dataset/labels.py LABELS_CSV: the job reads this name


class LabelsError(ValueError):
    """A labels CSV that cannot be used as it is; the message names rows by number, never by value."""


@dataclass(frozen=True)
class StudyLabel:
    """One row: the column that names its study, that column's value, and the label."""

    row: int  # the line number in the CSV (the header is line 1)
    key: str  # one of KEYS
    value: str
    label: str


@dataclass(frozen=True)
class LabelledStudy:
    """A study found on the PACS, its label and the rows that named it."""

    study_uid: str  # the original StudyInstanceUID: held in memory, never written or logged
    label: str
    rows: tuple[int, ...]


@dataclass
class LabelsReport:
    """What write_labels_csv wrote: rows (files), studies with files, and the CSV rows whose studies have none."""

    path: str
    files: int
    studies: int
    rows_without_files: list[int]


def _rows_text(rows: Iterable[int]) -> str:
    rows = sorted(set(rows))
    shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
    return shown + (f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else "")


def read_study_labels(path: str | Path) -> list[StudyLabel]:
    """The rows of a labels CSV (header: `label` and at least one of KEYS, in any case), checked.

    Raises:
        LabelsError: the file is missing, too large, not UTF-8 text, has no usable header, too many rows, or rows
            without a study or a label, or with a malformed UID or an overlong value (listed by row).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise LabelsError(f"the labels CSV {path} cannot be read: check the path") from None
    if size > MAX_CSV_BYTES:
        raise LabelsError(f"the labels CSV {path} has {size} bytes, over the limit of {MAX_CSV_BYTES}: split it")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsError(f"the labels CSV {path} is not UTF-8 text: save it as CSV (UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [cell.strip().lower() for cell in next(reader, [])]
    keys = [key for key in KEYS if key.lower() in header]
    if "label" not in header or not keys:
        raise LabelsError(f"the labels CSV {path} must start with a header row naming a label column and a "
                          f"StudyInstanceUID or AccessionNumber column (e.g. AccessionNumber,label): add it")
    columns = {name: header.index(name.lower()) for name in (*keys, "label")}
    rows, problems = _rows(reader, columns, keys)
    if problems:
        listed = "; ".join(f"{why}: rows {_rows_text(lines)}" for why, lines in problems.items())
        raise LabelsError(f"the labels CSV {path} has rows it cannot use ({listed}): fix them and pull again")
    if not rows:
        raise LabelsError(f"the labels CSV {path} has no rows under its header: add a row per study")
    return rows


def _rows(reader: Iterable[list[str]], columns: dict[str, int], keys: list[str]
          ) -> tuple[list[StudyLabel], dict[str, list[int]]]:
    rows: list[StudyLabel] = []
    problems: dict[str, list[int]] = {}
    for line, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(rows) >= MAX_ROWS:
            raise LabelsError(f"the labels CSV has more than {MAX_ROWS} rows: split it")
        value_of = {name: cells[index].strip() if index < len(cells) else "" for name, index in columns.items()}
        key = next((k for k in keys if value_of[k]), None)
        label = value_of["label"]
        why = _row_problem(key, value_of.get(key or "", ""), label)
        if why:
            problems.setdefault(why, []).append(line)
        else:
            rows.append(StudyLabel(line, str(key), value_of[str(key)], label))
    return rows, problems


def _row_problem(key: str | None, value: str, label: str) -> str | None:
    if key is None:
        return "no StudyInstanceUID or AccessionNumber"
    if len(value) > MAX_VALUE_CHARS:
        return f"{key} over {MAX_VALUE_CHARS} characters"
    if key == "StudyInstanceUID" and not RE_VALID_UID.match(value):  # pydicom's UID() would log the bad value
        return "a StudyInstanceUID that is not a valid UID"
    if not label:
        return "a blank label"
    if len(label) > MAX_LABEL_CHARS:
        return f"a label over {MAX_LABEL_CHARS} characters"
    return None


def resolve_studies(rows: Iterable[StudyLabel], find: Callable[[Mapping[str, str]], list[str]]
                    ) -> list[LabelledStudy]:
    """The studies the rows name, as the PACS answers `find({key: value})`, each with its label.

    Raises:
        LabelsError: rows that name no study on the PACS; a study two rows label differently (listed by row).
    """
    labels: dict[str, str] = {}
    named: dict[str, list[int]] = {}
    unknown: list[int] = []
    conflicting: list[int] = []
    for row in rows:
        found = find({row.key: row.value})
        if not found:
            unknown.append(row.row)
        for uid in found:
            if labels.setdefault(uid, row.label) != row.label:
                conflicting += [*named[uid], row.row]
            named.setdefault(uid, []).append(row.row)
    if unknown:
        raise LabelsError(f"rows {_rows_text(unknown)} of the labels CSV name no study on the PACS: check their "
                          "StudyInstanceUID or AccessionNumber, or remove the rows; nothing was pulled")
    if conflicting:
        raise LabelsError(f"rows {_rows_text(conflicting)} of the labels CSV give one study different labels: "
                          "keep one label per study; nothing was pulled")
    return [LabelledStudy(uid, labels[uid], tuple(named[uid])) for uid in named]


def write_labels_csv(out: str | Path, studies: Iterable[LabelledStudy], pseudonym_uid: Callable[[str], str]
                     ) -> LabelsReport:
    """Write OUT/labels.csv (`file,label`) for the pulled files of the labelled studies, atomically."""
    out = Path(out)
    lines: list[tuple[str, str]] = []
    empty_rows: list[int] = []
    with_files = 0
    for study in studies:
        folder = out / pseudonym_uid(study.study_uid)
        files = sorted(p.relative_to(out).as_posix() for p in folder.rglob("*.dcm") if p.is_file())
        if not files:
            empty_rows += study.rows
            continue
        with_files += 1
        lines += [(name, study.label) for name in files]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label"])
    writer.writerows(sorted(lines))
    target = out / OUTPUT_CSV
    fd, temporary = tempfile.mkstemp(prefix=".labels-", suffix=".part", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return LabelsReport(str(target), len(lines), with_files, sorted(empty_rows))

"""Labels per series (training/dataset/series_labels.py, issue 21 item 3) on synthetic series written in random order
under random names (training.synthetic --volumes): labels.csv by series_uid, labels.csv by series folder, folders
per class; rows naming no series or giving a second label named by line, never by UID."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training import synthetic
from training.dataset.dicom import has_dicom_marker
from training.dataset.labels import DataError
from training.dataset.series import SeriesReport, assemble
from training.dataset.series_labels import FORMAT_FOLDERS, FORMAT_SERIES_CSV, label_series


def _assembled(root: Path) -> SeriesReport:
    return assemble([p for p in sorted(root.rglob("*")) if p.is_file() and has_dicom_marker(p)], root=root)


def _truth(made: list[synthetic.SyntheticSeries]) -> dict[str, str]:
    return {s.folder: s.label for s in made}


@pytest.mark.parametrize("label_format", ["csv", "folders"])
def test_each_series_gets_its_label(tmp_path: Path, label_format: str) -> None:
    made = synthetic.generate_volumes(tmp_path, count=6, slices=4, size=32, label_format=label_format)
    labels = label_series("train", tmp_path, _assembled(tmp_path))
    assert labels.label_format == (FORMAT_SERIES_CSV if label_format == "csv" else FORMAT_FOLDERS)
    assert {item.series.location: item.label for item in labels.items} == _truth(made)
    assert (labels.bad, labels.skipped) == ([], [])


def test_a_file_column_names_series_folders_and_bad_rows_are_named_by_line(tmp_path: Path) -> None:
    made = synthetic.generate_volumes(tmp_path, count=4, slices=4, size=32)
    (tmp_path / "labels.csv").write_text(
        "file,label\n" + "".join(f"./{s.folder}/,{s.label}\n" for s in made[:3])  # the 4th: no row
        + "series/no-such-series,normal\n" + f"{made[0].folder},{'normal' if made[0].label != 'normal' else 'x'}\n"
        + f"{made[1].folder},\n")
    labels = label_series("train", tmp_path, _assembled(tmp_path))
    assert {item.series.location: item.label for item in labels.items} == _truth(made[:3])
    assert [(b["file"], b["reason"]) for b in labels.bad] == [
        ("labels.csv line 5", "it names no series found in the channel (check its file)"),
        ("labels.csv line 6", "it gives a series a second, different label"),
        ("labels.csv line 7", "its label is blank")]
    assert [s["file"] for s in labels.skipped] == [made[3].folder]


def test_unknown_series_uids_are_named_by_line_not_by_uid(tmp_path: Path) -> None:
    made = synthetic.generate_volumes(tmp_path, count=4, slices=4, size=32)
    secret = "1.2.826.0.1.3680043.8.498.424242"
    with open(tmp_path / "labels.csv", "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow([secret, "normal"])
    labels = label_series("train", tmp_path, _assembled(tmp_path))
    assert len(labels.items) == len(made) and labels.bad[0]["file"] == "labels.csv line 6"
    assert secret not in repr(labels.bad) and all(s.series_uid not in repr(labels.bad) for s in made)


def test_no_labels_and_no_class_folders_is_an_error(tmp_path: Path) -> None:
    synthetic.generate_volumes(tmp_path, count=4, slices=4, size=32)
    (tmp_path / "labels.csv").write_text("series,label\nx,normal\n")
    with pytest.raises(DataError, match="series_uid,label"):
        label_series("train", tmp_path, _assembled(tmp_path))
    (tmp_path / "labels.csv").unlink()
    for path in sorted((tmp_path / "series").rglob("*.dcm")):  # every series flat at the top: no class folders
        path.rename(tmp_path / f"{path.parent.name}-{path.name}")
    with pytest.raises(DataError, match="no labels.csv and no class folders"):
        label_series("train", tmp_path, _assembled(tmp_path))

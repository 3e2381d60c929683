"""Reading a labels CSV for a pull (launcher/pacs/labels.py, issue 20 item 3): what it accepts, and bad CSVs refused
with the rows named by number, never by the identifier in them. Resolving rows against a real PACS and writing the
channel's labels.csv are tests/launcher/test_pacs_roundtrip.py's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from launcher.pacs import labels
from launcher.pacs.labels import LabelsError, StudyLabel, read_study_labels

UID1, UID2 = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def _csv(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "labels.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_rows_by_uid_or_accession_any_case_and_bom(tmp_path: Path) -> None:
    path = _csv(tmp_path, "\ufeffAccessionNumber,studyinstanceuid,LABEL\n"
                          f"ACC-1,,normal\n,{UID1},abnormal\nACC-3,{UID2},normal\n\n,,\n")
    assert read_study_labels(path) == [
        StudyLabel(2, "AccessionNumber", "ACC-1", "normal"),
        StudyLabel(3, "StudyInstanceUID", UID1, "abnormal"),
        StudyLabel(4, "StudyInstanceUID", UID2, "normal"),  # both filled: the UID wins
    ]


@pytest.mark.parametrize(("text", "says"), [
    ("file,label\na.dcm,normal\n", "must start with a header row naming a label column and a StudyInstanceUID"),
    ("AccessionNumber\nACC-SECRET-1\n", "must start with a header row"),
    ("AccessionNumber,label\n", "has no rows under its header"),
    ("AccessionNumber,label\nACC-SECRET-1,\n,normal\nACC-SECRET-2,normal\n",
     "(a blank label: rows 2; no StudyInstanceUID or AccessionNumber: rows 3)"),
    ("StudyInstanceUID,label\n1.2.SECRET.x,normal\n", "a StudyInstanceUID that is not a valid UID: rows 2"),
    ("AccessionNumber,label\nACC-SECRET-1," + "x" * 65 + "\n", "a label over 64 characters: rows 2"),
    ("AccessionNumber,label\n" + "SECRET" * 11 + ",normal\n", "(AccessionNumber over 64 characters: rows 2)"),
    (b"AccessionNumber,label\nACC-SECRET-\xff,normal\n", "is not UTF-8 text"),
])
def test_bad_csv_names_rows_not_values(tmp_path: Path, text: str | bytes, says: str,
                                       caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder) -> None:
    path = _csv(tmp_path, text)
    with caplog.at_level(logging.DEBUG), pytest.raises(LabelsError) as raised:
        read_study_labels(path)
    assert says in str(raised.value)
    heard = [str(raised.value), caplog.text, *(str(w.message) for w in recwarn)]
    assert not [text for text in heard if "SECRET" in text]


def test_bounds_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _csv(tmp_path, "AccessionNumber,label\n" + "".join(f"A{n},normal\n" for n in range(30)))
    monkeypatch.setattr(labels, "MAX_ROWS", 25)
    with pytest.raises(LabelsError, match="more than 25 rows: split it"):
        read_study_labels(path)
    monkeypatch.setattr(labels, "MAX_CSV_BYTES", 100)
    with pytest.raises(LabelsError, match=r"has \d+ bytes, over the limit of 100"):
        read_study_labels(path)
    with pytest.raises(LabelsError, match="cannot be read: check the path"):
        read_study_labels(tmp_path / "missing.csv")


def test_many_bad_rows_are_counted_not_all_listed(tmp_path: Path) -> None:
    path = _csv(tmp_path, "AccessionNumber,label\n" + "A,\n" * 30)
    with pytest.raises(LabelsError, match=r"rows 2, 3, .*, 21 and 10 more"):
        read_study_labels(path)

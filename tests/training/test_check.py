"""training/check.py: `python -m training.check DIR` reports the data and exits non-zero on bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.training.dicom_builders import read_labels_csv, truncate
from training import check
from training.synthetic import generate


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    generate(root, count=24, size=64)
    return root


def test_a_clean_set_passes_with_a_full_report(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(check.parse_args([str(dataset)])) == 0
    out = capsys.readouterr().out
    for expected in (
        "channel train: labels from labels.csv (labels.csv), 24 labeled DICOM file(s)",
        "classes: abnormal, normal",
        "split by: PatientID (PatientID 24 files)",
        "planned split: train ",
        "patients (pseudonym: images): 6",
        "bad files: 0",
        "result: every labeled file is usable",
    ):
        assert expected in out
    assert "SYN-0001" not in out


def test_bad_files_are_listed_and_exit_1(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = read_labels_csv(dataset)[2][0]
    truncate(dataset / bad)
    (dataset / "notes.txt").write_text("not DICOM")
    assert check.main(check.parse_args([str(dataset), "--val-fraction", "0.3"])) == 1
    out = capsys.readouterr().out
    assert f"[train] {bad}: " in out  # the reason depends on where the cut fell
    assert "skipped 1: not a DICOM file (no 'DICM' marker at byte 128)" in out
    assert "bad files: 1" in out


def test_unusable_data_exits_2_with_the_reason(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset / "meta-data.json").write_text("[]")
    assert check.main(check.parse_args([str(dataset)])) == 2
    assert "error: channel 'train'" in capsys.readouterr().out


def test_json_report_is_the_data_summary(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(check.parse_args([str(dataset), "--json", "--seed", "3"])) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["files"]) == 24 and summary["options"]["seed"] == 3


def test_command_line_entry(dataset: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training.check", str(dataset), "--workers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "planned split" in done.stdout


def test_parse_args_defaults() -> None:
    args = check.parse_args(["data"])
    assert (args.train, args.validation, args.val_fraction, args.window, args.json) == (
        Path("data"),
        None,
        0.2,
        None,
        False,
    )


def test_series_lists_real_volumes_and_the_bad_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pydicom's dicomdirtests (real CT, MR and CR series nobody here wrote): one volume, CT5N, 5 slices 2.5 mm apart;
    the rest bad with their reasons (a missing slice, localizers, single slices). And a channel of synthetic series
    written in random order under random names (training.synthetic --volumes): every series found, in order."""
    from pydicom.data import get_testdata_file

    from training import synthetic

    real = Path(str(get_testdata_file("CT_small.dcm"))).parent / "dicomdirtests"
    assert check.main(check.parse_args([str(real), "--series", "--json"])) == 1  # bad series: exit 1
    listing = json.loads(capsys.readouterr().out)["train"]
    (volume,) = listing["series"]
    assert (volume["location"], volume["slices"], volume["rows"], volume["columns"]) == ("98892001/CT5N", 5, 16, 16)
    assert volume["slice_spacing"] == 2.5 and volume["pixel_spacing"] == [0.488281, 0.488281]
    reasons = " ".join(entry["reason"] for entry in listing["bad"])
    assert "a slice is missing" in reasons and "a localizer series?" in reasons
    made = synthetic.generate_volumes(tmp_path / "volumes", count=4, slices=6, size=32)
    assert check.main(check.parse_args([str(tmp_path / "volumes"), "--series"])) == 0
    printed = capsys.readouterr().out
    assert f"channel train: {len(made)} series, 0 bad" in printed and printed.count("6 slices of 32 x 32") == len(made)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check.main(check.parse_args([str(empty), "--series"])) == 2

"""The 3-D job end to end (issue 21): volumes learned from the order of their slices, a control that cannot be learned,
bad series skipped, a restart from a checkpoint, and two processes under torchrun.

The set is training.synthetic's order-only CT series (`generate_volumes(order_only=True)`): series come in pairs of the
same slice images, the class visible only in the order of the slices along the slice normal; the files are written in
random order under random names and InstanceNumber is a random permutation, so only ImagePositionPatient (with
ImageOrientationPatient) tells the order. The control is the same set with the positions scrambled against the pixels
(`scramble_positions=True`): the same slices, no order to learn. Four training series are broken first, in the ways the
issue names: a missing slice, a duplicated position, a slice of another size, a localizer inside the series.

Cost: the volumes are 8 x 32 x 32, trained at 8 x 24 x 24 with the 3-D ResNet18 (the smallest network that takes any
depth), batches of 8, four epochs (three for the control and torchrun); the order run, the control and the restart
run in this process (no second import of torch and MONAI), torchrun in two.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.training.dicom_builders import pydicom_data_dir
from training import predict, synthetic
from training.job import train
from training.job.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "training" / "train_entry.py"  # the file SageMaker's drivers run
EPOCHS = 4
SETTINGS = [
    "--network", "resnet18", "--image_size", "8,24,24", "--epochs", str(EPOCHS), "--batch_size", "8",
    "--val_fraction", "0.25", "--patience", "0", "--bootstrap_samples", "50", "--torchscript", "false",
    "--workers", "1", "--on_bad_file", "skip",
]  # fmt: skip
SERIES = {"count": 48, "slices": 8, "size": 32, "seed": 3, "order_only": True}


def _slices_by_position(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                      .ImagePositionPatient[2]))


def _break_four(root: Path, made: list[synthetic.SyntheticSeries]) -> dict[str, str]:
    """Break four series as the issue lists; returns series folder -> the start of the reason the job must give."""
    folders = [root / series.folder for series in made[-4:]]
    missing, duplicated, mixed, localized = folders
    _slices_by_position(missing)[3].unlink()
    first = _slices_by_position(duplicated)[0]
    twin = pydicom.dcmread(first)
    twin.SOPInstanceUID = generate_uid()
    twin.save_as(duplicated / "twin.dcm")
    small = pydicom.dcmread(_slices_by_position(mixed)[-1])
    small.PixelData = small.pixel_array[::2, ::2].copy().tobytes()
    small.Rows, small.Columns = 16, 16
    small.SOPInstanceUID = generate_uid()
    small.save_as(mixed / "small.dcm")
    scout = pydicom.dcmread(_slices_by_position(localized)[0])
    scout.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal scout inside the axial series
    scout.SOPInstanceUID = generate_uid()
    scout.save_as(localized / "scout.dcm")
    reasons = ["1 gap(s) over 1.5 x the median spacing", "1 duplicated position(s)", "1 slice split off from series",
               "1 slice split off from series"]
    return {series.folder: reason for series, reason in zip(made[-4:], reasons, strict=True)}


@pytest.fixture(scope="module")
def order_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("order") / "train"
    made = synthetic.generate_volumes(root, **SERIES)  # type: ignore[arg-type]
    return root, _break_four(root, made)


@pytest.fixture(scope="module")
def scrambled_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scrambled") / "train"
    synthetic.generate_volumes(root, **SERIES, scramble_positions=True)  # type: ignore[arg-type]
    return root


def _train(train_dir: Path, workdir: Path, *extra: str) -> dict[str, Any]:
    """The job in this process; returns its metrics.json."""
    arguments = [f"--train={train_dir}", f"--model-dir={workdir / 'model'}", f"--output-dir={workdir / 'output'}",
                 f"--checkpoint-dir={workdir / 'checkpoints'}", *SETTINGS, *extra]
    assert train.main(arguments, environ={}) == 0
    loaded: dict[str, Any] = json.loads((workdir / "output" / "metrics.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def order_run(order_set: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict[str, Any], Path]:
    workdir = tmp_path_factory.mktemp("order-run")
    return _train(order_set[0], workdir), workdir


def _accuracy(metrics: dict[str, Any]) -> float:
    return float(metrics["validation"]["metrics"]["accuracy"]["value"])


def test_the_order_of_the_slices_is_learned_and_the_bundle_is_3d(order_run: tuple[dict[str, Any], Path]) -> None:
    metrics, workdir = order_run
    assert _accuracy(metrics) >= 0.95, metrics["history"]
    assert metrics["validation"]["n"] >= 10
    inference = json.loads((workdir / "model" / "configs" / "inference.json").read_text())
    assert inference["image_size"] == [8, 24, 24]


def test_the_same_set_with_scrambled_positions_is_not_learned(scrambled_set: Path, tmp_path: Path) -> None:
    metrics = _train(scrambled_set, tmp_path, "--epochs", "3")  # the order set is learned in 2 (1.0 in 3 runs)
    assert metrics["validation"]["n"] >= 10
    accuracies = [row["val_accuracy"] for row in metrics["history"]]
    assert max(accuracies) < 0.95 and _accuracy(metrics) < 0.95, metrics["history"]


def test_bad_series_are_named_with_their_reason_and_skipped(
    order_set: tuple[Path, dict[str, str]], order_run: tuple[dict[str, Any], Path]
) -> None:
    root, broken = order_set
    bad = json.loads((order_run[1] / "output" / "bad_files.json").read_text())
    named = {entry["file"]: entry["reason"] for entry in bad}
    missing, duplicated, mixed, localized = sorted(broken)
    assert sorted(named) == [missing, duplicated, f"{mixed} (part 2)", f"{localized} (part 2)"]  # no labels.csv
    for folder, reason in broken.items():  # line: a bad series' own entry answers for its label
        (said,) = [text for name, text in named.items() if name.startswith(folder)]
        assert said.startswith(reason), (folder, said)
    assert "a slice is missing" in named[missing]
    assert "its size (16 x 16, not 32 x 32) differs" in named[f"{mixed} (part 2)"]
    assert "its orientation differs" in named[f"{localized} (part 2)"]
    identifiers = {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
                   for folder in broken for p in (root / folder).iterdir()}
    assert not [uid for uid in identifiers if uid in json.dumps(bad)]
    # training went on with the rest: the two whole bad series left out, the main parts of the other two kept
    lineage = json.loads((order_run[1] / "model" / "configs" / "metadata.json").read_text())["lineage"]["data"]
    used = {entry["file"] for entry in lineage["files"]}
    assert len(used) == SERIES["count"] - 2 and {mixed, localized} <= used and not {missing, duplicated} & used
    counts = lineage["class_counts"]
    assert sum(counts["train"].values()) + sum(counts["validation"].values()) == SERIES["count"] - 2


def test_a_restart_goes_on_from_the_last_checkpoint(
    order_set: tuple[Path, dict[str, str]], order_run: tuple[dict[str, Any], Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, workdir = order_run
    kept = tmp_path / "checkpoints"
    shutil.copytree(workdir / "checkpoints", kept)
    (last, newest), (before, restart) = list_checkpoints(kept)  # the job keeps its two newest
    assert (last, before) == (EPOCHS, EPOCHS - 1)
    newest.unlink()  # as if it had stopped after epoch 3
    with caplog.at_level("INFO"):
        resumed = _train(order_set[0], tmp_path)
    assert f"going on from {restart}: 3 epoch(s) done, continuing at epoch 4" in caplog.text
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, EPOCHS + 1))
    for before, after in zip(metrics["history"], resumed["history"], strict=True):
        assert after["val_loss"] == pytest.approx(before["val_loss"], rel=0.05, abs=0.01)
    assert _accuracy(resumed) >= 0.95


def test_two_processes_under_torchrun_train_the_volumes(order_set: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    arguments = [f"--train={order_set[0]}", f"--model-dir={tmp_path / 'model'}", f"--output-dir={tmp_path / 'out'}",
                 *SETTINGS, "--epochs", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nnodes=1", "--nproc-per-node=2", str(ENTRY), *arguments],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert np.isfinite([row["val_loss"] for row in metrics["history"]]).all()
    assert _accuracy(metrics) >= 0.9, metrics["history"]
    spread = metrics["distributed"]
    assert spread["world_size"] == 2 and spread["backend"] == "gloo"
    train_share = spread["images_per_rank"]["train"]
    assert len(train_share) == 2 and abs(train_share[0] - train_share[1]) <= 1 and min(train_share) > 0


def test_a_trained_3d_bundle_predicts_once_per_real_series(
    order_run: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """pydicom's dicomdirtests (CT and MR series of real patients, downsampled) and pydicom-data's enhanced
    multi-frame MR and CT: one answer per usable series, with its slice count and SeriesInstanceUID; the rest named
    with a reason."""
    dicomdir_tests = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    enhanced = [pydicom_data_dir() / "emri_small.dcm", pydicom_data_dir() / "eCT_Supplemental.dcm"]
    capsys.readouterr()
    assert predict.main([str(order_run[1] / "model"), str(dicomdir_tests), *map(str, enhanced)]) == 0
    answer = json.loads(capsys.readouterr().out)
    found = {Path(p["location"]).name: p for p in answer["predictions"]}
    assert {name: found[name]["slices"] for name in found} == {"CT5N": 5, "emri_small.dcm": 10,
                                                               "eCT_Supplemental.dcm": 2}
    for name, prediction in found.items():
        source = dicomdir_tests / "98892001" / "CT5N" if name == "CT5N" else pydicom_data_dir() / name
        first = next(p for p in sorted(source.iterdir())) if source.is_dir() else source
        assert prediction["SeriesInstanceUID"] == pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID
        assert prediction["label"] in ("abnormal", "normal")
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in answer["bad"]}
    assert "7 different orientations" in reasons["MR700"] and "a slice is missing" in reasons["CT2"]

"""Smoke tests of the 3-D benchmark (bench/volumes.py, `python -m bench --only volumes`): (a)'s ITK pipeline reads each
series folder in slice order onto our (D, H, W) axes, and the CLI's volume run measures every case on four tiny series
(8 slices of 32x32, one ResNet18 epoch) and reports them, leaving out DenseNet121 at a depth it cannot pool. No timing
assertions: the figures of such runs mean nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bench import __main__ as cli
from bench import report, volumes
from bench.child import run_in_process
from bench.datasets import VolumeSet, make_volume_set

pytestmark = pytest.mark.slow
GRID = (8, 32, 32)  # the source grid: Resize leaves it as it is, so (a)'s voxels can be compared with the files'


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """One torch thread for every test here (tests/bench/conftest.py)."""


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> VolumeSet:
    """Four synthetic CT series of 8 slices of 32x32, random file names, in CLASS/series-N folders."""
    return make_volume_set(tmp_path_factory.mktemp("bench-volumes"), count=4, slices=8, size=32)


def test_the_monai_pipeline_reads_each_series_folder_in_slice_order(series: VolumeSet) -> None:
    folders, labels, classes = volumes.series_folders(series.train)
    assert classes == ["abnormal", "normal"] and sorted(labels) == [0, 0, 1, 1]
    transforms = volumes.monai_transforms(GRID, seed=0)
    load, to_dhw = transforms.transforms[0], transforms.transforms[-1]
    for folder in folders:
        files = sorted(Path(folder).iterdir(), key=lambda p: p.name)  # random names: not the slice order
        slices = sorted((pydicom.dcmread(p) for p in files), key=lambda d: float(d.ImagePositionPatient[2]))
        assert [d.SOPInstanceUID for d in slices] != [pydicom.dcmread(p).SOPInstanceUID for p in files]
        expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
        image = to_dhw(load({"image": folder}))["image"]
        assert tuple(image.shape) == (1, *GRID)
        np.testing.assert_array_equal(image.numpy()[0], expected)  # every slice in place, in HU, rows and columns
    sample = transforms({"image": folders[0], "label": 0})["image"]  # the whole pipeline, the random rotation too
    assert tuple(sample.shape) == (1, *GRID) and float(sample.min()) == 0.0 and float(sample.max()) == 1.0


def test_the_cli_volume_run_measures_both_sides_and_reports_them(series: VolumeSet, tmp_path: Path) -> None:
    args = cli.parse_args(
        ["--only", "volumes", "--volume-count", "4", "--volume-source", "8", "32", "--volume-grid", "8", "32", "32"]
        + ["--volume-batch-size", "2", "--volume-loader-epochs", "2", "--volume-loader-epochs-ours", "2"]
        + ["--volume-train-epochs", "1", "--volume-precision", "fp32", "--volume-accuracy-epochs", "1"]
        + ["--settle", "0", "--out", str(tmp_path)]
    )
    results = cli.run(args, runner=run_in_process)
    entry = results["volumes"]
    a, b = entry["loader"]["a"], entry["loader"]["b"]
    for figures in (a, b):
        assert figures["volumes"] == 4 and figures["shape"] == [1, *GRID] and len(figures["epochs"]) == 2
        assert figures["images_per_second"] > 0 and figures["peak_rss_mib"] > 0
    assert b["prepare_seconds"] > 0 and b["decode"]["series"] == 4
    assert list(entry["training"]) == ["resnet18"]  # DenseNet121 cannot pool a depth of 8
    assert "densenet121" in entry["left_out"] and "29" in entry["left_out"]["densenet121"]
    for side in ("a", "b"):
        trained = entry["training"]["resnet18"][side]
        assert trained["network"] == "resnet18" and trained["images_per_second"] > 0
        assert len(trained["losses"]) == 1 and math.isfinite(trained["losses"][0]) and trained["losses_finite"]
        assert trained["autocast"] == "off (fp32)"  # (a) always; (b) as --volume-precision says
    accuracy = entry["accuracy"]  # the job's own fit, one epoch here: the clock runs, the target may not be met
    assert accuracy["grid"] == [8, 24, 24] and accuracy["series"] == 48 and accuracy["validation_series"] >= 10
    assert len(accuracy["epochs"]) == 1 and accuracy["prepare_seconds"] > 0 and accuracy["autocast"] == "off (fp32)"
    assert accuracy["memory_format"] == "channels_last_3d" and accuracy["target_accuracy"] == 0.95
    reached = accuracy["epochs"][0]["val_accuracy"] >= 0.95
    assert (accuracy["epochs_to_target"] == 1) == reached and (accuracy["seconds_to_target"] is not None) == reached
    assert results["targets"] == []  # no target is set for volumes: it never fails the command
    table = report.markdown(results)
    assert "| loader | (a) MONAI | (b) ours |" in table and "| 8x32x32 |" in table
    assert "| resnet18 8x32x32 |" in table and "Left out: densenet121:" in table
    assert "Time to 0.95 validation accuracy, the job's fit on the order-only set (48 series" in table
    json.dumps(results, allow_nan=True)


def test_a_volume_grid_over_the_jobs_voxel_bound_is_refused_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--only", "volumes", "--volume-grid", "512", "512", "512"])
    assert "--volume-grid: image_size 512,512,512 is" in capsys.readouterr().err

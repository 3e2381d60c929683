"""training/synthetic.py --volumes and training/dataset/synthetic_volume.py: CT series whose order only the positions
give, a lesion sphere for 'abnormal', and the order-only set (with its scrambled control) for the 3-D tests."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from training import synthetic

LESION_HU = (250.0, 450.0)  # the lesion and the cone (320 HU) are the only voxels in this band (bone is 700)


def read_series(root: Path, series: synthetic.SyntheticSeries) -> list[tuple[str, Dataset]]:
    """(file name, dataset) of every slice of a series, in the order of the file names."""
    return [(path.name, pydicom.dcmread(path)) for path in sorted((root / series.folder).iterdir())]


def along_normal(ds: Dataset) -> float:
    """The slice's position along its normal (the cross product of the orientation's rows)."""
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    return float(np.dot(np.cross(orientation[:3], orientation[3:]), np.array(ds.ImagePositionPatient, dtype=float)))


def by_position(slices: list[tuple[str, Dataset]]) -> list[Dataset]:
    return [ds for _, ds in sorted(slices, key=lambda item: along_normal(item[1]))]


def lesion_areas(datasets: list[Dataset]) -> np.ndarray:
    """Voxels a slice holds in the lesion band, in Hounsfield units measured from the stored pixels."""
    hu = [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    return np.array([np.count_nonzero((image > LESION_HU[0]) & (image < LESION_HU[1])) for image in hu])


def rank_correlation(values: np.ndarray) -> float:
    """Spearman's rho of the values against their index (ties broken by order)."""
    ranks = np.argsort(np.argsort(values, kind="stable"))
    return float(np.corrcoef(ranks, np.arange(len(values)))[0, 1])


@pytest.fixture(scope="module")
def lesion_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[synthetic.SyntheticSeries]]:
    root = tmp_path_factory.mktemp("volumes") / "lesion"
    return root, synthetic.generate_volumes(root, count=8, slices=12, size=48, label_format="folders", seed=5)


@pytest.fixture(scope="module")
def order_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[Path, list[synthetic.SyntheticSeries]]]:
    """The order-only set and the same set with its positions scrambled, keyed by `scrambled`."""
    sets = {}
    for scrambled in (False, True):
        root = tmp_path_factory.mktemp("volumes") / f"order-{scrambled}"
        sets[scrambled] = root, synthetic.generate_volumes(
            root, count=8, slices=12, size=32, seed=9, order_only=True, scramble_positions=scrambled
        )
    return sets


def test_headers_give_one_consistent_volume_a_series(lesion_set: tuple[Path, list]) -> None:
    root, written = lesion_set
    assert sorted(series.label for series in written) == ["abnormal"] * 4 + ["normal"] * 4
    assert len({series.patient_id for series in written}) == 4
    for series in written:
        slices = read_series(root, series)
        assert len(slices) == series.slices == 12 and series.folder.startswith(f"{series.label}/series-")
        datasets = [ds for _, ds in slices]
        assert {ds.SeriesInstanceUID for ds in datasets} == {series.series_uid}
        assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUID for ds in datasets}) == 12
        for ds in datasets:
            assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert str(ds.PatientName).startswith("SYNTHETIC^PATIENT^") and ds.PatientIdentityRemoved == "YES"
            assert ds.SliceThickness == ds.SpacingBetweenSlices and ds.PixelSpacing[0] == pytest.approx(350 / 48, 1e-4)
            assert (ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth) == (1, -1024, 40, 400)
        positions = np.array([along_normal(ds) for ds in by_position(slices)])
        assert len(set(positions)) == 12
        assert np.diff(positions) == pytest.approx(float(datasets[0].SliceThickness), abs=2e-3)
        name_order = [along_normal(ds) for _, ds in slices]
        instance_order = [along_normal(ds) for ds in sorted(datasets, key=lambda ds: int(ds.InstanceNumber))]
        for order in (name_order, instance_order):  # neither names nor instance numbers give the order away
            assert order not in (sorted(order), sorted(order, reverse=True))
    assert len({series.series_uid for series in written}) == 8


def test_the_lesion_is_a_sphere_in_abnormal_volumes_sorted_by_position(lesion_set: tuple[Path, list]) -> None:
    root, written = lesion_set
    for series in written:
        slices = read_series(root, series)
        areas = lesion_areas(by_position(slices))
        if series.label == "normal":
            assert areas.max() == 0, series.folder
            continue
        holding = np.flatnonzero(areas)
        assert areas.max() >= 5 and len(holding) >= 2, (series.folder, areas)
        assert np.array_equal(holding, np.arange(holding[0], holding[-1] + 1)), areas  # one run of slices
        peak = int(np.argmax(areas))
        assert np.all(np.diff(areas[holding[0] : peak + 1]) >= -3) and np.all(np.diff(areas[peak:]) <= 3), areas
        in_name_order = lesion_areas([ds for _, ds in slices])
        assert sorted(in_name_order) == sorted(areas) and not np.array_equal(in_name_order, areas)


def test_the_order_set_differs_between_classes_only_in_order(order_sets: dict[bool, tuple[Path, list]]) -> None:
    root, written = order_sets[False]
    for first, second in zip(written[::2], written[1::2], strict=True):
        assert {first.label, second.label} == {"normal", "abnormal"} and first.patient_id == second.patient_id
        stacks = {s.label: [ds.PixelData for ds in by_position(read_series(root, s))] for s in (first, second)}
        assert sorted(stacks["normal"]) == sorted(stacks["abnormal"])  # the same slices, byte for byte
        assert stacks["normal"] == stacks["abnormal"][::-1]
    for series in written:  # sorted by position the cone grows in 'abnormal' and shrinks in 'normal'
        rho = rank_correlation(lesion_areas(by_position(read_series(root, series))))
        assert rho > 0.9 if series.label == "abnormal" else rho < -0.9, (series.folder, rho)


def test_scrambled_positions_keep_slices_and_positions_and_lose_the_order(
    order_sets: dict[bool, tuple[Path, list]],
) -> None:
    (root, written), (scrambled_root, scrambled) = order_sets[False], order_sets[True]
    assert [(s.label, s.series_uid) for s in written] == [(s.label, s.series_uid) for s in scrambled]
    correlations = []
    for series, control in zip(written, scrambled, strict=True):
        ordered, shuffled = read_series(root, series), read_series(scrambled_root, control)
        assert sorted(ds.PixelData for _, ds in ordered) == sorted(ds.PixelData for _, ds in shuffled)
        assert sorted(map(along_normal, (ds for _, ds in ordered))) == sorted(
            map(along_normal, (ds for _, ds in shuffled))
        )
        correlations.append(rank_correlation(lesion_areas(by_position(shuffled))))
    assert max(abs(rho) for rho in correlations) < 0.5, correlations  # the class no longer shows in the order


def test_same_seed_same_files(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.dcm")}

    for name in ("a", "b"):
        synthetic.generate_volumes(tmp_path / name, count=4, slices=4, size=32, seed=3)
    synthetic.generate_volumes(tmp_path / "c", count=4, slices=4, size=32, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert set(digest(tmp_path / "a")).isdisjoint(digest(tmp_path / "c"))


def test_command_line_writes_series_and_their_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "csv"
    args = synthetic.parse_args([str(out), "--volumes", "--count", "4", "--slices", "5", "--size", "32"])
    assert synthetic.main(args) == 0
    assert "wrote 4 synthetic CT series (5 slices of 32x32, csv labels) of 2 patients" in capsys.readouterr().out
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    folders = sorted((out / "series").iterdir())
    assert len(rows) == len(folders) == 4 and set(rows[0]) == {"series_uid", "label"}
    found = {pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID for folder in folders}
    assert found == {row["series_uid"] for row in rows}
    assert all(len(list(folder.iterdir())) == 5 for folder in folders)
    assert synthetic.main(args) == 2 and "is not empty" in capsys.readouterr().err
    two_d = synthetic.parse_args([str(tmp_path / "2d")])
    assert (two_d.count, two_d.size, two_d.volumes) == (400, 256, False)  # the 2-D defaults are unchanged


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--volumes", "--slices", "3"], "slices must be in [4, 512]; got 3"),
        (["--volumes", "--size", "16"], "size must be in [32, 512] for volumes; got 16"),
        (["--volumes", "--count", "5", "--order-only"], "even for the order set"),
        (["--volumes", "--format", "groundtruth"], "one of csv, folders for volumes"),
        (["--volumes", "--count", "10000", "--slices", "512", "--size", "512"], "GiB exceeds 8 GiB"),
    ],
)
def test_command_line_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert synthetic.main(synthetic.parse_args([str(tmp_path / "out"), *argv])) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", [["--slices", "8"], ["--order-only"], ["--scramble-positions"]])
def test_volume_flags_need_volumes(capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        synthetic.parse_args(["out", *flag])
    assert exit_.value.code == 2 and f"{flag[0]}: only with --volumes" in capsys.readouterr().err

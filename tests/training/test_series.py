"""Series assembly (training/dataset/series.py) on real DICOM nobody here wrote: pydicom's dicomdirtests series and
pydicom-data's enhanced multi-frame files. Broken cases are made by each test from copies of those real files."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.training.dicom_builders import pydicom_data_dir
from training.dataset import series as series_module
from training.dataset.dicom import dicom_files_under, has_dicom_marker
from training.dataset.series import SeriesReport, assemble

DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"  # 5 axial CT slices, 2.5 mm apart, 16 x 16 at 0.488281 mm


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and has_dicom_marker(p))


def _identifiers(files: list[Path]) -> set[str]:
    """Every UID and patient identifier the files hold (none may reach a reason, a name or a note)."""
    found: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "PatientID", "PatientName",
                            "AccessionNumber"):
                value = str(ds.get(keyword, "") or "").strip()
                if len(value) >= 4:
                    found.add(value)
    return found


def _assert_no_identifiers(report: SeriesReport, files: list[Path]) -> None:
    """What we write (reasons, names, notes) holds no identifier; a record's repr holds no UID. File paths are the
    data's own (dicomdirtests names folders by patient) and are not checked."""
    said = json.dumps([[(e["series"], e["reason"]) for e in report.bad + report.skipped if "series" in e],
                       [e["reason"] for e in report.skipped], [(s.name, s.notes) for s in report.series]])
    assert [value for value in _identifiers(files) if value in said] == []
    for record in report.series:
        uids = {record.series_uid, record.study_uid, *(ref.sop_instance_uid for ref in record.slices)}
        assert all(uid and uid not in repr(record) for uid in uids)


def _copy_ct5n(tmp_path: Path) -> list[Path]:
    """The five CT5N files under random names in random nested folders (sorted by name: a random order)."""
    rng = random.Random(7)
    out = []
    for source in sorted(CT5N.iterdir()):
        target = tmp_path / f"d{rng.randrange(100)}" / f"e{rng.randrange(100)}" / f"{rng.getrandbits(40):x}.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        out.append(Path(shutil.copy(source, target)))
    return sorted(out)


def _edit(path: Path, **values: object) -> None:
    """Rewrite one copied file with new attribute values (None deletes the attribute)."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_the_dicomdirtests_series_are_found_with_their_slice_counts_and_spacing() -> None:
    files = _dicom_files(DICOMDIR_TESTS)
    report = assemble(files, root=DICOMDIR_TESTS)
    good = {s.location: s for s in report.series}
    assert list(good) == ["98892001/CT5N"]  # the only real volume in the folder
    ct = good["98892001/CT5N"]
    assert (ct.slice_count, ct.rows, ct.columns, ct.modality) == (5, 16, 16, "CT")
    assert ct.slice_spacing == pytest.approx(2.5)
    assert ct.pixel_spacing == pytest.approx((0.488281, 0.488281))
    assert ct.orientation == pytest.approx((1, 0, 0, 0, 1, 0))
    assert [_z(f) for f in ct.files] == pytest.approx([-1.2375, 1.2625, 3.7625, 6.2625, 8.7625])
    assert ct.origin == pytest.approx((-72.199997, -143.0, -1.2375))
    bad = {(e["file"], e["reason"].split(":")[0].split(";")[0]) for e in report.bad}
    # The real CT2 keeps 4 of its slices: 3 at 1.25 mm and one 202.5 mm away.
    assert ("77654033/CT2", "1 gap(s) over 1.5 x the median spacing of 1.25 mm (202.5 mm between slices 1 and 2 of 4, "
            "counted along the slice normal)") in bad
    reasons = {e["file"]: e["reason"] for e in report.bad}
    assert "2 different orientations" in reasons["98892001/CT2N"]  # two scouts, one lateral, one frontal
    assert "7 different orientations" in reasons["98892003/MR700"]  # a radial localizer
    assert "no ImagePositionPatient" in reasons["77654033/CR1"]  # a projection image
    assert sum("3 different orientations" in e["reason"] for e in report.bad) == 2  # MR2's two tri-plane scouts
    # TINY_ALPHA's 50 CT headers carry no Rows or Columns; the DICOMDIRs are indexes.
    assert sum("no Rows or Columns" in e["reason"] for e in report.skipped) == 50
    assert sum("DICOMDIR" in e["reason"] for e in report.skipped) == 8
    _assert_no_identifiers(report, files)
    assert json.loads(json.dumps(report.listing()))["series"][0]["slices"] == 5
    assert report.lines()[0] == "series 6: 98892001/CT5N: 5 slices of 16 x 16, spacing 0.4883 x 0.4883 x 2.5 mm"


def test_enhanced_multiframe_files_are_series_of_their_frames() -> None:
    folder = pydicom_data_dir()
    files = [folder / "emri_small.dcm", folder / "eCT_Supplemental.dcm"]
    report = assemble(files, root=folder)
    assert report.bad == []
    mr, ct = sorted(report.series, key=lambda s: s.location, reverse=True)
    # emri_small: 10 frames, 64 x 64, no functional groups: its stored order and SpacingBetweenSlices 1.2 mm.
    assert (mr.location, mr.slice_count, mr.rows, mr.multiframe) == ("emri_small.dcm", 10, 64, True)
    assert mr.slice_spacing == pytest.approx(1.2)
    assert [ref.frame for ref in mr.slices] == list(range(10))
    assert mr.pixel_spacing is None and any("stored order" in note for note in mr.notes)
    # eCT_Supplemental: 2 frames 10 mm apart by their PlanePositionSequence; the normal of [-1,0,0, 0,1,0] is -z,
    # so frame 1 (z -149) comes before frame 0 (z -159).
    assert (ct.slice_count, ct.rows, ct.columns) == (2, 512, 512)
    assert ct.slice_spacing == pytest.approx(10.0)
    assert ct.pixel_spacing == pytest.approx((0.388672, 0.388672))
    assert [ref.frame for ref in ct.slices] == [1, 0]
    assert ct.origin == pytest.approx((99.5, -301.5, -149.0))
    _assert_no_identifiers(report, files)


def test_order_comes_from_positions_not_names_or_instance_numbers(tmp_path: Path) -> None:
    files = _copy_ct5n(tmp_path)
    report = assemble(list(reversed(files)), root=tmp_path)
    (ct,) = report.series
    assert report.bad == []
    zs = [_z(f) for f in ct.files]
    assert zs == sorted(zs) and len(zs) == 5
    assert [_z(f) for f in files] != zs  # the names alone would not give this order
    numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in ct.files]
    assert numbers == [10, 9, 8, 7, 6]  # nor would InstanceNumber
    assert [r.sop_instance_uid for r in ct.slices] == [
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct.files]


def _by_z(files: list[Path]) -> list[Path]:
    return sorted(files, key=_z)


def test_a_missing_slice_is_a_gap(tmp_path: Path) -> None:
    files = _by_z(_copy_ct5n(tmp_path))
    files[2].unlink()
    report = assemble(files[:2] + files[3:], root=tmp_path)
    assert report.series == []
    (entry,) = report.bad
    assert entry["series"] == "series 1"
    assert entry["reason"].startswith("1 gap(s) over 1.5 x the median spacing of 2.5 mm (5 mm between slices 2 and 3")
    assert entry["reason"].endswith("a slice is missing")
    _assert_no_identifiers(report, files[:2] + files[3:])


def test_a_duplicated_position_is_named(tmp_path: Path) -> None:
    files = _copy_ct5n(tmp_path)
    twin = Path(shutil.copy(files[0], tmp_path / "twin"))
    _edit(twin, SOPInstanceUID=generate_uid())
    report = assemble([*files, twin], root=tmp_path)
    assert report.series == []
    (entry,) = report.bad
    assert entry["reason"].startswith("1 duplicated position(s): slices")
    assert "of 6 (counted along the slice normal) lie within 0.01 mm" in entry["reason"]
    _assert_no_identifiers(report, [*files, twin])


def test_a_localizer_inside_the_series_is_split_off(tmp_path: Path) -> None:
    files = _copy_ct5n(tmp_path)
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    scout = Path(shutil.copy(DICOMDIR_TESTS / "98892001" / "CT2N" / "6924", tmp_path / "scout"))  # a lateral scout
    _edit(scout, SeriesInstanceUID=series_uid)
    report = assemble([scout, *files], root=tmp_path)
    (ct,) = report.series
    assert ct.slice_count == 5 and ct.slice_spacing == pytest.approx(2.5)
    assert ct.notes == ("1 slice(s) of another orientation or size split off",)
    (entry,) = report.bad
    assert entry["series"] == "series 1 part 2"
    assert entry["reason"] == ("1 slice split off from series 1: its orientation differs from that of the other 5 "
                               "slices (a localizer?)")
    _assert_no_identifiers(report, [scout, *files])


def test_mixed_sizes_are_split_off(tmp_path: Path) -> None:
    files = _copy_ct5n(tmp_path)
    small = Path(shutil.copy(_by_z(files)[-1], tmp_path / "small"))
    ds = pydicom.dcmread(small)
    ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
    ds.Rows, ds.Columns = 8, 8
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 11.2625]
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(small)
    report = assemble([*files, small], root=tmp_path)
    assert [s.slice_count for s in report.series] == [5]
    (entry,) = report.bad
    assert entry["reason"].startswith("1 slice split off from series 1: its size (8 x 8, not 16 x 16) differs")


def test_mixed_pixel_spacing_is_bad(tmp_path: Path) -> None:
    files = _copy_ct5n(tmp_path)
    _edit(files[1], PixelSpacing=[0.5, 0.5])
    report = assemble(files, root=tmp_path)
    assert report.series == []
    (entry,) = report.bad
    assert entry["reason"].startswith("mixed pixel spacing (")
    assert "0.5 x 0.5" in entry["reason"] and "0.488281 x 0.488281" in entry["reason"]


def test_files_without_position_form_no_volume(tmp_path: Path) -> None:
    files = _copy_ct5n(tmp_path)
    for path in files[:2]:
        _edit(path, ImagePositionPatient=None)
    report = assemble(files, root=tmp_path)
    assert report.series == []
    (entry,) = report.bad
    assert entry["reason"].startswith("2 of its 5 slice(s) have no ImagePositionPatient or ImageOrientationPatient")


def test_the_bounds_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _copy_ct5n(tmp_path)
    monkeypatch.setattr(series_module, "MAX_SERIES_FILES", 4)
    (entry,) = assemble(files, root=tmp_path).bad
    assert entry["reason"] == "it has 5 files; a series holds at most 4 (training.dataset.series.MAX_SERIES_FILES)"
    monkeypatch.setattr(series_module, "MAX_FILES", 4)
    with pytest.raises(ValueError, match=r"5 files given; at most 4 .*training.dataset.series.MAX_FILES"):
        assemble(files)
    monkeypatch.setattr(series_module, "MAX_VOLUME_VOXELS", 1000)
    monkeypatch.setattr(series_module, "MAX_FILES", 100)
    (entry,) = assemble(files[:4], root=tmp_path).bad
    assert entry["reason"].startswith("it has 4 slices of 16 x 16, 1024 voxels; a volume holds at most 1000")


def test_the_dicom_files_below_a_folder_are_found_by_their_marker_and_bounded(tmp_path: Path) -> None:
    """One listing for the data layer, predict, the notebook and upload_series: any name and depth, by the marker;
    hidden folders, DICOMDIR indexes and other files left out; a bound that stops the walk."""
    sources = sorted(CT5N.iterdir())
    (tmp_path / "d").mkdir()
    kept = [Path(shutil.copy(sources[0], tmp_path / "a.bin")), Path(shutil.copy(sources[1], tmp_path / "d" / "e"))]
    (tmp_path / ".ipynb_checkpoints").mkdir()
    shutil.copy(sources[2], tmp_path / ".ipynb_checkpoints" / "a.bin")  # a notebook's hidden copy
    shutil.copy(DICOMDIR_TESTS / "DICOMDIR", tmp_path / "d" / "DICOMDIR")  # an index, with the marker
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert has_dicom_marker(tmp_path / "d" / "DICOMDIR")
    assert dicom_files_under(tmp_path) == sorted(kept)
    assert dicom_files_under(tmp_path, limit=2) == sorted(kept)
    with pytest.raises(ValueError, match=f"{tmp_path} holds more than 1 DICOM files"):
        dicom_files_under(tmp_path, limit=1)

"""The data layer for volumes (training/dataset/prepare_volumes.py, issue 21 item 4) on synthetic series written in
random order under random names (training.synthetic generate_volumes) and on pydicom's real CT5N: shapes, labels per
series, the split by patient, determinism, bad series under on_bad_file, and no UID or patient identifier written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from training import synthetic
from training.dataset.dicom import has_dicom_marker
from training.dataset.labels import DataError
from training.dataset.prepare import DataOptions
from training.dataset.prepare_volumes import VolumeOptions, prepare_volumes
from training.dataset.split import PreparedData

KEY = bytes(range(32))
SIZE = (8, 16, 16)
DICOMDIR_TESTS = Path(str(get_testdata_file("CT_small.dcm"))).parent / "dicomdirtests"


def _options(**overrides: object) -> VolumeOptions:
    settings: dict[str, object] = {"image_size": SIZE, "pseudonym_key": KEY, "val_fraction": 0.25, "workers": 1}
    return VolumeOptions(**{**settings, **overrides})  # type: ignore[arg-type]


def _identifiers(root: Path) -> set[str]:
    """Every UID and patient identifier in the files under root."""
    found: set[str] = set()
    for path in (p for p in root.rglob("*") if p.is_file() and has_dicom_marker(p)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID", "PatientID", "PatientName"):
            value = str(ds.get(keyword, "") or "")
            if len(value) > 3:
                found.add(value)
    return found


def _assert_no_identifier(root: Path, *texts: str) -> None:
    identifiers = _identifiers(root)
    assert identifiers
    for text in texts:
        assert not [value for value in identifiers if value in text]


def _sides(data: PreparedData) -> dict[str, set[str]]:
    return {"train": set(data.train.patients), "validation": set(data.validation.patients)}


@pytest.mark.parametrize("label_format", ["csv", "folders"])
def test_series_become_volumes_with_their_labels_split_by_patient(tmp_path: Path, label_format: str) -> None:
    made = synthetic.generate_volumes(tmp_path / "train", count=8, slices=6, size=32, label_format=label_format)
    data = prepare_volumes({"train": tmp_path / "train"}, _options(), output_dir=tmp_path / "out")
    assert data.classes == ["abnormal", "normal"] and data.test is None and data.bad_files == []
    for split in (data.train, data.validation):
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape) == (len(split), 1, *SIZE)
        assert all(int(volume.max()) > 0 for volume in split.images)
    assert len(data.train) + len(data.validation) == len(made) and len(data.validation) > 0
    truth = {series.folder: series.label for series in made}
    sides_ = (data.train, data.validation)
    got = {f: data.classes[int(i)] for s in sides_ for f, i in zip(s.files, s.labels, strict=True)}
    assert got == truth
    sides = _sides(data)
    assert sides["train"] and sides["validation"] and not sides["train"] & sides["validation"]
    assert len(data.summary["series"]["train"]) == len(made) and data.summary["kind"] == "volumes"
    assert not (tmp_path / "out" / "bad_files.json").exists()
    _assert_no_identifier(tmp_path / "train", json.dumps(data.summary))
    again = prepare_volumes({"train": tmp_path / "train"}, _options())
    assert again.train.files == data.train.files and torch.equal(again.train.images, data.train.images)
    assert again.validation.files == data.validation.files


def _remove_a_middle_slice(folder: Path) -> None:
    slices = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                          .ImagePositionPatient[2]))
    slices[len(slices) // 2].unlink()


def test_a_series_with_a_missing_slice_is_skipped_or_fails(tmp_path: Path) -> None:
    made = synthetic.generate_volumes(tmp_path / "train", count=8, slices=6, size=32, seed=3)
    _remove_a_middle_slice(tmp_path / "train" / made[0].folder)
    data = prepare_volumes({"train": tmp_path / "train"}, _options(on_bad_file="skip"), output_dir=tmp_path / "out")
    # the series alone: its labels.csv row is answered by the series' own entry (series_labels.py's rule)
    (entry,) = data.bad_files
    assert entry["channel"] == "train" and entry["file"] == made[0].folder and "a slice is missing" in entry["reason"]
    assert made[0].folder not in data.train.files + data.validation.files
    assert len(data.train) + len(data.validation) == len(made) - 1
    written = (tmp_path / "out" / "bad_files.json").read_text(encoding="utf-8")
    assert json.loads(written) == data.bad_files
    _assert_no_identifier(tmp_path / "train", written, json.dumps(data.summary))
    with pytest.raises(DataError) as failed:
        prepare_volumes({"train": tmp_path / "train"}, _options(on_bad_file="fail"))
    assert made[0].folder in str(failed.value) and "missing" in str(failed.value)
    assert failed.value.problems == data.bad_files
    _assert_no_identifier(tmp_path / "train", str(failed.value))


def test_real_ct5n_in_a_class_folder_decodes(tmp_path: Path) -> None:
    made = synthetic.generate_volumes(tmp_path / "made", count=4, slices=6, size=32, label_format="folders")
    shutil.copytree(tmp_path / "made" / made[0].folder, tmp_path / "train" / "synthetic" / "s1")
    shutil.copytree(DICOMDIR_TESTS / "98892001" / "CT5N", tmp_path / "train" / "real" / "ct5n")
    shutil.copytree(DICOMDIR_TESTS / "98892001" / "CT2N", tmp_path / "train" / "real" / "ct2n")
    data = prepare_volumes({"train": tmp_path / "train"}, _options(val_fraction=0.0, on_bad_file="skip",
                                                                  cache_memory_mb=0, cache_dir=tmp_path / "cache"),
                           output_dir=tmp_path / "out")
    assert data.summary["cache"]["location"] == "disk"  # beyond the budget: a memmap, its file already unlinked
    assert list((tmp_path / "cache").iterdir()) == []
    assert data.classes == ["real", "synthetic"] and data.train.files == ["real/ct5n", "synthetic/s1"]
    assert tuple(data.train.images.shape) == (2, 1, *SIZE) and int(data.train.images[0].max()) > 0
    assert [e["file"] for e in data.bad_files] == ["real/ct2n"] and data.bad_files[0]["reason"]
    _assert_no_identifier(tmp_path / "train", json.dumps(data.summary),
                          (tmp_path / "out" / "bad_files.json").read_text(encoding="utf-8"))


def test_the_options_take_three_sides_and_the_2d_options_still_refuse_them() -> None:
    assert _options().image_size == SIZE
    with pytest.raises(ValueError, match="three values"):
        DataOptions(image_size=SIZE)
    with pytest.raises(ValueError, match="three values"):
        VolumeOptions(image_size=(16, 16))


def test_a_series_that_fails_to_decode_is_a_bad_series(tmp_path: Path) -> None:
    made = synthetic.generate_volumes(tmp_path / "train", count=8, slices=6, size=32, label_format="folders")
    cut = next((tmp_path / "train" / made[1].folder).iterdir())
    cut.write_bytes(cut.read_bytes()[:-1000])  # the header reads, the pixel data is short
    data = prepare_volumes({"train": tmp_path / "train"}, _options(on_bad_file="skip"))
    assert [e["file"] for e in data.bad_files] == [made[1].folder]
    assert "cannot be decoded" in data.bad_files[0]["reason"] and cut.name not in data.bad_files[0]["reason"]
    assert made[1].folder not in data.train.files + data.validation.files
    _assert_no_identifier(tmp_path / "train", json.dumps(data.bad_files))

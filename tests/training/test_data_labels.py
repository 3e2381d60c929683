"""training/dataset/labels.py: finding DICOM files and labels in each label format, and the errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.training.dicom_builders import gradient, write_image, write_labels_csv
from training.dataset.labels import (
    FORMAT_CSV,
    FORMAT_FOLDERS,
    FORMAT_GROUNDTRUTH,
    FORMAT_METADATA_JSON,
    DataError,
    list_channel,
)
from training.synthetic import generate

FORMATS = {
    "csv": FORMAT_CSV,
    "groundtruth": FORMAT_GROUNDTRUTH,
    "metadata-json": FORMAT_METADATA_JSON,
    "folders": FORMAT_FOLDERS,
}


@pytest.mark.parametrize("synthetic_format", sorted(FORMATS))
def test_each_format_gives_every_file_its_label(tmp_path: Path, synthetic_format: str) -> None:
    written = generate(tmp_path, count=12, label_format=synthetic_format, size=64)
    listing = list_channel("train", tmp_path)
    assert listing.label_format == FORMATS[synthetic_format]
    assert {(item.file, item.label) for item in listing.items} == {(image.file, image.label) for image in written}
    assert listing.bad == [] and listing.skipped == []


def test_files_without_suffix_dicomdir_and_other_files(tmp_path: Path) -> None:
    generate(tmp_path, count=12, size=64)
    (tmp_path / "README.txt").write_text("synthetic\n")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0" * 300)
    write_image(tmp_path / "DICOMDIR", gradient())
    write_image(tmp_path / "extra" / "unlabeled", gradient())
    (tmp_path / ".ipynb_checkpoints").mkdir()
    write_image(tmp_path / ".ipynb_checkpoints" / "hidden.dcm", gradient())
    listing = list_channel("train", tmp_path)
    assert len(listing.items) == 12
    assert any(not item.file.endswith(".dcm") for item in listing.items)  # detected by the marker, not the name
    assert {e["file"]: e["reason"] for e in listing.skipped} == {
        "DICOMDIR": "a DICOMDIR index, not an image",
        "README.txt": "not a DICOM file (no 'DICM' marker at byte 128)",
        "images/.DS_Store": "not a DICOM file (no 'DICM' marker at byte 128)",
        "extra/unlabeled": "DICOM file without a label (no row in labels.csv)",
    }


def test_csv_bad_rows_are_reported_by_file(tmp_path: Path) -> None:
    write_image(tmp_path / "a.dcm", gradient())
    write_image(tmp_path / "b.dcm", gradient())
    (tmp_path / "notes.txt").write_text("not an image")
    write_labels_csv(
        tmp_path,
        [
            ("a.dcm", "normal", "P1"),
            ("./b.dcm", "abnormal", ""),
            ("a.dcm", "abnormal", "P1"),
            ("missing.dcm", "normal", "P2"),
            ("notes.txt", "normal", "P3"),
            ("../outside.dcm", "normal", "P4"),
            ("b.dcm", "", ""),
        ],
        header=("file", "label", "patient_id"),
    )
    listing = list_channel("train", tmp_path)
    assert [(i.file, i.label, i.patient_id) for i in listing.items] == [
        ("a.dcm", "normal", "P1"),
        ("b.dcm", "abnormal", None),
    ]
    reasons = {e["file"]: e["reason"] for e in listing.bad}
    assert "labeled twice ('normal' and 'abnormal'" in reasons["a.dcm"]
    assert reasons["missing.dcm"] == "listed in labels.csv but not found in the channel"
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "not a relative path inside the channel" in reasons["labels.csv line 7"]


def test_csv_without_header_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "a.dcm", gradient())
    (tmp_path / "labels.csv").write_text("a.dcm,normal\n")
    with pytest.raises(DataError, match="header row naming the columns file,label"):
        list_channel("train", tmp_path)


def test_groundtruth_keys_map_below_any_prefix_or_by_basename(tmp_path: Path) -> None:
    write_image(tmp_path / "study1" / "x.dcm", gradient())
    write_image(tmp_path / "y.dcm", gradient())
    write_image(tmp_path / "one" / "dup.dcm", gradient())
    write_image(tmp_path / "two" / "dup.dcm", gradient())
    meta = {"type": "groundtruth/image-classification", "job-name": "labeling-job/chest"}
    lines = [
        {"source-ref": "s3://bucket/a/prefix/study1/x.dcm", "chest": 0, "chest-metadata": {"class-name": "a", **meta}},
        {"source-ref": "s3://bucket/elsewhere/y.dcm", "chest": 1, "chest-metadata": {"class-name": "b", **meta}},
        {"source-ref": "s3://bucket/p/dup.dcm", "chest": 1, "chest-metadata": {"class-name": "b", **meta}},
        {"source-ref": "s3://bucket/p/gone.dcm", "chest": 1, "chest-metadata": {"class-name": "b", **meta}},
        {"source-ref": "s3://bucket/p/two/dup.dcm", "chest-metadata": {"failure-reason": "ClientError: timeout"}},
    ]
    (tmp_path / "output.manifest").write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")
    listing = list_channel("train", tmp_path)
    assert [(i.file, i.label) for i in listing.items] == [("study1/x.dcm", "a"), ("y.dcm", "b")]
    reasons = {e["file"]: e["reason"] for e in listing.bad}
    assert reasons["p/dup.dcm"].startswith("ambiguous: 2 files are named dup.dcm")
    assert reasons["p/gone.dcm"].startswith("not found in the channel (output.manifest line 4)")
    assert "no 'chest' class-name" in reasons["two/dup.dcm"] and "timeout" in reasons["two/dup.dcm"]
    assert reasons["output.manifest line 6"].startswith("not JSON")


def test_groundtruth_with_two_label_attributes_needs_a_choice(tmp_path: Path) -> None:
    write_image(tmp_path / "x.dcm", gradient())
    line = {
        "source-ref": "s3://b/x.dcm",
        "first": 0,
        "first-metadata": {"class-name": "a"},
        "second": 1,
        "second-metadata": {"class-name": "b"},
    }
    (tmp_path / "output.manifest").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match="several: first, second; set label_attribute"):
        list_channel("train", tmp_path)
    assert [i.label for i in list_channel("train", tmp_path, label_attribute="second").items] == ["b"]


def test_metadata_json_records(tmp_path: Path) -> None:
    write_image(tmp_path / "0a-1b.dcm", gradient())
    write_image(tmp_path / "deep" / "2c-3d.dcm", gradient())

    def record(url: str, label: object, disease: dict[str, bool] | None = None) -> dict[str, object]:
        content = {"disease": disease or {}, "labels": json.dumps({"label": label, "imageurl": url})}
        return {"annotations": [{"annotationData": {"content": json.dumps(content)}}]}

    records = [
        record("https://pacs/instances/0a-1b/file", ["Pneumonia"]),
        record("https://pacs/instances/2c-3d/file", [], {"Normal": True, "Pneumonia": False}),
        record("https://pacs/instances/4e-5f/file", ["Normal"]),
        record("https://pacs/instances/0a-1b/file", ["Normal", "Pneumonia"]),
        record("https://pacs/studies/xyz", ["Normal"]),
        {"annotations": []},
    ]
    (tmp_path / "meta-data.json").write_text(json.dumps(records))
    listing = list_channel("train", tmp_path)
    assert [(i.file, i.label) for i in listing.items] == [("0a-1b.dcm", "Pneumonia"), ("deep/2c-3d.dcm", "Normal")]
    reasons = {e["file"]: e["reason"] for e in listing.bad}
    assert reasons["4e-5f.dcm"].startswith("not found in the channel (meta-data.json record 2)")
    assert reasons["meta-data.json record 3"].startswith("2 labels chosen (Normal, Pneumonia)")
    assert "instances/<id>/file" in reasons["meta-data.json record 4"]
    assert "meta-data.json record 5" in reasons


def test_two_label_formats_at_once_is_an_error_naming_both(tmp_path: Path) -> None:
    generate(tmp_path, count=4, size=64)
    (tmp_path / "output.manifest").write_text("")
    with pytest.raises(DataError, match=r"several label files: labels.csv, output.manifest\. Expected exactly one of"):
        list_channel("train", tmp_path)


def test_no_labels_is_an_error_naming_what_was_found(tmp_path: Path) -> None:
    write_image(tmp_path / "a.dcm", gradient())
    with pytest.raises(DataError, match="no labels found.*Found 1 DICOM file"):
        list_channel("train", tmp_path)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "is empty"),
        (lambda root: (root / "notes.txt").write_text("x"), "holds no DICOM file.*notes.txt"),
        (lambda root: shutil.rmtree(root), "is not a directory"),
    ],
    ids=["empty", "no-dicom", "missing"],
)
def test_unusable_channel_directories(tmp_path: Path, setup: object, message: str) -> None:
    root = tmp_path / "train"
    root.mkdir()
    setup(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=message):
        list_channel("train", root)

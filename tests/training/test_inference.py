"""training/inference.py's SageMaker handlers and training/predict.py on the session's trained bundle.

The reference is the bundle loaded directly: its network from models/model.pt (training.job.bundle.load_network) on
training.dataset.dicom.load_image's output at the image size and window of configs/inference.json. The handlers must
give the same labels and probabilities for the job's synthetic test files and for real files of pydicom-data.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from tests.training.dicom_builders import pydicom_data_dir, write_structured_report
from training import inference, predict
from training.dataset.dicom import load_image
from training.job.bundle import load_network
from training.job.evaluation import predict as decide

# Real files of several kinds: JPEG 2000, colour (YBR_RCT, RGB), RLE multi-frame, JPEG lossless, 1-bit frames.
PYDICOM_DATA = ["MR2_J2KR.dcm", "US1_UNCR.dcm", "emri_small_RLE.dcm", "SC_rgb.dcm", "JPEG-LL.dcm", "liver.dcm"]


@pytest.fixture(scope="module")
def model(job_bundle: Path) -> inference.Predictor:
    return inference.model_fn(job_bundle)


@pytest.fixture(scope="module")
def direct(job_bundle: Path):
    """The bundle loaded directly: path -> (label, probabilities by class)."""
    config = json.loads((job_bundle / "configs" / "inference.json").read_text())
    network = load_network(job_bundle)
    classes, size = config["class_names"], tuple(config["image_size"])
    window = tuple(config["window"]) if config["window"] is not None else None

    def classify(path: Path) -> tuple[str, dict[str, float]]:
        image = torch.from_numpy(load_image(path, image_size=size, window=window))[None]
        with torch.inference_mode():
            p = torch.softmax(network(image).float() / config["temperature"], dim=1).numpy()  # calibrated
        label = int(decide(p, threshold=config["threshold"], positive=config["positive_index"])[0])
        return classes[label], dict(zip(classes, p[0].tolist(), strict=True))

    return classify


def _invoke(model: inference.Predictor, body: bytes, content_type: str, accept: str | None = "application/json"):
    payload, kind = inference.output_fn(inference.predict_fn(inference.input_fn(body, content_type), model), accept)
    assert kind == "application/json"
    return json.loads(payload)["predictions"]


def _assert_same(result: dict, expected: tuple[str, dict[str, float]], path: Path) -> None:
    label, probabilities = expected
    assert result["label"] == label, path
    assert result["probabilities"].keys() == probabilities.keys()
    np.testing.assert_allclose(list(result["probabilities"].values()), list(probabilities.values()), atol=1e-5)
    assert result["SOPInstanceUID"] == str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_one_synthetic_file_at_a_time_matches_the_bundle_loaded_directly(model, direct, job_test_files):
    for name in job_test_files[:8]:
        path = Path(name)
        (result,) = _invoke(model, path.read_bytes(), "application/dicom")
        assert result["file"] == "body"
        _assert_same(result, direct(path), path)


def test_a_zip_gives_one_result_per_file_in_name_order_and_skips_archiver_extras(model, direct, job_test_files):
    paths = [Path(p) for p in job_test_files]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, path in enumerate(paths):
            archive.writestr(f"study/{i:03d}-{path.name}", path.read_bytes())
        archive.writestr("__MACOSX/study/._000", b"resource fork")
        archive.writestr("study/.DS_Store", b"finder")
        archive.writestr("empty/", b"")
    results = _invoke(model, buffer.getvalue(), "application/zip; charset=binary", accept="*/*")
    assert [r["file"] for r in results] == [f"study/{i:03d}-{p.name}" for i, p in enumerate(paths)]
    for result, path in zip(results, paths, strict=True):
        _assert_same(result, direct(path), path)


def test_real_files_of_pydicom_data_match_the_bundle_loaded_directly(model, direct):
    paths = [pydicom_data_dir() / name for name in PYDICOM_DATA]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in paths:
            archive.write(path, path.name)
    results = {r["file"]: r for r in _invoke(model, buffer.getvalue(), "application/zip")}
    assert sorted(results) == sorted(PYDICOM_DATA)
    for path in paths:
        _assert_same(results[path.name], direct(path), path)


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"", "application/dicom", 400, "the request body is empty"),
        (b"%PDF-1.7 not an image" * 20, "application/dicom", 400, "not a DICOM Part 10 file"),
        (b"{}", "application/json", 415, "Content-Type 'application/json' is not supported"),
        (b"DICM", None, 415, "Content-Type None is not supported"),
        (b"PK\x03\x04 broken", "application/zip", 400, "not a readable zip file"),
        (_zip(**{"notes.txt": b"hello"}), "application/zip", 400, "notes.txt: not a DICOM Part 10 file"),
        (_zip(), "application/zip", 400, "the zip holds no files"),
    ],
    # Named ids: a zip's bytes carry the time it was made, and xdist workers must collect the same names.
    ids=["empty", "pdf", "json", "no-content-type", "broken-zip", "zip-of-text", "empty-zip"],
)
def test_bad_input_is_refused_with_a_status_and_a_reason(body, content_type, status, reason):
    with pytest.raises(inference.InvalidInput) as caught:
        inference.input_fn(body, content_type)
    assert caught.value.status == status
    assert reason in caught.value.reason


def test_dicom_without_pixels_is_refused_with_its_name(model, tmp_path):
    report = write_structured_report(tmp_path / "sr.dcm")
    too_short = pydicom_data_dir() / "emri_small_jpeg_2k_lossless_too_short.dcm"
    for body, content_type, name in [
        (report.read_bytes(), "application/dicom", "body"),
        (_zip(**{"a/short.dcm": too_short.read_bytes()}), "application/zip", "a/short.dcm"),
    ]:
        with pytest.raises(inference.InvalidInput) as caught:
            inference.predict_fn(inference.input_fn(body, content_type), model)
        assert caught.value.status == 400
        assert caught.value.reason.startswith(f"{name}: ") and "pixel data" in caught.value.reason
        assert "SYNTHETIC^SR" not in caught.value.reason


def test_an_accept_other_than_json_is_refused_with_406():
    with pytest.raises(inference.InvalidInput) as caught:
        inference.output_fn([], "text/csv")
    assert caught.value.status == 406
    assert inference.output_fn([], "application/json; q=1, text/csv")[1] == "application/json"


def test_model_fn_names_a_directory_without_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no MONAI bundle"):
        inference.model_fn(tmp_path)


def test_predict_cli_prints_the_handlers_json_for_files_and_directories(job_bundle, direct, job_test_files, capsys):
    first = Path(job_test_files[0])
    folder = first.parent
    assert predict.main([str(job_bundle), str(first), str(folder)]) == 0
    results = json.loads(capsys.readouterr().out)["predictions"]
    in_folder = inference.find_dicom_files(folder)
    assert [r["file"] for r in results] == [str(first), *in_folder]
    for result in results:
        _assert_same(result, direct(Path(result["file"])), Path(result["file"]))


def test_predict_cli_stops_with_the_reason_of_a_bad_file(job_bundle, tmp_path, capsys):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    assert predict.main([str(job_bundle), str(bad)]) == 2
    assert "not a DICOM Part 10 file" in capsys.readouterr().err

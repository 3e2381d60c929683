"""The server with a 3-D bundle (issue 21 item 5): one request is one series, a zip of its slices or one multi-frame
file, answered once; the request's limits apply, then the series' (one series, MAX_SERIES_SLICES, MAX_REQUEST_PIXELS)
from headers before any pixel is decoded. Hostile requests are made from real files (pydicom's CT5N, pydicom-data's
emri_small): too many slices, a zip bomb member, a slice of another size, two series; each 400 names the limit or the
problem and the way out, and the log names files by position, never a UID."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.training.dicom_builders import pydicom_data_dir
from tests.training.volume_bundles import write_volume_bundle
from training import inference
from training.dataset.series import assemble
from training.serve import request, running_server

DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"
ZIP = {"Content-Type": "application/zip"}
DICOM = {"Content-Type": "application/dicom"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_volume_bundle(tmp_path_factory.mktemp("volume") / "model")[0]


@pytest.fixture(scope="module")
def model(bundle: Path) -> inference.Predictor:
    return inference.model_fn(bundle)


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _ct5n(**extra: bytes) -> bytes:
    """CT5N's slices zipped under a nested folder, in name order (not slice order), plus `extra` members."""
    return _zip({f"study/ct/{f.name}": f.read_bytes() for f in sorted(CT5N.iterdir())} | extra)


def _answer(model: inference.Predictor, body: bytes, content_type: str) -> list[dict[str, object]]:
    data = inference.input_fn(body, content_type)
    payload, _ = inference.output_fn(inference.predict_fn(data, model), "application/json")
    return list(json.loads(payload)["predictions"])


def _many_frames(frames: int) -> bytes:
    """pydicom-data's emri_small (a real multi-frame MR, 10 frames of 64 x 64) declaring `frames` frames."""
    ds = pydicom.dcmread(pydicom_data_dir() / "emri_small.dcm")
    ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _other_size() -> bytes:
    """A CT5N slice cropped to 8 x 8: same series, same geometry, another size."""
    ds = pydicom.dcmread(sorted(CT5N.iterdir())[2])
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:8, :8]).tobytes()
    ds.Rows = ds.Columns = 8
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_a_zip_of_one_series_gets_one_answer_equal_to_predict_series(model: inference.Predictor) -> None:
    (answer,) = _answer(model, _ct5n(), "application/zip")
    (series,) = assemble(sorted(CT5N.iterdir())).series
    expected = model.predict_series(series)
    assert answer["slices"] == 5 and answer["SeriesInstanceUID"] == series.series_uid
    assert answer["label"] == expected.label
    assert answer["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)


def test_one_multiframe_file_is_one_series(model: inference.Predictor) -> None:
    (answer,) = _answer(model, (pydicom_data_dir() / "emri_small.dcm").read_bytes(), "application/dicom")
    assert answer["slices"] == 10 and answer["location"] == "00000.dcm"  # named by position, not by the client


def _zip_bomb_member() -> bytes:
    return _ct5n(**{"study/ct/bomb.dcm": bytes(8 * 1024**2)})  # 8 MiB of zeros deflate about 1,000 to 1


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        (lambda: _many_frames(2000), "application/dicom", ("2000 slices", "inference.MAX_SERIES_SLICES",
                                                           "python -m training.predict")),
        (lambda: _zip({f"s/{i:04d}.dcm": b"x" for i in range(inference.MAX_ZIP_MEMBERS + 1)}, zipfile.ZIP_STORED),
         "application/zip", ("inference.MAX_ZIP_MEMBERS", "split")),
        (_zip_bomb_member, "application/zip", ("bomb.dcm", "inference.MAX_ZIP_RATIO")),
        (lambda: _ct5n(**{"study/ct/odd.dcm": _other_size()}), "application/zip",
         ("series 1 part 2", "the request must hold one whole series")),
        (lambda: _ct5n(**{"mr.dcm": (pydicom_data_dir() / "emri_small.dcm").read_bytes()}), "application/zip",
         ("holds 2 series", "one series a request")),
        (lambda: sorted(CT5N.iterdir())[0].read_bytes(), "application/dicom", ("1 slice",)),
    ],
    ids=["too-many-slices", "too-many-members", "zip-bomb-member", "slice-of-another-size", "two-series",
         "one-slice"],
)
def test_a_request_that_is_not_one_series_within_the_limits_is_refused_naming_why(
    model: inference.Predictor, body, content_type: str, named: tuple[str, ...]
) -> None:
    with pytest.raises(inference.InvalidInput) as refused:
        _answer(model, body(), content_type)
    assert refused.value.status == 400
    assert all(n in refused.value.reason for n in named), refused.value.reason
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in CT5N.iterdir()}
    assert not [u for u in uids if u in refused.value.reason + refused.value.logged]


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(bundle, workers=1, log_file=log) as (_, port):
        yield port, log


def test_the_server_answers_a_series_and_refuses_too_many_slices_with_a_json_400(
    server: tuple[int, Path]
) -> None:
    port, log = server
    status, body = request(port, "POST", "/invocations", _ct5n(), headers=ZIP)
    assert status == 200, body
    (answer,) = json.loads(body)["predictions"]
    assert answer["slices"] == 5
    status, body = request(port, "POST", "/invocations", _many_frames(2000), headers=DICOM)
    assert status == 400 and "inference.MAX_SERIES_SLICES" in json.loads(body)["error"]
    assert request(port, "GET", "/ping")[0] == 200
    assert answer["SeriesInstanceUID"] not in log.read_text(errors="replace")

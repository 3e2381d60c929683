"""The inference request's boundary (issue 18 items 1 and 2, in part): every DICOM input is bounded before its pixels
are decoded, values that would make every pixel NaN are refused, and refusals log nothing the client chose (zip
member names carry patient names; a newline in one would forge log lines). The inputs here are hostile, made by the
test.

An 18 KB JPEG 2000 file can claim 16,000 x 16,000 pixels (4 GB and 15 s to decode, ../shared/FACTS.md): the header's
claim is checked against training.dataset.dicom.MAX_FRAME_PIXELS first, and a spy on pydicom's decoding shows that
nothing was decoded. Through the server's WSGI application (training.serve.InferenceApp, in this process) each refusal
is a JSON 400 that names the limit or the attribute, and no patient identifier of the file reaches it or the log.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

import training.dataset.dicom
from tests.conftest import TinyJob
from training.dataset.dicom import MAX_FRAME_BYTES, MAX_FRAME_PIXELS, DicomReadError, load_image
from training.inference import MAX_REQUEST_PIXELS

PATIENT = ("DOE^JOHN", "MRN-998877")


def _file(rows: int, columns: int, *, compressed: bool = True, **attributes: Any) -> bytes:
    """A CT image whose header claims rows x columns 16-bit pixels; its pixel data is 18 KB of JPEG 2000 junk when
    compressed, else a real uncompressed ramp (then rows x columns must be small)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless if compressed else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.PatientName, ds.PatientID = PATIENT
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of NaN and infinity in a DS: that is the point here
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    if compressed:
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(18_000)])
    else:
        ds.PixelData = (np.arange(rows * columns, dtype=np.uint16) * 7).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A spy on every way training.dataset.dicom reaches pixel data (pydicom's pixel_array, function and property)."""
    calls: list[str] = []
    function = training.dataset.dicom.pixel_array
    prop = Dataset.pixel_array

    def spy_function(*args: Any, **kwargs: Any) -> Any:
        calls.append("pixel_array()")
        return function(*args, **kwargs)

    def spy_property(self: Dataset) -> Any:
        calls.append("Dataset.pixel_array")
        return prop.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(training.dataset.dicom, "pixel_array", spy_function)
    monkeypatch.setattr(Dataset, "pixel_array", property(spy_property))
    yield calls


def test_a_frame_claiming_16000_squared_pixels_is_refused_before_any_decoding(decodes: list[str]) -> None:
    hostile = _file(16_000, 16_000)
    assert len(hostile) < 20_000
    with pytest.raises(DicomReadError, match=rf"16000 x 16000 pixels.*at most {MAX_FRAME_PIXELS}") as raised:
        load_image(hostile, image_size=(32, 32), name="hostile.dcm")
    assert decodes == []
    assert raised.value.file == "hostile.dcm" and not any(value in str(raised.value) for value in PATIENT)


def test_a_frame_within_the_limit_is_decoded(decodes: list[str]) -> None:
    # The same junk under a modest claim reaches the decoder (which then fails): the limit refuses by size only.
    with pytest.raises(DicomReadError, match="cannot be decoded"):
        load_image(_file(512, 512), image_size=(32, 32))
    assert decodes != []
    image = load_image(_file(16, 16, compressed=False), image_size=(8, 8))  # and a real small image loads
    assert image.shape == (1, 8, 8) and np.isfinite(image).all()


@pytest.mark.parametrize(("attribute", "value"), [
    ("RescaleSlope", "NaN"), ("RescaleIntercept", "-inf"), ("WindowCenter", "NaN"), ("WindowWidth", "inf"),
])
def test_nan_or_infinite_rescale_and_window_values_are_refused_naming_the_attribute(attribute: str,
                                                                                  value: str) -> None:
    window = {"WindowCenter": "40", "WindowWidth": "400"} if attribute.startswith("Window") else {}
    hostile = _file(16, 16, compressed=False, **{**window, attribute: value})
    with pytest.raises(DicomReadError, match=rf"its {attribute} is .*not a finite number"):
        load_image(hostile, image_size=(8, 8))


def test_a_window_argument_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite numbers"):
        load_image(_file(16, 16, compressed=False), image_size=(8, 8), window=(float("nan"), 400.0))


@pytest.fixture(scope="module")
def app(tiny_job: TinyJob) -> Any:
    from training.serve import InferenceApp

    return InferenceApp(tiny_job.model_dir)


def _post(app: Any, body: bytes, content_type: str = "application/dicom") -> tuple[str, dict[str, Any]]:
    status: list[str] = []
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "CONTENT_TYPE": content_type,
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    answer = b"".join(app(environ, lambda s, headers: status.append(s)))
    return status[0], json.loads(answer)


@pytest.mark.parametrize(("hostile", "named"), [
    (_file(16_000, 16_000), "training.dataset.dicom.MAX_FRAME_PIXELS"),
    (_file(16, 16, compressed=False, RescaleSlope="NaN"), "RescaleSlope"),
], ids=["oversized header", "NaN slope"])
def test_the_server_answers_a_json_400_naming_the_limit_and_logs_no_identifier(
    app: Any, decodes: list[str], caplog: pytest.LogCaptureFixture, hostile: bytes, named: str
) -> None:
    with caplog.at_level(logging.DEBUG):
        status, answer = _post(app, hostile)
    assert status.startswith("400") and named in answer["error"]
    if "MAX_FRAME_PIXELS" in named:
        assert decodes == []
    logged = caplog.text + json.dumps(answer)
    assert named in caplog.text and not any(value in logged for value in PATIENT)


FORGED = "DOE^JOHN MRN-998877\nINFO refused nothing: all is well"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("bad", ["not dicom", "oversized", "NaN slope"])
def test_a_refused_zip_member_is_named_escaped_to_the_client_and_by_its_place_in_the_log(
    app: Any, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    content = {"not dicom": b"PK but no DICOM header here", "oversized": _file(16_000, 16_000),
               "NaN slope": _file(16, 16, compressed=False, RescaleSlope="NaN")}[bad]
    members = {"a/ok.dcm": _file(16, 16, compressed=False), f"{FORGED}/img.dcm": content}
    place = f"file {sorted(members).index(f'{FORGED}/img.dcm') + 1} of 2"  # answers come in name order
    body = _zip(members)
    with caplog.at_level(logging.DEBUG):
        status, answer = _post(app, body, "application/zip")
    assert status.startswith("400")
    assert answer["error"].startswith("DOE^JOHN MRN-998877\\nINFO")  # the client's own name, escaped: one line
    assert "\n" not in answer["error"]
    (refusal,) = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    assert place in refusal and "\n" not in refusal
    assert not any(value in caplog.text for value in (*PATIENT, "all is well"))


def test_a_client_chosen_content_type_is_not_logged(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        status, answer = _post(app, b"x", "text/DOE^JOHN\nINFO forged")
    assert status.startswith("415") and "DOE^JOHN" in answer["error"] and "\n" not in answer["error"]
    assert "DOE^JOHN" not in caplog.text and "forged" not in caplog.text


def test_a_frame_claiming_more_decoded_bytes_than_the_limit_is_refused_before_any_decoding(
    decodes: list[str]
) -> None:
    # 36 M samples pass MAX_FRAME_PIXELS; at 128 bits allocated each they would decode into 576 MB.
    hostile = _file(6_000, 6_000, BitsAllocated=128)
    with pytest.raises(DicomReadError, match=rf"at most {MAX_FRAME_BYTES} \(training.dataset.dicom.MAX_FRAME_BYTES\)"):
        load_image(hostile, image_size=(32, 32))
    assert decodes == []


def test_a_zip_whose_frames_add_up_past_the_request_budget_is_refused_before_any_decoding(
    app: Any, decodes: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Each member claims 36 M pixels (within MAX_FRAME_PIXELS), four of them 144 M: past MAX_REQUEST_PIXELS at the
    # fourth, which is refused by its header before anything is decoded.
    frame = _file(6_000, 6_000)
    body = _zip({f"{i}.dcm": frame for i in range(4)})
    with caplog.at_level(logging.DEBUG):
        status, answer = _post(app, body, "application/zip")
    assert status.startswith("400") and decodes == []
    assert "inference.MAX_REQUEST_PIXELS" in answer["error"] and str(MAX_REQUEST_PIXELS) in answer["error"]
    assert answer["error"].startswith("3.dcm: ") and "file 4 of 4" in caplog.text
    assert not any(value in caplog.text + json.dumps(answer) for value in PATIENT)

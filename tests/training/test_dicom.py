"""training/dataset/dicom.py: the one preprocessing definition, on DICOM files written with pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests.training.dicom_builders import gradient, secondary_capture, truncate, write_image, write_structured_report
from training.dataset.dicom import DicomReadError, has_dicom_marker, load_image, read_header
from training.dataset.grayscale import apply_window, resize, to_uint8


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return write_image(tmp_path / "ct.dcm", gradient(), rescale=(1.0, -1024.0), window=(40.0, 400.0))


@pytest.mark.parametrize("size", [(96, 96), (108, 96), (64, 128), (256, 256), (512, 512)])
def test_output_shape_dtype_and_range(ct_file: Path, size: tuple[int, int]) -> None:
    image = load_image(ct_file, image_size=size)
    assert image.shape == (1, *size)
    assert image.dtype == np.float32
    assert 0.0 <= image.min() <= image.max() <= 1.0


def test_rescale_then_file_window(tmp_path: Path) -> None:
    pixels = gradient(low=0, high=1000, dtype="uint16")
    path = write_image(tmp_path / "a.dcm", pixels, rescale=(2.0, -100.0), window=(100.0, 201.0))
    values = pixels.astype(np.float64) * 2.0 - 100.0
    expected = np.clip((values - 99.5) / 200.0 + 0.5, 0.0, 1.0)  # DICOM PS3.3 C.11.2.1.2, LINEAR
    # Same size: the resampling is the identity, so the window is checked exactly.
    np.testing.assert_allclose(load_image(path, image_size=pixels.shape)[0], expected, atol=1e-6)


def test_window_setting_overrides_the_file(tmp_path: Path) -> None:
    pixels = gradient(low=-1000, high=1000)
    path = write_image(tmp_path / "a.dcm", pixels, rescale=(1.0, 0.0), window=(40.0, 400.0))
    expected = np.clip((pixels - (0.0 - 0.5)) / 1999.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(load_image(path, image_size=pixels.shape, window=(0.0, 2000.0))[0], expected, atol=1e-6)


def test_percentile_scaling_without_any_window(tmp_path: Path) -> None:
    pixels = gradient(low=0, high=4000, dtype="uint16")
    path = write_image(tmp_path / "a.dcm", pixels)
    low, high = np.percentile(pixels, (0.5, 99.5))
    expected = np.clip((pixels - low) / (high - low), 0.0, 1.0)
    np.testing.assert_allclose(load_image(path, image_size=pixels.shape)[0], expected, atol=1e-5)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = gradient(low=0, high=4095, dtype="uint16")
    mono1 = write_image(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1", window=(2048.0, 4096.0))
    mono2 = write_image(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2", window=(2048.0, 4096.0))
    np.testing.assert_allclose(
        load_image(mono1, image_size=(16, 16)), 1.0 - load_image(mono2, image_size=(16, 16)), atol=1e-6
    )


@pytest.mark.parametrize("frames, middle", [(2, 1), (3, 1), (4, 2), (5, 2)])
def test_multi_frame_gives_the_middle_frame(tmp_path: Path, frames: int, middle: int) -> None:
    stack = np.stack([gradient(low=100 * f, high=100 * f + 50) for f in range(frames)])
    path = write_image(tmp_path / "multi.dcm", stack, window=(200.0, 1000.0))
    single = write_image(tmp_path / "single.dcm", stack[middle], window=(200.0, 1000.0))
    np.testing.assert_array_equal(load_image(path, image_size=(24, 24)), load_image(single, image_size=(24, 24)))


def test_rgb_becomes_bt601_luma(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = write_image(tmp_path / "rgb.dcm", rgb, photometric="RGB", sop_class=secondary_capture())
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0
    np.testing.assert_allclose(load_image(path, image_size=(8, 8)), expected, atol=1e-5)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_compressed_transfer_syntaxes_decode_like_uncompressed(tmp_path: Path, syntax: str) -> None:
    pixels = gradient(64, 64)
    plain = write_image(tmp_path / "plain.dcm", pixels, rescale=(1.0, -1024.0), window=(40.0, 400.0))
    packed = write_image(tmp_path / "packed.dcm", pixels, syntax=syntax, rescale=(1.0, -1024.0), window=(40.0, 400.0))
    np.testing.assert_array_equal(load_image(plain, image_size=(32, 32)), load_image(packed, image_size=(32, 32)))


def test_bytes_and_file_objects_load_like_the_path(ct_file: Path) -> None:
    expected = load_image(ct_file, image_size=(32, 32))
    data = ct_file.read_bytes()
    np.testing.assert_array_equal(load_image(data, image_size=(32, 32)), expected)
    np.testing.assert_array_equal(load_image(io.BytesIO(data), image_size=(32, 32)), expected)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_text("not an image\n") and p, "not a DICOM Part 10 file"),
        (lambda p: truncate(write_image(p, gradient(64, 64))), "cannot be"),
        (lambda p: write_structured_report(p), "no pixel data"),
        (lambda p: p, "does not exist"),
    ],
    ids=["not-dicom", "truncated", "structured-report", "missing"],
)
def test_errors_name_the_file_and_the_reason(tmp_path: Path, make: object, reason: str) -> None:
    path = tmp_path / "series" / "bad.dcm"
    path.parent.mkdir()
    make(path)  # type: ignore[operator]
    with pytest.raises(DicomReadError) as caught:
        load_image(path, image_size=(32, 32), name="series/bad.dcm")
    assert caught.value.file == "series/bad.dcm"
    assert reason in caught.value.reason
    assert str(caught.value).startswith("series/bad.dcm: ")
    assert str(tmp_path) not in str(caught.value)


@pytest.mark.parametrize(
    "shape, size", [((256, 256), (108, 96)), ((512, 300), (96, 96)), ((64, 64), (96, 108)), ((100, 100), (100, 100))]
)
def test_resize_matches_torch_antialiased_bilinear(shape: tuple[int, int], size: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = F.interpolate(
        torch.from_numpy(image)[None, None], size=size, mode="bilinear", antialias=True, align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(resize(image, size), expected, atol=1e-5)


@pytest.mark.parametrize(
    "function, value, expected",
    [("LINEAR", 40.0, 0.5 + 0.5 / 399), ("LINEAR_EXACT", 40.0, 0.5), ("SIGMOID", 40.0, 0.5), ("LINEAR", -500.0, 0.0)],
)
def test_voi_functions(function: str, value: float, expected: float) -> None:
    out = apply_window(np.array([value], dtype=np.float32), 40.0, 400.0, function)
    assert out[0] == pytest.approx(expected, abs=1e-6)


def test_uint8_quantization_is_within_half_a_step() -> None:
    image = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    assert np.abs(to_uint8(image) / 255.0 - image).max() <= 0.5 / 255 + 1e-7


def test_header_and_marker(tmp_path: Path, ct_file: Path) -> None:
    header = read_header(ct_file)
    assert header.patient_id == "SYN-0001" and not hasattr(header, "patient_name")  # the name is never read
    assert header.study_uid
    other = tmp_path / "notes.txt"
    other.write_text("x" * 200)
    assert has_dicom_marker(ct_file) and not has_dicom_marker(other) and not has_dicom_marker(tmp_path / "none")


@pytest.mark.parametrize("kwargs", [{"image_size": (4, 4)}, {"image_size": (96,)}, {"window": (40.0, 0.0)}])
def test_bad_arguments_are_rejected(ct_file: Path, kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"image_size": (32, 32), **kwargs}
    with pytest.raises(ValueError, match="image_size|window"):
        load_image(ct_file, **arguments)  # type: ignore[arg-type]

"""training/dataset/dicom.py on real DICOM files nobody here wrote: the 68 files of the pydicom-data package.

Every file must load to (1, H, W) float32 in [0, 1], or fail with a DicomReadError naming it and saying why;
EXPECTED_FAILURES records which fail and why, and the test asserts exactly that set.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.training.dicom_builders import pydicom_data_dir
from training.dataset.dicom import DicomReadError, load_image

SIZE = (48, 40)
EXPECTED_FAILURES = {
    # No preamble and no file meta (an ACR-NEMA-style file): not DICOM Part 10, which the data layer requires.
    "OT-PAL-8-face.dcm": "not a DICOM Part 10 file",
    # Cut short inside its encapsulated pixel data: pydicom reads the header but finds no Pixel Data element.
    "emri_small_jpeg_2k_lossless_too_short.dcm": "no pixel data",
}
# Files holding the same pixels in another transfer syntax, byte order, bit depth or colour layout.
SAME_IMAGE = [
    ("693_J2KR.dcm", "693_UNCR.dcm"),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # MONOCHROME1, 1955 x 1841
    ("US1_J2KR.dcm", "US1_UNCR.dcm"),  # YBR_RCT colour
    ("emri_small_RLE.dcm", "emri_small.dcm"),  # 10 frames
    ("emri_small_big_endian.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ("OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_2frame.dcm"),  # PALETTE COLOR
    ("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm"),  # its 16-bit palette holds 8-bit values: scaled by its largest entry
    ("SC_rgb_expb_32bit_2frame.dcm", "SC_rgb_32bit_2frame.dcm"),
    ("SC_rgb_16bit.dcm", "SC_rgb.dcm"),  # colour scaled by BitsStored
    ("gdcm-US-ALOKA-16_big.dcm", "gdcm-US-ALOKA-16.dcm"),
    ("liver_expb.dcm", "liver.dcm"),  # 1-bit segmentation frames
]


@functools.cache
def outcome(name: str) -> np.ndarray | DicomReadError:
    """Each file is decoded once per test process (the large JPEG 2000 radiographs take ~0.5 s)."""
    try:
        return load_image(pydicom_data_dir() / name, image_size=SIZE, name=name)
    except DicomReadError as exc:
        return exc


def test_the_package_holds_the_files_we_expect() -> None:
    names = {p.name for p in pydicom_data_dir().iterdir() if p.suffix == ".dcm"}
    assert len(names) == 68
    assert set(EXPECTED_FAILURES) <= names


def test_every_file_loads_or_fails_as_recorded() -> None:
    failures = {}
    for path in sorted(pydicom_data_dir().glob("*.dcm")):
        result = outcome(path.name)
        if isinstance(result, DicomReadError):
            assert result.file == path.name and str(result).startswith(f"{path.name}: ")
            failures[path.name] = result.reason
            continue
        assert result.shape == (1, *SIZE) and result.dtype == np.float32, path.name
        assert np.isfinite(result).all() and 0.0 <= result.min() and result.max() <= 1.0, path.name
        assert result.max() > result.min(), f"{path.name} came out blank"
    assert set(failures) == set(EXPECTED_FAILURES)
    for name, reason in failures.items():
        assert EXPECTED_FAILURES[name] in reason, (name, reason)


@pytest.mark.parametrize("first, second", SAME_IMAGE, ids=[pair[0] for pair in SAME_IMAGE])
def test_the_same_pixels_in_other_encodings_give_the_same_image(first: str, second: str) -> None:
    a, b = outcome(first), outcome(second)
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    np.testing.assert_allclose(a, b, atol=1e-6)

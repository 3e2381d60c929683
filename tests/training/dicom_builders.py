"""Real DICOM files for the data-layer tests, written with pydicom into temporary directories (no mocks)."""

from __future__ import annotations

import csv
import importlib.util
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def pydicom_data_dir() -> Path:
    """The folder of real DICOM files that the pydicom-data package installs (FACTS: list it, never download)."""
    spec = importlib.util.find_spec("data_store")
    assert spec is not None and spec.submodule_search_locations, "pydicom-data is not installed (requirements-dev.txt)"
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def image_dataset(
    pixels: np.ndarray,
    *,
    patient_id: str = "SYN-0001",
    patient_name: str = "SYNTHETIC^PATIENT^0001",
    study_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    sop_class: str = str(CTImageStorage),
) -> Dataset:
    """A minimal image dataset: gray (2-D or frames x rows x cols, int16/uint16/uint8) or RGB (rows x cols x 3)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long test names are deliberate (test_data_privacy.py)
        ds.PatientName = patient_name
    ds.StudyInstanceUID = study_uid if study_uid is not None else generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT" if sop_class == str(CTImageStorage) else "OT"
    rgb = pixels.ndim == 3 and pixels.shape[-1] == 3 and photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == 3 and not rgb else 1
    ds.Rows, ds.Columns = (pixels.shape[1], pixels.shape[2]) if frames > 1 else pixels.shape[:2]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = str(rescale[0]), str(rescale[1])
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_image(path: Path, pixels: np.ndarray, *, syntax: str | None = None, **kwargs: object) -> Path:
    """Write an image dataset (see image_dataset), optionally compressed with pydicom's encoders."""
    ds = image_dataset(pixels, **kwargs)  # type: ignore[arg-type]
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_structured_report(path: Path, *, patient_id: str = "SYN-0099", patient_name: str = "SYNTHETIC^SR") -> Path:
    """A Basic Text SR: valid DICOM Part 10 with no pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientName = patient_name
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def gradient(rows: int = 32, cols: int = 32, dtype: str = "int16", low: int = -500, high: int = 1500) -> np.ndarray:
    """A smooth, non-constant test image."""
    y, x = np.mgrid[0:rows, 0:cols]
    values = low + (high - low) * (y * cols + x) / (rows * cols - 1)
    return values.astype(dtype)


def secondary_capture() -> str:
    """The Secondary Capture SOP class UID (for RGB test images)."""
    return str(SecondaryCaptureImageStorage)


def write_labels_csv(root: Path, rows: Iterable[Sequence[str]], header: Sequence[str] = ("file", "label")) -> Path:
    """labels.csv with the given header and rows."""
    path = root / "labels.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_labels_csv(root: Path) -> list[tuple[str, str]]:
    """(file, label) rows of a labels.csv."""
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return [(row["file"], row["label"]) for row in csv.DictReader(fh)]

"""One synthetic DICOM file of training/synthetic.py's set: its picture and its dataset, no PHI.

The picture is CT-like (Hounsfield units: a body outline, fat, organs, lungs, a spine) or radiograph-like (display
values: lungs, mediastinum, ribs), with one bright round lesion in the lungs for 'abnormal'. The dataset carries
clearly synthetic identity (SYNTHETIC^PATIENT^NNNN, 'SYNTHETIC' descriptions, PatientIdentityRemoved YES), UIDs
derived from the seed (name-based UUIDs under 2.25, so the same seed gives the same bytes) and pixel data encoded in
the transfer syntax drawn for the file. Which files exist, where they go and how they are labeled is
training/synthetic.py's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from training.dataset.grayscale import resize

_UID_ROOT = "SYNTHETIC-DICOM"  # entropy label: our UIDs cannot collide with another generator's


@dataclass(frozen=True)
class Study:
    """A synthetic study: its patient (0-based), its number in the set, 'ct' or 'radiograph', its photometric
    interpretation, and whether its files carry a window."""

    patient: int
    number: int
    kind: str
    photometric: str
    windowed: bool


@dataclass(frozen=True)
class Lesion:
    """Where an abnormal image's lesion is, in pixels of the file's own grid (what a heat map must point at).

    Attributes:
        row: the centre's row (0-based, fractional: pixel centres are whole numbers).
        column: the centre's column.
        radius: the radius in pixels (the soft rim is inside it).
    """

    row: float
    column: float
    radius: float


def transfer_syntax(draw: float) -> str:
    """About 70 % uncompressed, 20 % RLE Lossless, 10 % JPEG 2000 Lossless."""
    if draw < 0.2:
        return str(RLELossless)
    if draw < 0.3:
        return str(JPEG2000Lossless)
    return str(ExplicitVRLittleEndian)


def synthetic_dataset(
    index: int, study: Study, lesion: bool, syntax: str, seed: int, size: int, rng: np.random.Generator
) -> Dataset:
    """One image's dataset, pixel data encoded in the transfer syntax."""
    return synthetic_image(index, study, lesion, syntax, seed, size, rng)[0]


def synthetic_image(
    index: int, study: Study, lesion: bool, syntax: str, seed: int, size: int, rng: np.random.Generator
) -> tuple[Dataset, Lesion | None]:
    """One image's dataset (as synthetic_dataset) and where its lesion is (None for a normal image)."""
    ds = synthetic_header(index, study, seed, size)
    where = _add_pixels(ds, study, lesion, size, rng)
    if syntax != str(ExplicitVRLittleEndian):
        with _quiet_stdout():
            ds.compress(syntax, generate_instance_uid=False)
    return ds, where


def synthetic_header(index: int, study: Study, seed: int, size: int) -> Dataset:
    """Everything but the pixels: file meta, identity (clearly synthetic), UIDs from the seed, the image's geometry."""
    pid = f"{study.patient + 1:04d}"  # patients are numbered from 1
    study_uid = synthetic_uid(seed, "study", study.patient, study.number)
    series_uid = synthetic_uid(seed, "series", study.patient, study.number)
    sop_uid = UID(synthetic_uid(seed, "image", index))
    sop_class = CTImageStorage if study.kind == "ct" else ComputedRadiographyImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"2024{1 + study.number % 12:02d}{1 + study.patient % 28:02d}"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"SYNACC{study.number:05d}"
    ds.Modality = "CT" if study.kind == "ct" else "CR"
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "SYNTHETIC DATA - NO REAL PATIENT"
    ds.StudyDescription = "SYNTHETIC DEMO STUDY"
    ds.SeriesDescription = f"SYNTHETIC {'CT-LIKE' if study.kind == 'ct' else 'RADIOGRAPH-LIKE'} SERIES"
    ds.PatientName = f"SYNTHETIC^PATIENT^{pid}"
    ds.PatientID = f"SYN-{pid}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = "SYNTHETIC IMAGE - NOT A REAL PATIENT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{study.number}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = study.photometric
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{350.0 / size:.4f}", f"{350.0 / size:.4f}"]
    ds.BitsAllocated = 16
    return ds


def _add_pixels(ds: Dataset, study: Study, lesion: bool, size: int, rng: np.random.Generator) -> Lesion | None:
    """The picture as stored values: CT in HU through RescaleIntercept -1024, radiographs as 12-bit display values;
    returns where the lesion is."""
    if study.kind == "ct":
        hu, where = _ct_image(size, lesion, rng)
        pixels = np.clip(np.rint(hu + 1024.0), -1024, 3071).astype(np.int16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        shown, where = _radiograph_image(size, lesion, rng)
        if study.photometric == "MONOCHROME1":
            shown = 1.0 - shown
        pixels = np.clip(np.rint(shown * 4095.0), 0, 4095).astype(np.uint16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        if study.windowed:
            ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = pixels.tobytes()
    return where


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: the OpenJPEG encoder prints 'tile number 1 / 1' from C for every image."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _ct_image(size: int, lesion: bool, rng: np.random.Generator) -> tuple[np.ndarray, Lesion | None]:
    """A chest-CT-like slice in Hounsfield units, and where its lesion is."""
    y, x = pixel_grid(size)
    cy, cx = rng.normal(0.0, 0.03, 2)
    ay, ax = 0.62 + rng.normal(0, 0.03), 0.85 + rng.normal(0, 0.03)
    image = np.full((size, size), -1000.0, dtype=np.float32)
    image[ellipse(y, x, cy, cx, ay + 0.04, ax + 0.04)] = -100.0  # subcutaneous fat
    body = ellipse(y, x, cy, cx, ay, ax)
    image[body] = 40.0
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs |= ellipse(y, x, cy - 0.05, cx + side * 0.38 * ax, 0.42 * ay / 0.62, 0.3 + rng.normal(0, 0.02))
    lungs &= body
    image[lungs] = -850.0
    for _ in range(2):  # mediastinal organs
        organ = ellipse(y, x, cy + rng.uniform(-0.2, 0.2), cx + rng.uniform(-0.1, 0.1), 0.12, 0.1)
        image[organ & body] = rng.uniform(20.0, 70.0)
    vertebra = ellipse(y, x, cy + 0.45 * ay, cx, 0.09, 0.08)
    image[vertebra] = 700.0  # cortical bone around a darker marrow: a ring, not a disk like a lesion
    image[ellipse(y, x, cy + 0.45 * ay, cx, 0.06, 0.05)] = 60.0
    image += 60.0 * _smooth_noise(size, rng) * body
    where = None
    if lesion:
        where = _add_lesion(image, y, x, rng, inside=lungs, value=lambda base: np.full_like(base, 320.0))
    image += rng.normal(0.0, 12.0, (size, size)).astype(np.float32)
    return image, where


def _radiograph_image(size: int, lesion: bool, rng: np.random.Generator) -> tuple[np.ndarray, Lesion | None]:
    """A chest-radiograph-like image, display values in [0, 1] (bright = dense), and where its lesion is."""
    y, x = pixel_grid(size)
    image = np.full((size, size), 0.08, dtype=np.float32)
    body = ellipse(y, x, 0.05, 0.0, 1.05, 0.9 + rng.normal(0, 0.03))
    image[body] = 0.55
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs |= ellipse(y, x, -0.05 + rng.normal(0, 0.02), side * 0.42, 0.62, 0.3 + rng.normal(0, 0.02))
    image[lungs] = 0.22
    ribs = (np.sin(y * 22.0 + 3.0 * x**2 + rng.uniform(0, 6.28)) > 0.55) & lungs
    image[ribs] += 0.12
    image[ellipse(y, x, 0.1, 0.0, 0.75, 0.14)] = 0.7  # mediastinum and spine
    image += 0.08 * _smooth_noise(size, rng) * body
    where = None
    if lesion:
        where = _add_lesion(image, y, x, rng, inside=lungs, value=lambda base: np.full_like(base, 0.9))
    image += rng.normal(0.0, 0.02, (size, size)).astype(np.float32)
    return np.clip(image, 0.0, 1.0), where


def _add_lesion(
    image: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    inside: np.ndarray,
    value: Callable[[np.ndarray], np.ndarray],
) -> Lesion:
    """One bright round lesion with a soft edge, centred on a random point of `inside`; returns where it is."""
    points = np.flatnonzero(inside)
    center = points[rng.integers(len(points))] if len(points) else image.size // 2
    cy, cx = y.flat[center], x.flat[center]
    radius = rng.uniform(0.1, 0.2)  # 5-10 % of the size (the grid spans 2 units): 5+ pixels at 96x96
    distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    weight = np.clip((radius - distance) / (0.25 * radius), 0.0, 1.0)  # a soft rim a quarter of the radius wide
    patch = weight > 0
    image[patch] = image[patch] * (1 - weight[patch]) + value(image[patch]) * weight[patch]
    half = image.shape[0] / 2.0  # grid units to pixels: the grid spans 2 units, pixel centres at (i + 0.5) / half - 1
    return Lesion(row=float((cy + 1.0) * half - 0.5), column=float((cx + 1.0) * half - 0.5),
                  radius=float(radius * half))


@functools.lru_cache(maxsize=4)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return y, x


def ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ay: float, ax: float) -> np.ndarray:
    """The pixels inside an axis-aligned ellipse."""
    return ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1.0


def _smooth_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]: coarse random values resampled up."""
    coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    return resize(coarse, (size, size)) / 2.0


def synthetic_uid(seed: int, *parts: object) -> str:
    """A deterministic UID: 2.25 and a name-based (version 5) UUID as an integer (PS3.5 B.2)."""
    name = "/".join([_UID_ROOT, str(seed), *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"

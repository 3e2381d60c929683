"""Synthetic CT series for `python -m training.synthetic --volumes`: one 3-D phantom per series, one dataset a slice.

Two kinds of set (KINDS):
- 'lesion': a chest-CT-like phantom in Hounsfield units (body, fat, lungs tapering towards both ends, mediastinal
  organs, a spine) whose 'abnormal' series hold one bright sphere (320 HU, radius 5-10 % of the field of view, a
  soft rim) centred in a lung; 'normal' series hold none.
- 'order': the class is visible only in the order of the slices. Series come in pairs (one patient, two studies)
  that hold the same slice images byte for byte: a bright disk whose radius grows with the slice position in the
  'abnormal' series and shrinks in the 'normal' one, which holds the same images at reversed positions. Sorted by
  position a volume shows a cone pointing one way or the other; in any other order, disks of shuffled radii. A flip
  along the slice axis reverses the class: train this set without z flips.

Geometry of a series: CT Image Storage, ImageOrientationPatient 1/0/0/0/1/0 (axial), a 350 mm field of view
(PixelSpacing 350/size mm), SliceThickness = SpacingBetweenSlices = 1, 1.5 or 2 times the pixel spacing, and
ImagePositionPatient stepping along z by it from a random origin (SliceLocation is that z). InstanceNumber is a
random permutation, so that only the positions give the order. With `scramble=True` ImagePositionPatient and
SliceLocation are permuted against the pixel data (the permutation least correlated with the true order out of 64
draws): the same slices at the same positions, the anatomy no longer in order.

Identity is synthetic_dicom's (SYNTHETIC^PATIENT^NNNN, PatientIdentityRemoved YES, ...); UIDs come from the seed
under 'volume' names, so they never collide with a 2-D set's. Pixel data are uncompressed signed 16-bit (HU + 1024,
RescaleIntercept -1024, window 40/400). Which files exist, their names and folders are training/synthetic.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from training.dataset.grayscale import resize
from training.dataset.synthetic_dicom import Study, ellipse, pixel_grid, synthetic_header, synthetic_uid

KINDS = ("lesion", "order")
CLASSES = ("normal", "abnormal")
SLICES = (4, 512)  # a series shorter than 4 slices has no order worth learning; 512 covers a thin-slice chest CT
SIZES = (32, 512)  # 32 keeps 3-D tests fast; 512 is the usual CT matrix
MAX_PIXEL_BYTES = 8 * 2**30  # a typo in --count or --slices must not fill the disk
FIELD_OF_VIEW_MM = 350.0
HALF_FOV_MM = FIELD_OF_VIEW_MM / 2  # the pixel grid spans [-1, 1]: one grid unit is this many mm
LESION_HU = 320.0


@dataclass(frozen=True)
class SeriesSpec:
    """One series of the set: its number (0-based, names its folder), its patient (0-based), its label."""

    number: int
    patient: int
    label: str


@dataclass(frozen=True)
class Geometry:
    """Where a series' slices lie: pixel spacing and slice step (mm), and the first slice's top-left centre."""

    pixel_spacing: float
    thickness: float
    origin: tuple[float, float, float]


def check_volume_arguments(*, count: int, slices: int, size: int, kind: str) -> None:
    """Refuse a set out of bounds before anything is written.

    Raises:
        ValueError: naming the argument, its allowed range and the value given.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if count < 4 or (kind == "order" and count % 2):
        raise ValueError(f"count must be >= 4 series (and even for the order set: pairs); got {count}")
    if not SLICES[0] <= slices <= SLICES[1]:
        raise ValueError(f"slices must be in [{SLICES[0]}, {SLICES[1]}]; got {slices}")
    if not SIZES[0] <= size <= SIZES[1]:
        raise ValueError(f"size must be in [{SIZES[0]}, {SIZES[1]}] for volumes; got {size}")
    total = 2 * count * slices * size * size
    if total > MAX_PIXEL_BYTES:
        raise ValueError(
            f"count x slices x size^2 x 2 bytes = {total / 2**30:.1f} GiB exceeds {MAX_PIXEL_BYTES // 2**30} GiB; "
            "write fewer, shorter or smaller series"
        )


def plan_series(count: int, seed: int, first_patient: int, kind: str) -> list[SeriesSpec]:
    """The series of the set: two a patient, balanced classes (in a seeded order; one of each per pair for 'order')."""
    rng = np.random.default_rng([seed, 20])
    if kind == "order":
        firsts = rng.integers(0, 2, count // 2)
        labels = [int(first) ^ side for first in firsts for side in (0, 1)]
    else:
        labels = [i % 2 for i in range(count)]
        rng.shuffle(labels)
    return [SeriesSpec(n, first_patient - 1 + n // 2, CLASSES[label]) for n, label in enumerate(labels)]


def series_uid(seed: int, number: int) -> str:
    """The SeriesInstanceUID of series `number` of the set made with `seed`."""
    return synthetic_uid(seed, "volume-series", number)


def series_datasets(spec: SeriesSpec, *, kind: str, slices: int, size: int, seed: int, scramble: bool) -> list[Dataset]:
    """The slices of one series, in the order of their pixel data along z (positions ascending unless scrambled)."""
    rng = np.random.default_rng([seed, 21, spec.number])
    geometry = _geometry(rng, size)
    stored = np.clip(np.rint(_volume(spec, kind, slices, size, seed, geometry) + 1024.0), 0, 4095).astype(np.int16)
    steps = _scrambled(rng, slices) if scramble else np.arange(slices)
    instances = rng.permutation(slices) + 1
    return [
        _slice_dataset(spec, seed, geometry, int(steps[k]), int(instances[k]), stored[k], k) for k in range(slices)
    ]


def _geometry(rng: np.random.Generator, size: int) -> Geometry:
    spacing = round(FIELD_OF_VIEW_MM / size, 4)
    thickness = round(spacing * float(rng.choice([1.0, 1.5, 2.0])), 3)
    corner = -HALF_FOV_MM + spacing / 2
    return Geometry(spacing, thickness, (corner, corner, round(float(rng.uniform(-300.0, 0.0)), 2)))


def _volume(spec: SeriesSpec, kind: str, slices: int, size: int, seed: int, geometry: Geometry) -> np.ndarray:
    """The series' voxels in HU, (slices, size, size), slice 0 at the lowest position."""
    if kind == "order":  # the pair shares its pixels: drawn from the pair's generator, reversed for 'normal'
        rng = np.random.default_rng([seed, 22, spec.number // 2])
        hu, _ = _phantom(rng, slices, size)
        _add_cone(hu, rng)
        return hu[::-1] if spec.label == "normal" else hu
    rng = np.random.default_rng([seed, 23, spec.number])
    hu, lungs = _phantom(rng, slices, size)
    if spec.label == "abnormal":
        _add_sphere(hu, lungs, rng, geometry.thickness / HALF_FOV_MM)
    return hu + rng.normal(0.0, 12.0, hu.shape).astype(np.float32)


def _phantom(rng: np.random.Generator, slices: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like stack in HU and its lung mask; lungs and body taper symmetrically towards both ends."""
    y, x = pixel_grid(size)
    cy, cx = rng.normal(0.0, 0.03, 2)
    ay, ax = 0.62 + rng.normal(0, 0.03), 0.85 + rng.normal(0, 0.03)
    lung_width = [0.3 + rng.normal(0, 0.02) for _ in range(2)]
    organs = [  # (z in [-1, 1], y, x, HU)
        (rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1), rng.uniform(20, 70)) for _ in range(2)
    ]
    hu = np.full((slices, size, size), -1000.0, dtype=np.float32)
    lungs = np.zeros(hu.shape, dtype=bool)
    for k, t in enumerate(np.linspace(-1.0, 1.0, slices)):
        body_scale = 1.0 - 0.05 * t**2
        hu[k][ellipse(y, x, cy, cx, (ay + 0.04) * body_scale, ax + 0.04)] = -100.0  # subcutaneous fat
        body = ellipse(y, x, cy, cx, ay * body_scale, ax)
        hu[k][body] = 40.0
        lung_scale = np.sqrt(1.0 - 0.64 * t**2)
        for side, width in zip((-1.0, 1.0), lung_width, strict=True):
            lung = ellipse(y, x, cy - 0.05, cx + side * 0.38 * ax, 0.42 * ay / 0.62 * lung_scale, width * lung_scale)
            lungs[k] |= lung
        lungs[k] &= body
        hu[k][lungs[k]] = -850.0
        for oz, oy, ox, value in organs:  # mediastinal organs: ellipsoids half the stack long
            scale = 1.0 - ((t - oz) / 0.5) ** 2
            if scale > 0:
                hu[k][ellipse(y, x, cy + oy, cx + ox, 0.12 * np.sqrt(scale), 0.1 * np.sqrt(scale)) & body] = value
        hu[k][ellipse(y, x, cy + 0.45 * ay, cx, 0.09, 0.08)] = 700.0  # a vertebra: a cortical ring around marrow
        hu[k][ellipse(y, x, cy + 0.45 * ay, cx, 0.06, 0.05)] = 60.0
        hu[k] += 60.0 * _smooth_noise(rng, size) * body
    return hu, lungs


def _add_sphere(hu: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, step: float) -> None:
    """One bright sphere with a soft rim centred in a lung, in its middle half of slices; `step` in grid units."""
    slices, size = hu.shape[0], hu.shape[1]
    cz = rng.uniform(0.25, 0.75) * (slices - 1)
    points = np.flatnonzero(lungs[int(round(cz))])
    center = points[rng.integers(len(points))] if len(points) else size * size // 2
    y, x = pixel_grid(size)
    cy, cx = y.flat[center], x.flat[center]
    radius = rng.uniform(0.1, 0.2)  # as the 2-D lesion: 5-10 % of the field of view
    for k in range(slices):
        distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2 + ((k - cz) * step) ** 2)
        weight = np.clip((radius - distance) / (0.25 * radius), 0.0, 1.0)
        hu[k] = hu[k] * (1 - weight) + LESION_HU * weight


def _add_cone(hu: np.ndarray, rng: np.random.Generator) -> None:
    """A bright disk whose radius grows linearly from the first slice to the last: a cone along z."""
    slices, size = hu.shape[0], hu.shape[1]
    y, x = pixel_grid(size)
    cy, cx = rng.uniform(-0.25, 0.25, 2)
    for k, radius in enumerate(np.linspace(0.05, 0.3, slices)):
        distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        weight = np.clip((radius - distance) / 0.03, 0.0, 1.0)
        hu[k] = hu[k] * (1 - weight) + LESION_HU * weight
    hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]."""
    return resize(rng.normal(0.0, 1.0, (8, 8)).astype(np.float32), (size, size)) / 2.0


def _scrambled(rng: np.random.Generator, slices: int) -> np.ndarray:
    """A permutation of the slice steps that tells as little as possible about the true order."""
    draws = [rng.permutation(slices) for _ in range(64)]
    return min(draws, key=lambda p: abs(float(np.corrcoef(p, np.arange(slices))[0, 1])))


def _slice_dataset(
    spec: SeriesSpec, seed: int, geometry: Geometry, step: int, instance: int, stored: np.ndarray, k: int
) -> Dataset:
    """Slice k of a series: synthetic_dicom's identity, this series' UIDs and geometry, the stored values."""
    size = stored.shape[0]
    ds = synthetic_header(k, Study(spec.patient, spec.number, "ct", "MONOCHROME2", True), seed, size)
    sop_uid = UID(synthetic_uid(seed, "volume-image", spec.number, k))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.StudyInstanceUID = synthetic_uid(seed, "volume-study", spec.number)
    ds.SeriesInstanceUID = series_uid(seed, spec.number)
    ds.FrameOfReferenceUID = synthetic_uid(seed, "volume-frame", spec.number)
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SeriesDescription = "SYNTHETIC CT-LIKE VOLUME"
    ds.InstanceNumber = instance
    z = round(geometry.origin[2] + step * geometry.thickness, 3)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [f"{geometry.origin[0]:.4f}", f"{geometry.origin[1]:.4f}", f"{z:.3f}"]
    ds.SliceLocation = f"{z:.3f}"
    ds.SliceThickness = ds.SpacingBetweenSlices = f"{geometry.thickness:.3f}"
    ds.PixelSpacing = [f"{geometry.pixel_spacing:.4f}"] * 2
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds

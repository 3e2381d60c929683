"""Decoding one assembled series (training/dataset/series.py) into the uint8 volume the 3-D cache stores (issue 21).

`read_volume(series, size=(D, H, W), window=None)` returns a `Volume`: the voxels, and what maps them back to the
original slices (the slices in order, the source and output affines). The steps, in order:

1. Bounds, before any pixel is decoded: the source (slices x rows x columns <= series.MAX_VOLUME_VOXELS), the target
   grid (each side in SIZE_RANGE, at most MAX_TARGET_VOXELS), and each file's frame bytes (dicom.check_frame_size).
2. Each slice (a file, or a frame of a multi-frame file) in the series' order, with the 2-D rules of
   training/dataset/grayscale.py: the Modality LUT per slice, then the `window` argument, else the slice's own window.
   Slices with no window at all are scaled between the percentiles of all such slices together (not slice by slice
   as in 2-D: a slice of air would otherwise be stretched to full contrast). MONOCHROME1 is inverted; colour is
   refused (no colour CT or MR series exists to test it on).
3. Fixed orientation: the array axes become (D, H, W) = (superior, posterior, left), DICOM's patient axes (LPS) with
   depth first, so an axial series keeps its rows and columns as a viewer shows them. The axes are permuted and
   flipped only (closest canonical axes, no interpolation). Done here in numpy: MONAI's Orientation needs nibabel,
   which the training image does not ship.
4. Resampling with the physical spacing respected: one isotropic spacing, the smallest that fits the whole series
   into `size` (spacing = max over axes of extent / size), so a sphere stays a sphere; the aspect is kept and the
   rest of the grid is zero padding, centred (MONAI SpatialPad). In-plane the 2-D pipeline's antialiased resize runs
   slice by slice while decoding (memory stays one full-resolution slice); through the slices MONAI's Resize
   (trilinear, antialiased when shrinking) finishes the grid and keeps the affine.
5. uint8 (grayscale.to_uint8), as the 2-D cache stores.

Assumed and said in `Volume.notes`: no PixelSpacing (pydicom-data's emri_small) means 1 mm; no
ImageOrientationPatient means the stored axes are (column, row, slice) = (x, y, z), with the origin at 0.

Messages name the series by its position ('series 3, slice 4 of 12') and never a UID, a file path or a patient
identifier. Imports MONAI (about 2.5 s), unlike the 2-D decoding path: a series decodes for far longer than that.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Resize, SpatialPad
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from training.dataset.dicom import DicomReadError, check_frame_size, read_dataset
from training.dataset.grayscale import (
    NotFinite,
    Window,
    apply_window,
    file_window,
    modality_values,
    percentile_scale,
    resize,
    to_uint8,
)
from training.dataset.series import MAX_VOLUME_VOXELS, Series, SliceRef

SIZE_RANGE = (4, 512)  # a side under 4 voxels holds no shape; 512 is a CT matrix
MAX_TARGET_VOXELS = 256**3  # 16 M voxels, 16 MB of uint8 a sample in the cache
AXES = ("superior", "posterior", "left")  # the world direction (LPS) each output axis (D, H, W) increases towards
_WORLD_AXIS = (2, 1, 0)  # the LPS axis of D, H and W
_ASSUMED_SPACING_MM = 1.0


class VolumeError(ValueError):
    """A series that cannot become a volume; the message names the series by position, the slice and the reason."""


@dataclass(frozen=True)
class Volume:
    """One series at the training grid, and the way back to its slices.

    Attributes:
        array: uint8 (D, H, W): depth towards the head, rows towards the back, columns towards the patient's left.
        affine: 4 x 4, output voxel (d, h, w, 1) to DICOM patient coordinates (LPS, mm).
        source_affine: 4 x 4, source index (k, row, column, 1) to LPS mm, k counting `slices`.
        source_shape: (slices, rows, columns) of the series.
        slices: the source slices in order (the series' order along its normal).
        spacing: the output grid's nominal spacing in mm, the same along every axis; the affine holds each axis' exact
            one (an axis' extent is rounded to whole voxels: within half a voxel over the whole extent).
        notes: what was assumed, in words without identifiers.
    """

    array: np.ndarray
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    slices: tuple[SliceRef, ...] = field(repr=False)
    spacing: float
    notes: tuple[str, ...]

    def source_index(self, voxels: np.ndarray) -> np.ndarray:
        """Output voxel indices (N, 3) as continuous source indices (N, 3): (slice k, row, column)."""
        points = np.c_[np.asarray(voxels, dtype=np.float64).reshape(-1, 3), np.ones(len(voxels))]
        return (np.linalg.solve(self.source_affine, (self.affine @ points.T)).T)[:, :3]

    def slice_at(self, voxel: Sequence[float]) -> SliceRef | None:
        """The source slice nearest an output voxel (d, h, w), or None outside the series (the padding)."""
        where = np.rint(self.source_index(np.asarray([voxel], dtype=np.float64))[0]).astype(int)
        inside = all(0 <= int(i) < n for i, n in zip(where, self.source_shape, strict=True))
        return self.slices[int(where[0])] if inside else None


def read_volume(series: Series, *, size: Sequence[int], window: Window | None = None) -> Volume:
    """Decode a series into a uint8 volume at the training grid (the rules are in this module's docstring).

    Args:
        series: a good series from `training.dataset.series.assemble`.
        size: (D, H, W) of the result, each in SIZE_RANGE, at most MAX_TARGET_VOXELS in all.
        window: (center, width) in modality units for every slice; None uses each slice's window, else percentiles.

    Returns:
        The volume, its affine and its slices.

    Raises:
        VolumeError: a bound broken, or a slice that cannot be decoded; the message says which and why.
    """
    target = _check_bounds(series, size)
    notes = []
    if series.pixel_spacing is None:
        notes.append(f"no PixelSpacing: {_ASSUMED_SPACING_MM:g} mm assumed")
    if series.orientation is None:
        notes.append("no ImageOrientationPatient: the stored axes taken as x, y, z from 0")
    source = _source_affine(series)
    order, flips = _orientation(source[:3, :3])
    extents = np.array([series.slice_count, series.rows, series.columns]) * np.linalg.norm(source[:3, :3], axis=0)
    spacing = float(max(extents[order[o]] / target[o] for o in range(3)))
    fitted = np.maximum(1, np.rint(extents / spacing)).astype(int)  # per source axis (k, row, column)
    stack = _decode(series, window, (int(fitted[1]), int(fitted[2])))
    inplane = _resize_affine((series.slice_count, series.rows, series.columns), (stack.shape[0], *fitted[1:]))
    oriented, affine = _apply_orientation(stack, source @ inplane, order, flips)
    unit, affine = _resample(oriented, affine, [int(fitted[order[o]]) for o in range(3)], target)
    return Volume(array=to_uint8(unit), affine=affine, source_affine=source,
                  source_shape=(series.slice_count, series.rows, series.columns),
                  slices=series.slices, spacing=spacing, notes=tuple(notes))


def _check_bounds(series: Series, size: Sequence[int]) -> tuple[int, int, int]:
    if len(size) != 3 or not all(SIZE_RANGE[0] <= int(v) <= SIZE_RANGE[1] for v in size):
        raise VolumeError(f"size must be three sides (D, H, W), each in [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}]; "
                          f"got {tuple(size)}")
    target = (int(size[0]), int(size[1]), int(size[2]))
    if int(np.prod(target)) > MAX_TARGET_VOXELS:
        raise VolumeError(f"size {target} is {int(np.prod(target))} voxels; at most {MAX_TARGET_VOXELS} "
                          "(training.dataset.volume.MAX_TARGET_VOXELS)")
    voxels = series.slice_count * series.rows * series.columns
    if voxels > MAX_VOLUME_VOXELS:
        raise VolumeError(f"{series.name}: {series.slice_count} slices of {series.rows} x {series.columns} are "
                          f"{voxels} voxels; a volume holds at most {MAX_VOLUME_VOXELS} "
                          "(training.dataset.series.MAX_VOLUME_VOXELS)")
    if series.slice_count < 2:
        raise VolumeError(f"{series.name}: {series.slice_count} slice(s); a volume needs at least 2")
    return target


def _source_affine(series: Series) -> np.ndarray:
    """Source index (k, row, column) to LPS mm: slices along the normal, rows along the column cosines."""
    cosines = np.asarray(series.orientation or (1, 0, 0, 0, 1, 0), dtype=np.float64)
    along_row, along_column = cosines[:3], cosines[3:]  # the first triplet is the direction of increasing column
    row_mm, column_mm = series.pixel_spacing or (_ASSUMED_SPACING_MM, _ASSUMED_SPACING_MM)
    affine = np.eye(4)
    affine[:3, 0] = np.cross(along_row, along_column) * series.slice_spacing
    affine[:3, 1] = along_column * row_mm
    affine[:3, 2] = along_row * column_mm
    affine[:3, 3] = series.origin or (0.0, 0.0, 0.0)
    return affine


def _orientation(directions: np.ndarray) -> tuple[list[int], list[bool]]:
    """For each output axis (D, H, W): the array axis that runs closest to its world axis, and whether it runs the
    other way (closest canonical axes; an oblique series is taken at its nearest)."""
    unit = np.abs(directions / np.linalg.norm(directions, axis=0))
    order: list[int] = [-1, -1, -1]
    for flat in np.argsort(-unit, axis=None):  # strongest first, each world and array axis used once
        world, axis = divmod(int(flat), 3)
        output = _WORLD_AXIS.index(world)
        if order[output] < 0 and axis not in order:
            order[output] = axis
    return order, [bool(directions[_WORLD_AXIS[o], order[o]] < 0) for o in range(3)]


def _apply_orientation(stack: np.ndarray, affine: np.ndarray, order: list[int],
                       flips: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip the stack to (D, H, W), and its affine with it."""
    moved = np.transpose(stack, order)
    index_map = np.zeros((4, 4))  # new index -> old index
    index_map[3, 3] = 1.0
    for o, axis in enumerate(order):
        if flips[o]:
            moved = np.flip(moved, axis=o)
            index_map[axis, o], index_map[axis, 3] = -1.0, stack.shape[axis] - 1
        else:
            index_map[axis, o] = 1.0
    return moved, affine @ index_map


def _resample(stack: np.ndarray, affine: np.ndarray, shape: list[int],
              target: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """MONAI: Resize to `shape` (only depth is left to change), then pad to `target`, centred; the affine follows."""
    grid: Any = MetaTensor(torch.from_numpy(np.ascontiguousarray(stack))[None], affine=torch.from_numpy(affine))
    grid = Resize(shape, mode="trilinear", align_corners=False, anti_aliasing=True)(grid)
    grid = SpatialPad(list(target), method="symmetric")(grid)
    unit = np.clip(grid[0].numpy(), 0.0, 1.0)
    return unit, np.asarray(grid.affine, dtype=np.float64)


def _resize_affine(before: Sequence[int], after: Sequence[int]) -> np.ndarray:
    """New index to old index of a resize that keeps pixel centres aligned (grayscale.resize's convention)."""
    scale = np.array(before, dtype=np.float64) / np.array(after, dtype=np.float64)
    out = np.diag([*scale, 1.0])
    out[:3, 3] = 0.5 * scale - 0.5
    return out


def _decode(series: Series, window: Window | None, plane: tuple[int, int]) -> np.ndarray:
    """The slices in order, each windowed at full resolution then resized to `plane`, as float32 in [0, 1]."""
    out = np.empty((series.slice_count, *plane), dtype=np.float32)
    raw, inverted = [], []  # slices without any window are scaled together at the end, then inverted if need be
    held: tuple[object, Dataset | None] = (None, None)  # a multi-frame file is read once
    for k, ref in enumerate(series.slices):
        label = f"{series.name}, slice {k + 1} of {series.slice_count}"
        ds = held[1] if held[0] == ref.file and held[1] is not None else _read(ref, series, label)
        held = (ref.file, ds)
        values, own, monochrome1 = _slice_values(ds, ref, window, label)
        if own is None:
            raw.append(k)
            out[k] = resize(values, plane)
        else:
            unit = apply_window(values, *own)
            out[k] = resize(1.0 - unit if monochrome1 else unit, plane)
        if monochrome1 and own is None:
            inverted.append(k)
    if raw:
        out[raw] = percentile_scale(out[raw])
    out[inverted] = 1.0 - out[inverted]
    return np.clip(out, 0.0, 1.0, out=out)


def _read(ref: SliceRef, series: Series, label: str) -> Dataset:
    try:
        ds = read_dataset(ref.file, name=label)
        check_frame_size(ds, label)
    except DicomReadError as exc:
        raise VolumeError(f"{label}: {exc.reason}") from None
    if (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) != (series.rows, series.columns):
        raise VolumeError(f"{label}: its size differs from the series' {series.rows} x {series.columns}: the file "
                          "changed after the series was assembled")
    return ds


def _slice_values(ds: Dataset, ref: SliceRef, window: Window | None,
                  label: str) -> tuple[np.ndarray, tuple[Any, ...] | None, bool]:
    """Modality values of one slice, the window that applies to it (None: none known), and MONOCHROME1."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise VolumeError(f"{label}: it is {photometric}; volumes are read in gray (MONOCHROME1 or 2) only")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings quote values
            frame = pixel_array(ds, index=ref.frame) if ref.frame is not None else ds.pixel_array
            values = modality_values(ds, frame, ref.frame)
            own = (float(window[0]), float(window[1])) if window is not None else file_window(ds, ref.frame)
    except NotFinite as exc:
        raise VolumeError(f"{label}: {exc}") from None
    except Exception as exc:
        raise VolumeError(f"{label}: its pixel data cannot be decoded ({type(exc).__name__})") from None
    if frame.ndim != 2:
        raise VolumeError(f"{label}: its frame has {frame.ndim} dimensions; expected rows x columns")
    return values, own, photometric == "MONOCHROME1"

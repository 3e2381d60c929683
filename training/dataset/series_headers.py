"""Series assembly, step 1: one DICOM file's header as the slices it holds (training/dataset/series.py: the rest).

Headers only: pydicom's dcmread with stop_before_pixels and a fixed list of tags, so that no pixel and no element we
do not use is kept. A single-frame file is one slice. A multi-frame file (NumberOfFrames > 1, e.g. an enhanced MR or
CT) is one slice a frame, each with its plane geometry from the functional groups: the frame's own
(PerFrameFunctionalGroupsSequence) first, then the shared ones (SharedFunctionalGroupsSequence), then the top-level
attributes. The frame count and the frame size are checked against their bounds from a first, flat read before the
functional groups (one item a frame) are parsed.

Rules: the reasons given never quote a header value but numbers (sizes, counts), so no identifier reaches a log;
pydicom's validation warnings (which quote values) are silenced while reading, as in training/dataset/dicom.py.
Identifiers are kept in memory for the caller (labels by series, answers per series) and left out of every repr.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from training.dataset.dicom import DICOMDIR_SOP_CLASS, DicomReadError, check_frame_size
from training.dataset.subgroup_attributes import SUBGROUP_ATTRIBUTES, subgroup_values

# The most slices one volume may hold (single-frame files of one series, or frames of one file). 4,096 holds a
# whole-body CT at 0.5 mm (about 3,600 slices) with room; at 512 x 512 that is 1 G voxels (MAX_VOLUME_VOXELS).
MAX_SLICES = 4_096

_FLAT_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality",
    "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SpacingBetweenSlices", *SUBGROUP_ATTRIBUTES,
]
_GROUP_TAGS = ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"]

Vector = tuple[float, ...]


class NotAnImage(Exception):
    """A DICOM file with no image in it (a DICOMDIR index, a report): left out of the series, not an error."""


@dataclass(frozen=True)
class SliceHeader:
    """One slice: a single-frame file, or one frame of a multi-frame file.

    Attributes:
        file: the file it is in.
        frame: its 0-based frame index in a multi-frame file; None for a single-frame file.
        rows: Rows.
        columns: Columns.
        position: ImagePositionPatient (mm), or None when the header has none.
        orientation: ImageOrientationPatient, 6 direction cosines (row then column), or None.
        pixel_spacing: PixelSpacing (between rows, between columns; mm), or None.
        sop_instance_uid: the file's SOPInstanceUID; never logged.
    """

    file: Path
    frame: int | None
    rows: int
    columns: int
    position: Vector | None
    orientation: Vector | None
    pixel_spacing: Vector | None
    sop_instance_uid: str = field(repr=False)


@dataclass(frozen=True)
class FileHeader:
    """What series assembly needs of one file.

    Attributes:
        file: the file.
        name: how reasons name it (its path relative to the caller's root).
        frames: NumberOfFrames (1 for a single-frame file).
        spacing_between_slices: SpacingBetweenSlices (mm) or None: used only for a multi-frame file whose frames have
            no positions.
        slices: its slices in stored order.
        modality: Modality ('' when absent).
        series_uid, study_uid, patient_id: identifiers, in memory only ('' when absent).
        subgroups: its values of training/dataset/subgroup_attributes.py SUBGROUP_ATTRIBUTES (non-identifying).
    """

    file: Path
    name: str
    frames: int
    spacing_between_slices: float | None
    slices: tuple[SliceHeader, ...]
    modality: str
    series_uid: str = field(repr=False)
    study_uid: str = field(repr=False)
    patient_id: str = field(repr=False)
    subgroups: tuple[str, ...] = ()


def read_file_header(path: Path, *, name: str) -> FileHeader:
    """Read one file's header into its slices (the rules are in this module's docstring).

    Args:
        path: a DICOM Part 10 file.
        name: how reasons name the file.

    Returns:
        The file's header.

    Raises:
        NotAnImage: a DICOMDIR, or a file without Rows and Columns.
        DicomReadError: the header cannot be read, breaks a bound (MAX_SLICES, the frame size of
            training/dataset/dicom.py) or holds a geometry attribute that is not numbers.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's validation warnings quote element values
        ds = _read(path, name, _FLAT_TAGS)
        sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS:
            raise NotAnImage("a DICOMDIR index, not an image")
        if not ds.get("Rows") or not ds.get("Columns"):
            raise NotAnImage("no Rows or Columns in its header: not an image")
        check_frame_size(ds, name)
        frames = _int(ds, "NumberOfFrames", name)
        if frames > MAX_SLICES:
            raise DicomReadError(name, f"its header claims {frames} frames; a volume holds at most {MAX_SLICES} "
                                       "slices (training.dataset.series_headers.MAX_SLICES)")
        groups = _read(path, name, _GROUP_TAGS)
        return FileHeader(
            file=path, name=name, frames=frames,
            spacing_between_slices=_number(ds, "SpacingBetweenSlices", name),
            slices=tuple(_slices(ds, groups, frames, path, name)),
            modality=_text(ds, "Modality"), series_uid=_text(ds, "SeriesInstanceUID"),
            study_uid=_text(ds, "StudyInstanceUID"), patient_id=_text(ds, "PatientID"),
            subgroups=subgroup_values(ds),
        )


def _read(path: Path, name: str, tags: list[str]) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except InvalidDicomError:
        raise DicomReadError(name, "it is not a DICOM Part 10 file (no 'DICM' marker at byte 128)") from None
    except Exception as exc:  # pydicom raises many types on damaged files; its messages may quote values
        raise DicomReadError(name, f"its header cannot be read ({type(exc).__name__})") from None


def _slices(ds: Dataset, groups: Dataset, frames: int, path: Path, name: str) -> list[SliceHeader]:
    """One SliceHeader a frame, the geometry from the most specific place that has it."""
    shared = _first_item(groups, "SharedFunctionalGroupsSequence")
    per_frame = list(groups.get("PerFrameFunctionalGroupsSequence", None) or [])
    if per_frame and len(per_frame) != frames:
        raise DicomReadError(name, f"it has {len(per_frame)} per-frame functional groups for {frames} frames")
    out = []
    for index in range(frames):
        own = per_frame[index] if per_frame else None
        places = [p for p in (own, shared) if p is not None]
        out.append(SliceHeader(
            file=path, frame=index if frames > 1 else None,
            rows=int(ds.Rows), columns=int(ds.Columns),
            position=_geometry(places, ds, "PlanePositionSequence", "ImagePositionPatient", 3, name),
            orientation=_geometry(places, ds, "PlaneOrientationSequence", "ImageOrientationPatient", 6, name),
            pixel_spacing=_geometry(places, ds, "PixelMeasuresSequence", "PixelSpacing", 2, name),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
        ))
    return out


def _geometry(places: list[Dataset], ds: Dataset, sequence: str, keyword: str, size: int, name: str) -> Vector | None:
    """A geometry attribute from the first functional group that holds it, else from the top level."""
    for group in places:
        item = _first_item(group, sequence)
        if item is not None and keyword in item:
            return _vector(item, keyword, size, name)
    return _vector(ds, keyword, size, name) if keyword in ds else None


def _vector(ds: Dataset, keyword: str, size: int, name: str) -> Vector | None:
    raw = ds.get(keyword)
    if raw is None or raw == "":
        return None
    try:
        values = tuple(float(v) for v in (raw if isinstance(raw, list | tuple | MultiValue) else [raw]))
    except (TypeError, ValueError):
        values = ()
    if len(values) != size or not all(math.isfinite(v) for v in values):
        raise DicomReadError(name, f"its {keyword} is not {size} finite numbers")
    return values


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None:
        return None
    items = ds.get(keyword, None)
    return items[0] if items else None


def _number(ds: Dataset, keyword: str, name: str) -> float | None:
    values = _vector(ds, keyword, 1, name) if keyword in ds else None
    return values[0] if values else None


def _int(ds: Dataset, keyword: str, name: str) -> int:
    raw: Any = ds.get(keyword, 1)
    try:
        number = int(raw if raw not in (None, "") else 1)
    except (TypeError, ValueError):
        raise DicomReadError(name, f"its {keyword} is not a number") from None
    if number < 1:
        raise DicomReadError(name, f"its {keyword} is {number}; at least 1 expected")
    return number


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()

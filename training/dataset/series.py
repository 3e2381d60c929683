"""Series assembly: DICOM files at any depth and with any names, into the volumes they hold (issue 21, item 2).

`assemble(files, root=...)` reads headers only (training/dataset/series_headers.py) and returns a SeriesReport: each
good series as a `Series` record, each bad one with its reason in the shape of the 2-D data layer's bad files
({"file", "reason"}, plus "series"; the caller adds its "channel"), so that `on_bad_file` applies per series.

1. Group: single-frame files by SeriesInstanceUID; a multi-frame file is a series of its own. A group is named by its
   position ('series 3', counted in the order of its first file's name), never by a UID.
2. Split: slices of one group that differ in orientation (ImageOrientationPatient) or size (Rows, Columns) are
   separate candidate series; the largest keeps the name, the others are 'series 3 part 2' and so on. A part smaller
   than MIN_SLICES (a localizer inside a CT, say) is a bad entry that says it was split off; the rest goes on.
3. Order: by the position along the slice normal, the dot product of ImagePositionPatient with the cross product of
   the row and column direction cosines; never by file name or InstanceNumber. A multi-frame file whose frames have
   no positions keeps its stored frame order and takes its slice spacing from SpacingBetweenSlices (the record's
   notes say so). Single-frame files without ImagePositionPatient or ImageOrientationPatient form no volume.
4. Check: two slices closer than DUPLICATE_MM along the normal (a duplicated position), a gap over GAP_FACTOR times
   the median spacing (a missing slice), or mixed PixelSpacing make the series bad, each with its reason.

Bounds, checked from headers before any pixel is decoded: MAX_FILES a call, MAX_SERIES_FILES a series, MAX_SLICES
(training/dataset/series_headers.py) and MAX_VOLUME_VOXELS a volume. Reasons, names and notes carry numbers and
positions only: no UID or patient identifier (the records keep those in memory, out of their repr).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset.dicom import DicomReadError
from training.dataset.series_headers import MAX_SLICES, FileHeader, NotAnImage, SliceHeader, read_file_header

MAX_FILES = 200_000  # files one call reads the headers of: a few thousand series of a few dozen slices
MAX_SERIES_FILES = MAX_SLICES  # a single-frame file is one slice, so a series holds as many files as slices
MAX_VOLUME_VOXELS = 1 << 30  # 1 G voxels: 4,096 slices of 512 x 512, 2 GB as int16 before resampling
MIN_SLICES = 2  # one slice has no spacing along the normal and is a 2-D image, not a volume
GAP_FACTOR = 1.5  # a step over 1.5 x the median spacing is a missing slice (a 2x step is one slice gone)
DUPLICATE_MM = 0.01  # positions are written to 16 characters (DS): two slices closer than this are one position
_COSINE_TOLERANCE = 1e-3  # direction cosines as scanners round them; a localizer differs by far more
_SPACING_TOLERANCE = 1e-3  # relative, between two PixelSpacing values


@dataclass(frozen=True)
class SliceRef:
    """Where one slice of a volume comes from, to map results back to it.

    Attributes:
        file: the file.
        frame: the 0-based frame index in a multi-frame file; None for a single-frame file.
        sop_instance_uid: the file's SOPInstanceUID; in memory only, never logged.
    """

    file: Path
    frame: int | None
    sop_instance_uid: str = field(repr=False)


@dataclass(frozen=True)
class Series:
    """One good series: the slices of a volume in order along the normal, and its geometry.

    Attributes:
        name: 'series N' (or 'series N part K' after a split): its position in this report, never a UID.
        location: the folder of its files (or the multi-frame file), relative to the root given to `assemble`.
        slices: the slices, first to last along the slice normal.
        rows, columns: the size of each slice.
        pixel_spacing: (between rows, between columns) in mm, or None when the headers have none.
        slice_spacing: the median distance between neighbouring slices along the normal, in mm.
        orientation: the 6 direction cosines (row, column), or None (a multi-frame file without plane geometry).
        origin: ImagePositionPatient of the first slice, or None.
        modality: Modality of its files.
        multiframe: True for the frames of one multi-frame file.
        notes: what was assumed or split off, in words without identifiers.
        series_uid, study_uid, patient_id: identifiers, in memory only (labels by series, answers per series).
        subgroups: its first file's SUBGROUP_ATTRIBUTES values (training/dataset/subgroup_attributes.py).
    """

    name: str
    location: str
    slices: tuple[SliceRef, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, ...] | None
    slice_spacing: float
    orientation: tuple[float, ...] | None
    origin: tuple[float, ...] | None
    modality: str
    multiframe: bool
    notes: tuple[str, ...]
    series_uid: str = field(repr=False)
    study_uid: str = field(repr=False)
    patient_id: str = field(repr=False)
    subgroups: tuple[str, ...] = ()

    @property
    def slice_count(self) -> int:
        """How many slices the volume has."""
        return len(self.slices)

    @property
    def files(self) -> list[Path]:
        """Its files, each once, in slice order."""
        return list(dict.fromkeys(ref.file for ref in self.slices))

    def summary(self) -> dict[str, Any]:
        """The series as training.check lists it (JSON-ready; no identifier)."""
        return {
            "name": self.name, "location": self.location, "slices": self.slice_count,
            "rows": self.rows, "columns": self.columns,
            "pixel_spacing": list(self.pixel_spacing) if self.pixel_spacing else None,
            "slice_spacing": round(self.slice_spacing, 4), "modality": self.modality,
            "multiframe": self.multiframe, "notes": list(self.notes),
        }


@dataclass
class SeriesReport:
    """What `assemble` found.

    Attributes:
        series: the good series, in name order.
        bad: the bad series and unreadable files, each {"series", "file", "reason"} ("series" is '' for a file whose
            header cannot be read; "file" is the series' location, or the file).
        skipped: files that hold no image (a DICOMDIR, a report), each {"file", "reason"}.
        unusable: the SeriesInstanceUIDs and locations of the series none of whose parts is in `series` (kept for the
            labels, which may name them: their bad entry already answers for them); never listed or printed.
    """

    series: list[Series] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    unusable: set[str] = field(default_factory=set, repr=False)

    def listing(self) -> dict[str, Any]:
        """The report as `training.check --json` gives it (no identifier)."""
        return {"series": [s.summary() for s in self.series], "bad": list(self.bad), "skipped": list(self.skipped)}

    def lines(self) -> list[str]:
        """The report as `training.check` prints it: one line a series, then one a bad series or file."""
        out = [f"{s.name}: {s.location}: {s.slice_count} slices of {s.rows} x {s.columns}, "
               f"spacing {_spacing_text(s)} mm" + (f" ({'; '.join(s.notes)})" if s.notes else "")
               for s in self.series]
        out += [f"bad {e['series'] or 'file'}: {e['file']}: {e['reason']}" for e in self.bad]
        if self.skipped:
            out.append(f"{len(self.skipped)} file(s) without an image skipped")
        return out


def assemble(files: Sequence[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None) -> SeriesReport:
    """Assemble DICOM files into series from their headers (the rules are in this module's docstring).

    Args:
        files: the DICOM files, at any depth and with any names (at most MAX_FILES).
        root: the folder their names are given relative to in the report; None names them as given.

    Returns:
        The good series, the bad ones with their reasons, and the files without an image.

    Raises:
        ValueError: more than MAX_FILES files.
    """
    if len(files) > MAX_FILES:
        raise ValueError(f"{len(files)} files given; at most {MAX_FILES} are assembled in one call "
                         "(training.dataset.series.MAX_FILES): split the data into several channels")
    report = SeriesReport()
    headers = []
    for path in map(Path, files):
        name = _relative(path, root)
        try:
            headers.append(read_file_header(path, name=name))
        except NotAnImage as exc:
            report.skipped.append({"file": name, "reason": str(exc)})
        except DicomReadError as exc:
            report.bad.append({"series": "", "file": name, "reason": exc.reason})
    for index, group in enumerate(_groups(headers), 1):
        _assemble_group(f"series {index}", group, report)
    return report


def _groups(headers: list[FileHeader]) -> list[list[FileHeader]]:
    """Single-frame files by SeriesInstanceUID, a multi-frame file (or one without a UID) alone; each group sorted by
    name, the groups by their first name."""
    groups: dict[tuple[str, str], list[FileHeader]] = defaultdict(list)
    for header in headers:
        alone = header.frames > 1 or not header.series_uid
        groups[("file", header.name) if alone else ("series", header.series_uid)].append(header)
    return sorted((sorted(g, key=lambda h: h.name) for g in groups.values()), key=lambda g: g[0].name)


def _assemble_group(name: str, group: list[FileHeader], report: SeriesReport) -> None:
    location = group[0].name if group[0].frames > 1 else _common_folder([h.name for h in group])
    found = len(report.series)
    _assemble_parts(name, location, group, report)
    if len(report.series) == found:
        report.unusable.update(key for key in (group[0].series_uid, location) if key)


def _assemble_parts(name: str, location: str, group: list[FileHeader], report: SeriesReport) -> None:
    if len(group) > MAX_SERIES_FILES:
        report.bad.append(_bad(name, location, f"it has {len(group)} files; a series holds at most "
                                               f"{MAX_SERIES_FILES} (training.dataset.series.MAX_SERIES_FILES)"))
        return
    parts = _split([s for h in group for s in h.slices])
    main = parts[0]
    if len(parts) > 1 and len(main) < MIN_SLICES:
        report.bad.append(_bad(name, location, f"its {sum(map(len, parts))} slices have {len(parts)} different "
                                               "orientations or sizes, one slice each: they form no volume "
                                               "(a localizer series?)"))
        return
    notes = [f"{sum(map(len, parts[1:]))} slice(s) of another orientation or size split off"] if len(parts) > 1 else []
    for k, part in enumerate(parts):
        part_name = name if k == 0 else f"{name} part {k + 1}"
        if k > 0 and len(part) < MIN_SLICES:
            why = f"its {_difference(part[0], main[0])} differs from that of the other {len(main)} slices"
            report.bad.append(_bad(part_name, location, f"{_slices_text(len(part))} split off from {name}: {why} "
                                                        "(a localizer?)"))
            continue
        outcome = _build(part_name, location, part, group, notes if k == 0 else [f"split off from {name}"])
        if isinstance(outcome, Series):
            report.series.append(outcome)
        else:
            report.bad.append(_bad(part_name, location, "; ".join(outcome)))


def _split(slices: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Slices grouped by size and orientation, the largest part first (ties: the part seen first)."""
    parts: list[list[SliceHeader]] = []
    for s in slices:
        home = next((p for p in parts if _same_kind(p[0], s)), None)
        if home is None:
            parts.append([s])
        else:
            home.append(s)
    return sorted(parts, key=len, reverse=True)


def _same_kind(a: SliceHeader, b: SliceHeader) -> bool:
    if (a.rows, a.columns) != (b.rows, b.columns) or (a.orientation is None) != (b.orientation is None):
        return False
    return a.orientation is None or b.orientation is None or _close(a.orientation, b.orientation, _COSINE_TOLERANCE)


def _build(name: str, location: str, part: list[SliceHeader], group: list[FileHeader],
           notes: list[str]) -> Series | list[str]:
    """The Series record of one candidate part, or the reasons it is bad."""
    n, first = len(part), part[0]
    reasons = _bounds(part) + _pixel_spacing_problems(part)
    multiframe = len(group) == 1 and group[0].frames > 1
    stored_order = multiframe and all(s.position is None for s in part)
    unplaced = sum(s.position is None or s.orientation is None for s in part)
    if unplaced and not stored_order:
        reasons.append(f"{unplaced} of its {n} slice(s) have no ImagePositionPatient or ImageOrientationPatient: "
                       "without them slices can not be ordered or spaced, so they form no volume")
    if reasons:
        return reasons
    if stored_order:
        ordered, spacing = part, group[0].spacing_between_slices
        if spacing is None or spacing <= 0:
            return ["its frames have no plane positions and the file no SpacingBetweenSlices: the slice spacing "
                    "is unknown"]
        notes = [*notes, "frames in stored order with SpacingBetweenSlices: the file has no per-frame positions"]
    else:
        ordered, offsets = _order(part)
        spacing, problems = _spacing(offsets)
        if problems:
            return problems
    if first.pixel_spacing is None:
        notes = [*notes, "no PixelSpacing in the headers"]
    header = group[0]
    return Series(
        name=name, location=location,
        slices=tuple(SliceRef(s.file, s.frame, s.sop_instance_uid) for s in ordered),
        rows=first.rows, columns=first.columns, pixel_spacing=first.pixel_spacing, slice_spacing=float(spacing),
        orientation=first.orientation, origin=ordered[0].position, modality=header.modality, multiframe=multiframe,
        notes=tuple(notes), series_uid=header.series_uid, study_uid=header.study_uid, patient_id=header.patient_id,
        subgroups=header.subgroups,
    )


def _bounds(part: list[SliceHeader]) -> list[str]:
    n, first = len(part), part[0]
    if n < MIN_SLICES:
        return [f"it has {_slices_text(n)}; a volume needs at least {MIN_SLICES}"]
    if n > MAX_SLICES:
        return [f"it has {n} slices; a volume holds at most {MAX_SLICES} (training.dataset.series_headers.MAX_SLICES)"]
    voxels = n * first.rows * first.columns
    if voxels > MAX_VOLUME_VOXELS:
        return [f"it has {n} slices of {first.rows} x {first.columns}, {voxels} voxels; a volume holds at most "
                f"{MAX_VOLUME_VOXELS} (training.dataset.series.MAX_VOLUME_VOXELS)"]
    return []


def _pixel_spacing_problems(part: list[SliceHeader]) -> list[str]:
    kinds: list[tuple[float, ...] | None] = []
    for s in part:
        if not any(_same_spacing(s.pixel_spacing, k) for k in kinds):
            kinds.append(s.pixel_spacing)
    if len(kinds) < 2:
        return []
    shown = ", ".join("none" if k is None else " x ".join(f"{v:g}" for v in k) for k in kinds[:4])
    return [f"mixed pixel spacing ({shown} mm): its slices do not share one grid"]


def _same_spacing(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(abs(x - y) <= _SPACING_TOLERANCE * max(abs(x), abs(y), 1e-9) for x, y in zip(a, b, strict=True))


def _order(part: list[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray]:
    """The slices sorted by their position along the normal (row x column cosines), and those positions."""
    cosines = np.asarray(part[0].orientation, dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    offsets = np.array([float(np.dot(s.position, normal)) for s in part if s.position is not None])
    order = np.argsort(offsets, kind="stable")
    return [part[i] for i in order], offsets[order]


def _spacing(offsets: np.ndarray) -> tuple[float, list[str]]:
    """The median spacing, and the duplicated positions and gaps, counted along the normal."""
    steps = np.diff(offsets)
    n, problems = len(offsets), []
    duplicates = np.flatnonzero(steps < DUPLICATE_MM)
    if len(duplicates):
        pairs = ", ".join(f"{i + 1} and {i + 2}" for i in duplicates[:3])
        problems.append(f"{len(duplicates)} duplicated position(s): slices {pairs} of {n} (counted along the slice "
                        f"normal) lie within {DUPLICATE_MM} mm of each other")
    distinct = steps[steps >= DUPLICATE_MM]
    median = float(np.median(distinct)) if len(distinct) else 0.0
    gaps = np.flatnonzero(steps > GAP_FACTOR * median) if median > 0 else np.array([], dtype=int)
    if len(gaps):
        shown = ", ".join(f"{steps[i]:.4g} mm between slices {i + 1} and {i + 2}" for i in gaps[:3])
        problems.append(f"{len(gaps)} gap(s) over {GAP_FACTOR} x the median spacing of {median:.4g} mm ({shown} of "
                        f"{n}, counted along the slice normal): a slice is missing")
    return median, problems


def _difference(a: SliceHeader, b: SliceHeader) -> str:
    if (a.rows, a.columns) != (b.rows, b.columns):
        return f"size ({a.rows} x {a.columns}, not {b.rows} x {b.columns})"
    return "orientation"


def _close(a: Sequence[float], b: Sequence[float], tolerance: float) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def _slices_text(n: int) -> str:
    return "1 slice" if n == 1 else f"{n} slices"


def _spacing_text(s: Series) -> str:
    rows_columns = " x ".join(f"{v:.4g}" for v in s.pixel_spacing) if s.pixel_spacing else "? x ?"
    return f"{rows_columns} x {s.slice_spacing:.4g}"


def _common_folder(names: list[str]) -> str:
    folder = os.path.commonpath([os.path.dirname(n) or "." for n in names]) if names else ""
    return Path(folder).as_posix() if folder else "."


def _relative(path: Path, root: str | os.PathLike[str] | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _bad(series: str, file: str, reason: str) -> dict[str, str]:
    """A bad-series record (the 2-D bad-file shape, plus the series' name)."""
    return {"series": series, "file": file, "reason": reason}

"""Reading one DICOM image into the network's input: the single definition shared by training and inference.

`load_image(source, image_size=(H, W), window=None)` returns a float32 array (1, H, W) in [0, 1]. The steps, in order:

1. Read with pydicom (`dcmread`). The file must be DICOM Part 10: the 'DICM' marker at byte 128. Compressed transfer
   syntaxes decode through pydicom's plugins: pylibjpeg (+ libjpeg, openjpeg, rle) and python-gdcm where installed.
2. One frame per file. Multi-frame files give their middle frame, index `NumberOfFrames // 2` (0-based); only that
   frame is decoded, and only when the header's Rows x Columns x SamplesPerPixel is at most MAX_FRAME_PIXELS and
   that frame decodes into at most MAX_FRAME_BYTES (a larger claim is refused before any pixel is decoded).
3. Grayscale (MONOCHROME1/2): the Modality LUT: RescaleSlope/RescaleIntercept (from the frame's functional groups
   in enhanced multi-frame files), or the Modality LUT Sequence. Then the intensity window maps values to [0, 1]:
   the `window` argument (center, width) when given, else the file's first WindowCenter/WindowWidth pair with its
   VOILUTFunction (LINEAR, LINEAR_EXACT or SIGMOID), else robust scaling between the 0.5th and 99.5th
   percentiles. A VOI LUT Sequence is not applied: such files get the percentile scaling. A NaN or infinite
   rescale or window value is refused, naming the attribute. MONOCHROME1 is inverted
   after windowing (1 - v), so that bright always means dense.
4. Colour (RGB, YBR_* as pydicom converts them to RGB, PALETTE COLOR through its lookup table): converted to gray
   by the ITU-R BT.601 luma rule, 0.299 R + 0.587 G + 0.114 B, divided by the largest value a sample can hold
   (2^BitsStored - 1; for a palette, its largest entry). Colour data is already display-ready, so no window is
   applied to it.
5. Resize to (H, W) by separable antialiased bilinear resampling (a triangle filter as wide as the scale factor),
   without keeping the aspect ratio; values clipped to [0, 1].

Steps 1 and 2 (reading, the frame limits, the errors) are this module's; steps 3 to 5 are computed in
training/dataset/grayscale.py, which sees a decoded frame and never a file.

pydicom's own log records are kept out of the logs (its logger stops propagating when this module is imported):
its warnings may quote element values, PatientName included, and logs end up in CloudWatch. The reasons this
module gives instead never carry PatientID or PatientName.

No further normalization follows: the network sees values in [0, 1] in training (from the cache, see
training/dataset/prepare.py) and in inference (from this function). The MONAI transforms wrapping this function live in
training/dicom_transforms.py, so that decoding processes need not import MONAI (about 2.5 s).
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from training.dataset.grayscale import (
    NotFinite,
    Window,
    monochrome_to_unit,
    palette_to_unit,
    resize,
    rgb_to_unit,
)
from training.dataset.subgroup_attributes import SUBGROUP_ATTRIBUTES, subgroup_values
from training.job.config import check_image_size, check_window

Source = str | os.PathLike[str] | bytes | bytearray | BinaryIO

DICM_OFFSET = 128  # Part 10 files: a 128-byte preamble, then b"DICM"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: an index, not an image
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# The largest frame that is decoded, checked from the header (Rows x Columns x SamplesPerPixel) before any pixel is:
# 40 megapixels hold a full-field mammogram (about 4,100 x 5,400) or a 3-sample 3,600^2 photograph with room, and
# decode into at most 320 MB (MAX_FRAME_BYTES: 8 bytes a sample). A claim beyond it is refused unread: an 18 KB JPEG
# 2000 file can claim 16,000 x 16,000 pixels, which takes 4 GB and 15 s to decode. Only one frame of a multi-frame
# file is decoded (NumberOfFrames does not multiply the work), so the bound is per frame: pixels x bytes a sample.
MAX_FRAME_PIXELS = 40_000_000
MAX_FRAME_BYTES = 8 * MAX_FRAME_PIXELS  # the decoded frame: Rows x Columns x SamplesPerPixel x BitsAllocated / 8
# Never PatientName or the birth date: nothing needs them. The subgroup attributes are not identifying (PatientAge
# becomes a band as it is read).
_HEADER_TAGS = ["PatientID", "StudyInstanceUID", "SOPClassUID", *SUBGROUP_ATTRIBUTES]

# Privacy: pydicom's warnings quote element values (a malformed PatientName, say); its records stop here instead
# of reaching the job's log handlers and CloudWatch. Children ("pydicom.*") stop here too.
logging.getLogger("pydicom").propagate = False


class DicomReadError(ValueError):
    """A DICOM file that cannot become a training or inference image.

    Attributes:
        file: the file's name as the caller knows it (its path inside the channel, or the name given).
        reason: why, in one sentence, without patient identifiers.
    """

    def __init__(self, file: str, reason: str) -> None:
        self.file = file
        self.reason = reason
        super().__init__(f"{file}: {reason}")


@dataclass(frozen=True)
class DicomHeader:
    """The few header values the data layer needs before decoding.

    Attributes:
        patient_id: PatientID, stripped ('' when absent). Never log it: hash it (training/dataset/split.py).
        study_uid: StudyInstanceUID ('' when absent).
        sop_class_uid: SOPClassUID, or the file meta MediaStorageSOPClassUID.
        subgroups: the values of training/dataset/subgroup_attributes.py SUBGROUP_ATTRIBUTES, in order (for the test
            metrics per subgroup); () where not read.
    """

    patient_id: str
    study_uid: str
    sop_class_uid: str
    subgroups: tuple[str, ...] = ()


def has_dicom_marker(path: str | os.PathLike[str]) -> bool:
    """Tell whether a file is DICOM Part 10: b'DICM' at byte 128, whatever its name or suffix.

    Args:
        path: the file to look at; only its first 132 bytes are read.

    Returns:
        True when the marker is there; False for shorter files, other files and unreadable ones.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(DICM_OFFSET + 4)
    except OSError:
        return False
    return head[DICM_OFFSET : DICM_OFFSET + 4] == b"DICM"



def dicom_files_under(root: str | os.PathLike[str], *, limit: int | None = None) -> list[Path]:
    """The DICOM files below a folder, at any depth, sorted: by the marker (has_dicom_marker), not by name or suffix;
    hidden folders (.ipynb_checkpoints, .git) and DICOMDIR indexes left out; symbolic links to folders not followed.

    Args:
        root: the folder.
        limit: stop with ValueError once more than this many are found (None: no bound).

    Raises:
        ValueError: more than `limit` DICOM files (the message names the folder and the bound).
    """
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder, name)
            if name.upper() != "DICOMDIR" and path.is_file() and has_dicom_marker(path):
                found.append(path)
                if limit is not None and len(found) > limit:
                    raise ValueError(f"{root} holds more than {limit} DICOM files")
    return sorted(found)

def read_header(path: str | os.PathLike[str], *, name: str | None = None) -> DicomHeader:
    """Read the identifiers used for the patient split, without the pixel data.

    Args:
        path: a DICOM Part 10 file.
        name: how errors name the file (its path inside the channel); default the path.

    Returns:
        The header values.

    Raises:
        DicomReadError: the file is not DICOM Part 10 or its header cannot be parsed.
    """
    label = name if name is not None else str(path)
    # pydicom validates values as they are read and converted, warning with the value quoted: no warnings here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            sop = str(ds.get("SOPClassUID", "") or "")
            if not sop and "MediaStorageSOPClassUID" in ds.file_meta:
                sop = str(ds.file_meta.MediaStorageSOPClassUID)
            return DicomHeader(
                patient_id=str(ds.get("PatientID", "") or "").strip(),
                study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
                sop_class_uid=sop,
                subgroups=subgroup_values(ds),
            )
        except InvalidDicomError:
            raise DicomReadError(label, _NOT_PART10) from None
        except Exception as exc:  # pydicom raises many types on damaged files
            raise DicomReadError(label, f"its header cannot be read ({_describe(exc, path, label)})") from None


def read_dataset(source: Source, *, name: str | None = None) -> Dataset:
    """Read a whole DICOM Part 10 file (pixel data still encoded).

    Args:
        source: a path, the file's bytes, or a binary file object.
        name: how errors name the file; default the path, or '<bytes>'.

    Returns:
        The pydicom dataset.

    Raises:
        DicomReadError: not DICOM Part 10, or unreadable.
    """
    label = _label(source, name)
    fp: Any = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # value-quoting validation warnings, as in read_header
            return pydicom.dcmread(fp)
    except InvalidDicomError:
        raise DicomReadError(label, _NOT_PART10) from None
    except FileNotFoundError:
        raise DicomReadError(label, "the file does not exist") from None
    except Exception as exc:
        raise DicomReadError(label, f"it cannot be read as DICOM ({_describe(exc, source, label)})") from None


def load_image(
    source: Source, *, image_size: Sequence[int], window: Window | None = None, name: str | None = None
) -> np.ndarray:
    """Read one DICOM image and preprocess it for the network (the rules are in this module's docstring).

    Args:
        source: a path, the file's bytes, or a binary file object.
        image_size: (H, W) of the result.
        window: (center, width) in modality units (Hounsfield units for CT) overriding the file's window;
            None uses the file's window, else percentile scaling.
        name: how errors name the file; default the path, or '<bytes>'.

    Returns:
        float32 array of shape (1, H, W), values in [0, 1].

    Raises:
        DicomReadError: the file cannot become an image; the message names the file and the reason.
    """
    label = _label(source, name)
    ds = read_dataset(source, name=label)
    return preprocess(ds, image_size=image_size, window=window, name=label, source=source)


def preprocess(
    ds: Dataset,
    *,
    image_size: Sequence[int],
    window: Window | None = None,
    name: str = "<dataset>",
    source: Any = None,
) -> np.ndarray:
    """Turn a read dataset into the network's input (the rules are in this module's docstring).

    Args:
        ds: the dataset, as `read_dataset` returns it.
        image_size: (H, W) of the result.
        window: (center, width) overriding the file's window, or None.
        name: how errors name the file.
        source: the path the dataset came from, only to keep it out of error messages.

    Returns:
        float32 array of shape (1, H, W), values in [0, 1].

    Raises:
        DicomReadError: no pixel data, a decoder is missing or fails, or the pixel layout is unsupported.
    """
    height, width = check_image_size(image_size)
    check_window(window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # value-quoting validation warnings, as in read_header
        scrub = _identifiers(ds)
        try:
            gray = _gray_unit_frame(ds, window, name)
        except DicomReadError as exc:
            raise DicomReadError(name, _scrub(exc.reason, scrub)) from None
        except NotFinite as exc:
            raise DicomReadError(name, str(exc)) from None
        except Exception as exc:
            reason = f"its pixel data cannot be decoded ({_describe(exc, source, name)})"
            raise DicomReadError(name, _scrub(reason, scrub)) from None
    out = resize(gray, (height, width))
    np.clip(out, 0.0, 1.0, out=out)
    return out[None]


def middle_frame_index(ds: Dataset) -> int | None:
    """The frame a multi-frame file contributes (the documented rule: NumberOfFrames // 2).

    Args:
        ds: the dataset.

    Returns:
        The 0-based frame index, or None for a single-frame file.
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return frames // 2 if frames > 1 else None


def _gray_unit_frame(ds: Dataset, window: Window | None, name: str) -> np.ndarray:
    """Decode the chosen frame and bring it to gray values in [0, 1] at full resolution (training/dataset/grayscale.py
    from here on)."""
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DicomReadError(name, f"it has no pixel data{kind}: it is not an image; remove it or its label")
    check_frame_size(ds, name)
    index = middle_frame_index(ds)
    frame = pixel_array(ds, index=index) if index is not None else ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return palette_to_unit(ds, frame)
    if frame.ndim == 3:  # (rows, columns, samples): RGB, or YBR that pydicom converted to RGB
        if frame.shape[-1] != 3:
            raise DicomReadError(name, f"it has {frame.shape[-1]} samples per pixel; only 1 (gray) or 3 (colour)")
        return rgb_to_unit(ds, frame)
    if frame.ndim != 2:
        raise DicomReadError(name, f"its frame has shape {frame.shape}; expected rows x columns")
    return monochrome_to_unit(ds, frame, index, window)


def check_frame_size(ds: Dataset, name: str) -> None:
    """Refuse a frame larger than MAX_FRAME_PIXELS samples or MAX_FRAME_BYTES decoded, from the header alone (Rows,
    Columns, SamplesPerPixel, BitsAllocated), before any pixel is decoded.

    Args:
        ds: the dataset (read with or without its pixel data).
        name: how the error names the file.

    Raises:
        DicomReadError: a claim beyond either limit, or a size attribute that is not a number; the limit is named.
    """
    rows, columns = _header_int(ds, "Rows", name), _header_int(ds, "Columns", name)
    samples = _header_int(ds, "SamplesPerPixel", name, default=1)
    pixels = rows * columns * samples
    if pixels > MAX_FRAME_PIXELS:
        raise DicomReadError(
            name, f"its header claims frames of {rows} x {columns} pixels x {samples} sample(s), "
                  f"{pixels} in all; at most {MAX_FRAME_PIXELS} are decoded "
                  "(training.dataset.dicom.MAX_FRAME_PIXELS)")
    bits = _header_int(ds, "BitsAllocated", name, default=8)
    decoded = pixels * max(1, -(-bits // 8))
    if decoded > MAX_FRAME_BYTES:
        raise DicomReadError(
            name, f"its header claims frames of {pixels} samples x {bits} bits allocated, {decoded} bytes decoded; "
                  f"at most {MAX_FRAME_BYTES} (training.dataset.dicom.MAX_FRAME_BYTES)")


def frame_samples(ds: Dataset, name: str) -> int:
    """Rows x Columns x SamplesPerPixel of the one frame a file contributes (0 without Rows or Columns)."""
    return (_header_int(ds, "Rows", name) * _header_int(ds, "Columns", name)
            * _header_int(ds, "SamplesPerPixel", name, default=1))


def _header_int(ds: Dataset, keyword: str, name: str, default: int = 0) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(value if value is not None else default)
    except (TypeError, ValueError):
        raise DicomReadError(name, f"its {keyword} is not a number") from None
    if number < 0:
        raise DicomReadError(name, f"its {keyword} is negative ({number})")
    return number


def _identifiers(ds: Dataset) -> list[str]:
    """The patient identifiers of a dataset that must never reach a message."""
    values = [str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or "")]
    values += re.split(r"[\^=]", values[1])
    return [v.strip() for v in values if len(v.strip()) >= 3]


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace each identifier in a message."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


def _describe(exc: BaseException, source: Any, name: str) -> str:
    """An exception in one short line, with the absolute path replaced by the file's name."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(source, str | os.PathLike):
        text = text.replace(str(Path(source).resolve()), name).replace(os.fspath(source), name)
    return text[:300]


def _label(source: Any, name: str | None) -> str:
    """How messages name a source."""
    if name is not None:
        return name
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return "<bytes>"


_NOT_PART10 = (
    "it is not a DICOM Part 10 file (no 'DICM' marker at byte 128); export it from the PACS or viewer as a "
    "DICOM file with its file meta header"
)

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

pydicom's own log records are kept out of the logs (its logger stops propagating when this module is imported):
its warnings may quote element values, PatientName included, and logs end up in CloudWatch. The reasons this
module gives instead never carry PatientID or PatientName.

No further normalization follows: the network sees values in [0, 1] in training (from the cache, see
training/dataset/prepare.py) and in inference (from this function). The MONAI transforms wrapping this function live in
training/dicom_transforms.py, so that decoding processes need not import MONAI (about 2.5 s).
"""

from __future__ import annotations

import functools
import io
import logging
import math
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
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

Source = str | os.PathLike[str] | bytes | bytearray | BinaryIO
Window = tuple[float, float]

DICM_OFFSET = 128  # Part 10 files: a 128-byte preamble, then b"DICM"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: an index, not an image
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of the Y in DICOM's YBR_FULL
PERCENTILES = (0.5, 99.5)  # robust scaling when no window is known: ignores a few extreme pixels
_PERCENTILE_SAMPLE = 256 * 256  # pixels sampled for the percentiles: exact enough, and fast on 2,000^2 images
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# The largest frame that is decoded, checked from the header (Rows x Columns x SamplesPerPixel) before any pixel is:
# 40 megapixels hold a full-field mammogram (about 4,100 x 5,400) or a 3-sample 3,600^2 photograph with room, and
# decode into at most 320 MB (MAX_FRAME_BYTES: 8 bytes a sample). A claim beyond it is refused unread: an 18 KB JPEG
# 2000 file can claim 16,000 x 16,000 pixels, which takes 4 GB and 15 s to decode. Only one frame of a multi-frame
# file is decoded (NumberOfFrames does not multiply the work), so the bound is per frame: pixels x bytes a sample.
MAX_FRAME_PIXELS = 40_000_000
MAX_FRAME_BYTES = 8 * MAX_FRAME_PIXELS  # the decoded frame: Rows x Columns x SamplesPerPixel x BitsAllocated / 8
_HEADER_TAGS = ["PatientID", "PatientName", "StudyInstanceUID", "SOPClassUID"]

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
        patient_name: PatientName as text ('' when absent); kept only to scrub it from error messages.
        study_uid: StudyInstanceUID ('' when absent).
        sop_class_uid: SOPClassUID, or the file meta MediaStorageSOPClassUID.
    """

    patient_id: str
    patient_name: str
    study_uid: str
    sop_class_uid: str


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
                patient_name=str(ds.get("PatientName", "") or "").strip(),
                study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
                sop_class_uid=sop,
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
    height, width = _check_size(image_size)
    _check_window(window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # value-quoting validation warnings, as in read_header
        scrub = _identifiers(ds)
        try:
            gray = _gray_unit_frame(ds, window, name)
        except DicomReadError as exc:
            raise DicomReadError(name, _scrub(exc.reason, scrub)) from None
        except Exception as exc:
            reason = f"its pixel data cannot be decoded ({_describe(exc, source, name)})"
            raise DicomReadError(name, _scrub(reason, scrub)) from None
    out = resize(gray, (height, width))
    np.clip(out, 0.0, 1.0, out=out)
    return out[None]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantize an image in [0, 1] to uint8 (the training cache's storage; at most 1/510 from the float).

    Args:
        image: float array in [0, 1].

    Returns:
        uint8 array of the same shape, round(255 * image).
    """
    return np.rint(image * 255.0).astype(np.uint8)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D float image by separable antialiased bilinear resampling.

    Each output pixel is a weighted sum over a band of input pixels (a triangle filter as wide as the downscale
    factor): the same weights as torch.nn.functional.interpolate(mode="bilinear", antialias=True) (equal to 2e-7),
    computed with numpy alone so that decoding processes need not import torch. Measured here: 0.15 ms at
    256^2 -> 108x96, 3.8 ms at 2,000^2; a dense matrix product was slower and erratic under BLAS threads.

    Args:
        image: 2-D float array.
        size: (H, W) of the result.

    Returns:
        float32 array of shape size.
    """
    row_index, row_weight = _resample_band(image.shape[0], size[0])
    col_index, col_weight = _resample_band(image.shape[1], size[1])
    rows = np.einsum("ot,otw->ow", row_weight, image.astype(np.float32, copy=False)[row_index])
    return np.ascontiguousarray(np.einsum("ot,hot->ho", col_weight, rows[:, col_index]), dtype=np.float32)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map modality values to [0, 1] through a DICOM VOI window (PS3.3 C.11.2.1.2).

    Args:
        values: float32 array of modality values (after RescaleSlope/Intercept).
        center: window center.
        width: window width, > 0 (>= 1 for LINEAR).
        function: VOILUTFunction: 'LINEAR', 'LINEAR_EXACT' or 'SIGMOID'.

    Returns:
        float32 array in [0, 1].
    """
    if function == "SIGMOID":
        sigmoid = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        return sigmoid.astype(np.float32, copy=False)
    if function == "LINEAR_EXACT":
        gain, offset = 1.0 / width, 0.5 - center / width
    elif width <= 1.0:
        return (values > center - 0.5).astype(np.float32)
    else:
        gain, offset = 1.0 / (width - 1.0), 0.5 - (center - 0.5) / (width - 1.0)
    out = values.astype(np.float32) * np.float32(gain)
    out += np.float32(offset)
    return np.clip(out, 0.0, 1.0, out=out)


def percentile_scale(values: np.ndarray) -> np.ndarray:
    """Map values to [0, 1] between their 0.5th and 99.5th percentiles (the fallback without a window).

    Args:
        values: 2-D float32 array.

    Returns:
        float32 array in [0, 1]; zeros for a constant image.
    """
    step = max(1, int(np.sqrt(values.size / _PERCENTILE_SAMPLE)))
    sample = values[::step, ::step]
    low, high = np.percentile(sample, PERCENTILES)
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32, copy=False)


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
    """Decode the chosen frame and bring it to gray values in [0, 1] at full resolution."""
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DicomReadError(name, f"it has no pixel data{kind}: it is not an image; remove it or its label")
    check_frame_size(ds, name)
    index = middle_frame_index(ds)
    frame = pixel_array(ds, index=index) if index is not None else ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return _luma(apply_color_lut(frame, ds)) / _palette_max(ds, frame)
    if frame.ndim == 3:  # (rows, columns, samples): RGB, or YBR that pydicom converted to RGB
        if frame.shape[-1] != 3:
            raise DicomReadError(name, f"it has {frame.shape[-1]} samples per pixel; only 1 (gray) or 3 (colour)")
        return _luma(frame) / _max_sample_value(ds, frame)
    if frame.ndim != 2:
        raise DicomReadError(name, f"its frame has shape {frame.shape}; expected rows x columns")
    values = _modality_values(ds, frame, index, name)
    if window is not None:
        unit = apply_window(values, float(window[0]), float(window[1]))
    else:
        file_window = _file_window(ds, index, name)
        unit = apply_window(values, *file_window) if file_window else percentile_scale(values)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


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


def _finite(value: float, keyword: str, name: str) -> float:
    """A value from the file that the image is computed with: NaN or infinity would make every pixel NaN."""
    if not math.isfinite(value):
        raise DicomReadError(name, f"its {keyword} is {value}, not a finite number")
    return value


def _modality_values(ds: Dataset, frame: np.ndarray, index: int | None, name: str) -> np.ndarray:
    """Apply the Modality LUT: rescale (per frame where the file says so) or the Modality LUT Sequence."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    values = frame.astype(np.float32)
    rescale = _frame_item(ds, index, "PixelValueTransformationSequence")
    slope = _finite(_number(rescale.get("RescaleSlope") if rescale is not None else None,
                            ds.get("RescaleSlope"), 1.0), "RescaleSlope", name)
    intercept = _finite(_number(rescale.get("RescaleIntercept") if rescale is not None else None,
                                ds.get("RescaleIntercept"), 0.0), "RescaleIntercept", name)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _file_window(ds: Dataset, index: int | None, name: str) -> tuple[float, float, str] | None:
    """The file's first window (center, width, function), from the frame's functional groups or the top level."""
    voi = _frame_item(ds, index, "FrameVOILUTSequence")
    source = voi if voi is not None and "WindowCenter" in voi else ds
    center = _first(source.get("WindowCenter"))
    width = _first(source.get("WindowWidth"))
    if center is None or width is None:
        return None
    _finite(center, "WindowCenter", name)
    _finite(width, "WindowWidth", name)
    if width <= 0:
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    return center, width, function


def _frame_item(ds: Dataset, index: int | None, sequence: str) -> Dataset | None:
    """The first item of a functional-group sequence for a frame: per-frame first, then shared."""
    groups: list[Any] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def _first(value: Any) -> float | None:
    """The first number of a possibly multi-valued DS element."""
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return _first(value[0]) if len(value) else None


def _number(frame_value: Any, top_value: Any, default: float) -> float:
    """A rescale value: the frame's, else the top level's, else the default."""
    for value in (frame_value, top_value):
        number = _first(value)
        if number is not None:
            return number
    return default


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Gray from RGB by the BT.601 weights."""
    weights = np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    return (rgb.astype(np.float32) @ weights).astype(np.float32, copy=False)


def _palette_max(ds: Dataset, frame: np.ndarray) -> float:
    """The palette's largest entry: 16-bit palettes hold 8-bit values scaled by 256 in some files and not in
    others (the pydicom-data pair OBXXXX1A / OBXXXX1A_expb shows both), so dividing by the type's maximum would
    leave some images nearly black."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if descriptor is not None and len(descriptor) == 3:
        entries = int(descriptor[0]) or 2**16
        first = int(descriptor[1])
        everything = np.arange(first, first + entries).astype(frame.dtype)
        largest = float(np.max(apply_color_lut(everything, ds)))
        if largest > 0:
            return largest
    return float(np.iinfo(frame.dtype).max) if frame.dtype.kind in "ui" else 1.0


def _max_sample_value(ds: Dataset, frame: np.ndarray) -> float:
    """The largest value a colour sample can hold: from BitsStored, else the array's dtype."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if bits > 0:
        return float(2**bits - 1)
    return float(np.iinfo(frame.dtype).max) if frame.dtype.kind in "ui" else 1.0


@functools.lru_cache(maxsize=64)
def _resample_band(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights (n_out x taps) of a triangle filter widened by the downscale factor."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    first = np.clip(np.floor(centers - support).astype(np.int64), 0, None)
    last = np.minimum(np.ceil(centers + support).astype(np.int64), n_in)
    taps = int((last - first).max())
    index = first[:, None] + np.arange(taps)[None, :]
    weight = np.clip(1.0 - np.abs(index + 0.5 - centers[:, None]) / support, 0.0, None)
    weight[index >= n_in] = 0.0  # taps past the edge: zero weight, then renormalized like torch's antialias
    weight /= weight.sum(axis=1, keepdims=True)
    return np.minimum(index, n_in - 1), weight.astype(np.float32)


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    """Validate (H, W)."""
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 8 or max(size) > 4096:
        raise ValueError(f"image_size must be (H, W) with 8 <= H, W <= 4096; got {tuple(image_size)}")
    return size[0], size[1]


def _check_window(window: Window | None) -> None:
    """Validate a (center, width) window."""
    if window is None:
        return
    if len(window) != 2 or not math.isfinite(float(window[0])) or not (math.isfinite(float(window[1]))
                                                                       and float(window[1]) > 0):
        raise ValueError(f"window must be (center, width), finite numbers with width > 0, e.g. (40, 400) for CT; "
                         f"got {window}")


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

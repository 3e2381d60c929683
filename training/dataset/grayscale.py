"""From a decoded frame to gray values in [0, 1] at the network's size: steps 3 to 5 of training/dataset/dicom.py,
whose docstring states the rules (the Modality LUT, the VOI window or percentile scaling, MONOCHROME1, colour to
gray, resizing), and the uint8 quantization of the training cache.

Reading the file, its limits and its errors are training/dataset/dicom.py's; this module sees a dataset already read
and a frame already decoded. It imports numpy and pydicom's lookup-table functions only (decoding processes import
it, training/dataset/cache.py), and says nothing about files: a NaN or infinite value it computes with raises
NotFinite, which training/dataset/dicom.py reports as the file's DicomReadError.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut

Window = tuple[float, float]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of the Y in DICOM's YBR_FULL
PERCENTILES = (0.5, 99.5)  # robust scaling when no window is known: ignores a few extreme pixels
_PERCENTILE_SAMPLE = 256 * 256  # pixels sampled for the percentiles: exact enough, and fast on 2,000^2 images


class NotFinite(ValueError):
    """A value of the file that the image is computed with is NaN or infinite: every pixel would be NaN."""

    def __init__(self, keyword: str, value: float) -> None:
        super().__init__(f"its {keyword} is {value}, not a finite number")


def monochrome_to_unit(ds: Dataset, frame: np.ndarray, index: int | None, window: Window | None) -> np.ndarray:
    """A gray frame (MONOCHROME1/2) to [0, 1]: Modality LUT, then the window (the argument, else the file's, else
    percentile scaling), then MONOCHROME1 inverted.

    Args:
        ds: the dataset.
        frame: rows x columns, as decoded.
        index: the frame's index in a multi-frame file (its functional groups), or None.
        window: (center, width) overriding the file's window, or None.

    Returns:
        float32 rows x columns in [0, 1].

    Raises:
        NotFinite: a rescale or window value of the file is NaN or infinite.
    """
    values = modality_values(ds, frame, index)
    if window is not None:
        unit = apply_window(values, float(window[0]), float(window[1]))
    else:
        own = file_window(ds, index)
        unit = apply_window(values, *own) if own else percentile_scale(values)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def palette_to_unit(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """A PALETTE COLOR frame to gray in [0, 1]: through its lookup table, luma, divided by the palette's largest entry.

    Args:
        ds: the dataset (its palette).
        frame: rows x columns palette indices, as decoded.

    Returns:
        float32 rows x columns in [0, 1].
    """
    return _luma(apply_color_lut(frame, ds)) / _palette_max(ds, frame)


def rgb_to_unit(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """An RGB frame (or YBR that pydicom converted to RGB) to gray in [0, 1]: luma divided by the largest value a
    sample can hold. No window: colour data is display-ready.

    Args:
        ds: the dataset (its BitsStored).
        frame: rows x columns x 3, as decoded.

    Returns:
        float32 rows x columns in [0, 1].
    """
    return _luma(frame) / _max_sample_value(ds, frame)


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


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantize an image in [0, 1] to uint8 (the training cache's storage; at most 1/510 from the float).

    Args:
        image: float array in [0, 1].

    Returns:
        uint8 array of the same shape, round(255 * image).
    """
    return np.rint(image * 255.0).astype(np.uint8)


def _finite(value: float, keyword: str) -> float:
    """A value from the file that the image is computed with: NaN or infinity would make every pixel NaN."""
    if not math.isfinite(value):
        raise NotFinite(keyword, value)
    return value


def modality_values(ds: Dataset, frame: np.ndarray, index: int | None) -> np.ndarray:
    """Apply the Modality LUT: rescale (per frame where the file says so) or the Modality LUT Sequence.

    Raises:
        NotFinite: a rescale value is NaN or infinite.
    """
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    values = frame.astype(np.float32)
    rescale = _frame_item(ds, index, "PixelValueTransformationSequence")
    slope = _finite(_number(rescale.get("RescaleSlope") if rescale is not None else None,
                            ds.get("RescaleSlope"), 1.0), "RescaleSlope")
    intercept = _finite(_number(rescale.get("RescaleIntercept") if rescale is not None else None,
                                ds.get("RescaleIntercept"), 0.0), "RescaleIntercept")
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def file_window(ds: Dataset, index: int | None) -> tuple[float, float, str] | None:
    """The file's first window (center, width, function), from the frame's functional groups or the top level; None
    when it has none (or a width <= 0).

    Raises:
        NotFinite: a window value is NaN or infinite.
    """
    voi = _frame_item(ds, index, "FrameVOILUTSequence")
    source = voi if voi is not None and "WindowCenter" in voi else ds
    center = _first(source.get("WindowCenter"))
    width = _first(source.get("WindowWidth"))
    if center is None or width is None:
        return None
    _finite(center, "WindowCenter")
    _finite(width, "WindowWidth")
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

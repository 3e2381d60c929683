"""Inference on series (issue 21 item 5): a 3-D bundle answers once per series, never per file.

A series is assembled from headers (training.dataset.series.assemble) and decoded by training.dataset.volume
read_volume, the one preprocessing training used (`LoadSeriesVolume`: its uint8 volume / 255, as the loader feeds the
network). An answer (`SeriesPrediction.answer`) names the series by position and location, its slice count, and its
SeriesInstanceUID: the UID is for the client, in the answer body only, never in a log line or an error message
(errors and bad entries name a series by position and location, with reasons that carry numbers only).

What a request may hold when the bundle is 3-D (`request_series`): one request is one series, either a zip of its
slices (any depth, any names) or a single multi-frame file as application/dicom. The request's limits of
training/serving/request.py apply first (members, bytes, ratios, each file's header); then, from the assembled headers
and before any pixel is decoded, one series exactly, at most MAX_SERIES_SLICES slices and MAX_REQUEST_PIXELS voxels.

What fits a real-time endpoint's payload (6 MB), measured here with zipfile's deflate (level 6) on uncompressed 16-bit
512 x 512 slices: `python -m training.synthetic OUT --volumes --size 512` writes 526 KB a slice that deflate to about
273 KB (the synthetic CT carries noise), so about 22 slices a request; pydicom-data's eCT_Supplemental (a real CT,
much air) deflates to 68 KB a 512 x 512 frame, about 88. A diagnostic CT of 100 to 500 slices does not fit: send it
to batch transform (100 MB: about 380 such slices, launcher/inference.py), or run `python -m training.predict` on the
notebook. A request over a limit gets a 400 (413 over the body limit) naming the limit and that way out.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.dataset.series import Series, SeriesReport, assemble
from training.serving.request import MAX_REQUEST_PIXELS, MAX_ZIP_MEMBERS, DicomInput, InvalidInput, position, shown

if TYPE_CHECKING:  # torch at run time only where a volume is decoded: the launcher checks series without it
    import torch

MAX_SERIES_SLICES = MAX_ZIP_MEMBERS  # a slice is a zip member; a multi-frame file's frames are held to the same count
_WAY_OUT = ("send one series a request (its slices zipped, or one multi-frame file), or run `python -m "
            "training.predict MODEL DIR` on the notebook, which reads series of any size up to "
            "training.dataset.series' bounds")


class LoadSeriesVolume:
    """A series to the float32 tensor (1, D, H, W) in [0, 1] the network was trained on (read_volume, then / 255).

    Args:
        image_size: (D, H, W), the training grid of the model.
        window: (center, width) in modality units for every slice, as in training; None: each slice's own window.
    """

    def __init__(self, image_size: Sequence[int], window: Sequence[float] | None = None) -> None:
        if len(image_size) != 3:
            raise ValueError(f"image_size must be (D, H, W); got {tuple(image_size)}")
        self.image_size = tuple(int(v) for v in image_size)
        self.window = (float(window[0]), float(window[1])) if window is not None else None

    def __call__(self, series: Series) -> torch.Tensor:
        import torch

        from training.dataset.volume import read_volume  # MONAI (2.5 s): imported by the first series, not by clients

        volume = read_volume(series, size=self.image_size, window=self.window)
        return torch.from_numpy(volume.array).float().div_(255.0).unsqueeze(0)


@dataclass(frozen=True)
class SeriesPrediction:
    """One series' result.

    Attributes:
        series: its name by position ('series 2').
        location: the folder of its files (or the multi-frame file), as assemble names it.
        slices: how many slices it has.
        label: the predicted class name.
        probabilities: class name to softmax probability.
        series_instance_uid: for the answer body only (never logged).
    """

    series: str
    location: str
    slices: int
    label: str
    probabilities: dict[str, float]
    series_instance_uid: str = field(repr=False)

    def answer(self) -> dict[str, Any]:
        """The JSON answer: series, location, SeriesInstanceUID, slices, label, probabilities."""
        return {"series": self.series, "location": self.location, "SeriesInstanceUID": self.series_instance_uid,
                "slices": self.slices, "label": self.label, "probabilities": self.probabilities}


def request_series(data: Sequence[DicomInput], workdir: str | os.PathLike[str]) -> Series:
    """The one series a request holds, its files written under workdir by position (never by a client's name).

    Raises:
        InvalidInput: 400 when the files hold no series, several, a bad one (its reason: a slice of another size, a
            missing slice, ...), or one over MAX_SERIES_SLICES slices or MAX_REQUEST_PIXELS voxels.
    """
    files = []
    for number, item in enumerate(data):
        path = Path(workdir) / f"{number:05d}.dcm"
        path.write_bytes(item.data)  # one member inflated at a time
        files.append(path)
    report = assemble(files, root=workdir)
    _refuse_bad(report, data)
    if len(report.series) != 1:
        raise InvalidInput(f"the request holds {len(report.series)} series; a 3-D model answers one series a "
                           f"request: {_WAY_OUT}")
    series = report.series[0]
    problem = over_request_limits(series)
    if problem:
        raise InvalidInput(f"{problem}: {_WAY_OUT}")
    return series


def over_request_limits(series: Series) -> str:
    """What makes a series too large for one request ('' when nothing): the server's refusal, and the launcher's
    before it uploads (launcher/inference.py upload_series)."""
    voxels = series.slice_count * series.rows * series.columns
    if series.slice_count <= MAX_SERIES_SLICES and voxels <= MAX_REQUEST_PIXELS:
        return ""
    return (f"the series has {series.slice_count} slices of {series.rows} x {series.columns} ({voxels} voxels); at "
            f"most {MAX_SERIES_SLICES} slices (inference.MAX_SERIES_SLICES) and {MAX_REQUEST_PIXELS} voxels "
            "(inference.MAX_REQUEST_PIXELS) a request")


def _refuse_bad(report: SeriesReport, data: Sequence[DicomInput]) -> None:
    """A request's series must be whole: any bad entry refuses it. A series is named by its position ('series 1
    part 2'), a file by its place in the request (and to the client by its own name)."""
    if not report.bad:
        return
    entry, count = report.bad[0], f"({len(report.bad)} problem(s) in all)"
    if entry["series"]:
        reason = f"{entry['series']}: {entry['reason']} {count}: the request must hold one whole series"
        raise InvalidInput(reason)
    number = int(Path(entry["file"]).stem)  # the file's place: request_series names files by it
    raise InvalidInput(f"{shown(data[number].name)}: {entry['reason']} {count}",
                       logged=f"{position(number, len(data))}: {entry['reason']} {count}")


def predict_request(data: Sequence[DicomInput], model: Any) -> list[dict[str, Any]]:
    """predict_fn of a 3-D bundle: the request's one series, one answer (training.inference.Predictor.predict_series).

    Raises:
        InvalidInput: the request is not one whole series within the limits, or the series cannot be decoded.
    """
    from training.dataset.volume import VolumeError

    with tempfile.TemporaryDirectory(prefix="series-") as workdir:
        series = request_series(data, workdir)
        try:
            return [model.predict_series(series).answer()]
        except VolumeError as exc:  # names the series by position and slice, never a UID or path
            raise InvalidInput(str(exc)) from None

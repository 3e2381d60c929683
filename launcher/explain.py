"""The notebook's heat-map figure: predictions with their overlays, from predict's JSON or the endpoint's answer.

    answers = json.loads(subprocess.check_output([..., "-m", "training.predict", MODEL, DIR, "--explain", OUT]))
    show_overlays(answers)                                   # predict's JSON: each prediction names its overlay PNG
    show_overlays(explain_files(MODEL, files, OUT))          # the same, in the notebook's kernel
    show_overlays(json.loads(endpoint_answer))               # the endpoint's answer with explain=true: base64 PNGs

The overlays are what training/serving/explain.py drew: the image as the network saw it with the heat map of the
predicted class over it, pixels alone. Titles carry the prediction's position, label and probability, never a file
name (names can hold identifiers). Only the standard library is imported with this module; matplotlib by the function.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_OVERLAYS = 64  # panels in one figure: more is unreadable and slow to draw


def overlay_bytes(prediction: Mapping[str, Any]) -> bytes:
    """A prediction's overlay PNG: "overlay_png" (base64, the endpoint) or the file "overlay" names (predict).

    Raises:
        ValueError: the prediction carries neither (it was made without --explain or explain=true).
    """
    if "overlay_png" in prediction:
        return base64.b64decode(prediction["overlay_png"], validate=True)
    if "overlay" in prediction:
        return Path(prediction["overlay"]).read_bytes()
    raise ValueError("this prediction has no overlay: run predict with --explain OUTDIR, or send the endpoint "
                     "X-Amzn-SageMaker-Custom-Attributes: explain=true")


def explain_files(model_dir: str | os.PathLike[str], files: Sequence[str | os.PathLike[str]],
                  out_dir: str | os.PathLike[str], *, method: str = "smoothgrad") -> dict[str, Any]:
    """Predict files with the bundle and write each one's heat map and overlay into out_dir (`python -m
    training.predict MODEL FILES --explain OUT`, in this kernel): predict's JSON, each prediction with its "heatmap"
    (.npy) and "overlay" (.png) paths, named by position.

    Raises:
        training.inference.InvalidInput: a 3-D bundle (heat maps are 2-D only for now) or a file that cannot be read.
    """
    from training.predict import predict_json  # the training package: MONAI and torch, imported when used

    answers: dict[str, Any] = json.loads(predict_json(os.fspath(model_dir), [os.fspath(f) for f in files],
                                                      explain=os.fspath(out_dir), method=method))
    return answers


def show_overlays(answers: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, columns: int = 4) -> Figure:
    """One panel per prediction: its overlay, titled with its position, label and probability.

    Args:
        answers: predict's JSON or the endpoint's answer ({"predictions": [...]}), or the list of predictions.
        columns: panels per row.

    Raises:
        ValueError: more than MAX_OVERLAYS predictions, none, or one without an overlay.
    """
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    predictions = list(answers["predictions"] if isinstance(answers, Mapping) else answers)
    if not 1 <= len(predictions) <= MAX_OVERLAYS:
        raise ValueError(f"{len(predictions)} predictions: show between 1 and {MAX_OVERLAYS} at once")
    rows = max(1, math.ceil(len(predictions) / columns))
    figure = Figure(figsize=(3 * columns, 3.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for number, (axis, prediction) in enumerate(zip(axes.flat, predictions, strict=False), start=1):
        axis.imshow(imread(io.BytesIO(overlay_bytes(prediction)), format="png"))
        label = prediction["label"]
        axis.set_title(f"#{number}: {label} (p={prediction['probabilities'][label]:.2f})", fontsize=9)
    return figure

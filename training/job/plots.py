"""The job's two figures: the learning curve and the confusion matrix (PNG, matplotlib's Agg renderer).

Figures are built with matplotlib's object API (`Figure`, not pyplot), which needs no display and keeps no global
state between figures: the job runs headless under SageMaker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def learning_curve(history: Sequence[Mapping[str, float]], path: Path, *, best_epoch: int | None = None) -> Path:
    """Plot losses (left) and validation accuracy and AUC (right) per epoch.

    Args:
        history: one dict per epoch with epoch, train_loss, val_loss, val_accuracy, val_auc.
        path: the PNG to write.
        best_epoch: marked with a vertical line (the epoch the bundle holds).

    Returns:
        The path written.
    """
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    losses, scores = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for axis, keys, title in (
        (losses, ("train_loss", "val_loss"), "loss"),
        (scores, ("val_accuracy", "val_auc"), "validation"),
    ):
        for key in keys:
            values = [_finite(row.get(key)) for row in history]
            axis.plot(epochs, values, marker="o", label=key)
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle="--", label=f"best (epoch {best_epoch})")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    scores.set_ylim(0.0, 1.02)
    figure.savefig(path, dpi=100)
    return path


def confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, *, title: str) -> Path:
    """Plot a confusion matrix, true classes in rows, predicted in columns, with counts in the cells.

    Args:
        matrix: (C, C) counts.
        classes: class names by index.
        path: the PNG to write.
        title: e.g. "test (n=80)".

    Returns:
        The path written.
    """
    counts = np.asarray(matrix)
    size = 2.0 + 0.6 * len(classes)
    figure = Figure(figsize=(size + 1.0, size), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis)
    ticks = range(len(classes))
    axis.set_xticks(ticks, labels=list(classes), rotation=45, ha="right")
    axis.set_yticks(ticks, labels=list(classes))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    threshold = counts.max() / 2.0 if counts.size else 0.0
    for row in ticks:
        for column in ticks:
            color = "white" if counts[row, column] > threshold else "black"
            axis.text(column, row, str(counts[row, column]), ha="center", va="center", color=color)
    figure.savefig(path, dpi=100)
    return path


def _finite(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")

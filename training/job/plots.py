"""The job's figures (PNG, matplotlib's Agg renderer): the learning curve, the confusion matrix, the reliability
diagram (calibration before and after temperature scaling) and the ROC and precision-recall curves with the
operating point marked.

Figures are built with matplotlib's object API (`Figure`, not pyplot), which needs no display and keeps no global
state between figures: the job runs headless under SageMaker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.job.operating_point import OperatingPoint, precision_recall_curve, rates, roc_curve


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


def reliability(record: Mapping[str, Any], path: Path) -> Path:
    """The reliability diagram: per confidence bin, accuracy against mean confidence, before and after scaling.

    Args:
        record: training/job/assessment.py's calibration record (with "before" and "after").
        path: the PNG to write.
    """
    figure = Figure(figsize=(5, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for key, style in (("before", "s-"), ("after", "o-")):
        bins = record[key]["reliability"]
        label = f"{key} (ECE {record[key]['ece']:.3f}, Brier {record[key]['brier']:.3f})"
        axis.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=label)
    axis.set_xlabel("confidence (top class)")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title(f"{record['measured_on']}: temperature {record['temperature']:.3g}")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    figure.savefig(path, dpi=100)
    return path


def roc_pr(scores: np.ndarray, is_positive: np.ndarray, point: OperatingPoint, path: Path, *, split: str) -> Path:
    """ROC (left) and precision-recall (right) curves of P(positive), the operating point marked on both.

    Args:
        scores: P(positive) per case (calibrated).
        is_positive: whether each case is positive.
        point: the threshold and how it was chosen.
        path: the PNG to write.
        split: the set's name, for the titles.
    """
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    roc, pr = figure.subplots(1, 2)
    fpr, tpr = roc_curve(scores, is_positive)
    recall, precision = precision_recall_curve(scores, is_positive)
    sensitivity, specificity = rates(scores, is_positive, point.threshold)
    called = scores >= point.threshold
    at_precision = float((called & is_positive).sum() / max(int(called.sum()), 1))
    mark = f"threshold {point.threshold:.3f} ({point.method.replace('_', ' ')})"
    roc.plot(fpr, tpr, label="ROC")
    roc.plot([0, 1], [0, 1], color="grey", linestyle="--")
    roc.plot([1 - specificity], [sensitivity], "o", color="red", label=mark)
    roc.set_xlabel("1 - specificity")
    roc.set_ylabel("sensitivity")
    pr.plot(recall, precision, label="precision-recall")
    pr.plot([sensitivity], [at_precision], "o", color="red", label=mark)
    pr.set_xlabel("recall (sensitivity)")
    pr.set_ylabel("precision")
    for axis, title in ((roc, "ROC"), (pr, "precision-recall")):
        axis.set_title(f"{title}, {split} (n={len(scores)})")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right" if axis is roc else "lower left")
    figure.savefig(path, dpi=100)
    return path


def _finite(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")

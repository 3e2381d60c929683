"""Evaluation of a classifier's outputs: which class is the positive one, predictions at the threshold, accuracy,
AUC, sensitivity, specificity, the confusion matrix, and percentile-bootstrap 95% confidence intervals for the test
report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc

# Two-class names that mean "no finding": the other class is then the positive one (positive_class="").
NEGATIVE_NAMES = ("normal", "negative", "healthy", "benign", "no_finding", "no-finding", "nofinding", "control", "0")


def positive_index(classes: Sequence[str], positive_class: str) -> int:
    """The positive class of a two-class problem: the named one; else the class that is not a "normal"-like name;
    else the second one. (Multi-class problems have none; 1 is returned and unused.)

    Raises:
        ValueError: a positive_class that is not a class.
    """
    if positive_class:
        if positive_class not in classes:
            raise ValueError(f"positive_class {positive_class!r} is not a class; the classes are {', '.join(classes)}")
        return list(classes).index(positive_class)
    negatives = [i for i, name in enumerate(classes) if name.strip().lower() in NEGATIVE_NAMES]
    if len(classes) == 2 and len(negatives) == 1:
        return 1 - negatives[0]
    return 1


def predict(probabilities: np.ndarray, *, threshold: float, positive: int) -> np.ndarray:
    """Class predictions: for two classes, positive when P(positive) >= threshold; otherwise the argmax.

    Args:
        probabilities: (N, C) softmax outputs.
        threshold: decision threshold on the positive class (two classes only).
        positive: index of the positive class (two classes only).

    Returns:
        (N,) int64 class indices.
    """
    if probabilities.shape[1] == 2:
        return np.where(probabilities[:, positive] >= threshold, positive, 1 - positive).astype(np.int64)
    return probabilities.argmax(axis=1).astype(np.int64)


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by MONAI: for two classes that of class 1, else the macro average of one-vs-rest AUCs.

    An absent class makes the AUC undefined: checked here, before MONAI (which would warn and give nan).

    Args:
        probabilities: (N, C) softmax outputs.
        labels: (N,) class indices.

    Returns:
        The AUC; nan when a class is absent from `labels` (undefined).
    """
    num_classes = probabilities.shape[1]
    present = np.bincount(labels, minlength=num_classes) > 0
    if not present.all():
        return float("nan")
    if num_classes == 2:  # both one-vs-rest AUCs are equal: compute one
        return _scalar(compute_roc_auc(torch.from_numpy(probabilities[:, 1]), torch.from_numpy(labels == 1)))
    onehot = np.eye(num_classes, dtype=np.int64)[labels]
    return _scalar(compute_roc_auc(torch.from_numpy(probabilities), torch.from_numpy(onehot), average="macro"))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes in rows and predicted classes in columns.

    Returns:
        (C, C) int64 array.
    """
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(
    probabilities: np.ndarray, labels: np.ndarray, *, threshold: float, positive: int
) -> dict[str, float]:
    """Accuracy and AUC; for two classes also sensitivity and specificity of the positive class at the threshold.

    Args:
        probabilities: (N, C) softmax outputs.
        labels: (N,) class indices.
        threshold: decision threshold (two classes).
        positive: index of the positive class (two classes).

    Returns:
        Metric name to value; nan where undefined (e.g. sensitivity without positive cases).
    """
    predictions = predict(probabilities, threshold=threshold, positive=positive)
    result = {"accuracy": float(np.mean(predictions == labels)) if len(labels) else float("nan")}
    result["auc"] = roc_auc(probabilities, labels)
    if probabilities.shape[1] == 2:
        is_positive, called_positive = labels == positive, predictions == positive
        result["sensitivity"] = _ratio(np.sum(is_positive & called_positive), np.sum(is_positive))
        result["specificity"] = _ratio(np.sum(~is_positive & ~called_positive), np.sum(~is_positive))
    return result


def bootstrap_intervals(
    probabilities: np.ndarray,
    labels: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    *,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals: resample cases with replacement, recompute, take quantiles.

    Resamples where a metric is undefined (e.g. no positive case drawn) are left out of that metric's interval.

    Args:
        probabilities: (N, C) softmax outputs.
        labels: (N,) class indices.
        metric: computes the metrics of one (resampled) set, e.g. `classification_metrics` with its options bound.
        samples: number of resamples; 0 gives nan intervals.
        seed: seeds the resampling, so a report repeats exactly.
        level: coverage of the interval.

    Returns:
        Metric name to (low, high); (nan, nan) when no resample defined it.
    """
    rng = np.random.default_rng(seed)
    names = list(metric(probabilities, labels))
    if len(labels) == 0:
        return {name: (float("nan"), float("nan")) for name in names}
    values = np.full((samples, len(names)), np.nan)
    for row in range(samples):
        index = rng.integers(0, len(labels), size=len(labels))
        drawn = metric(probabilities[index], labels[index])
        values[row] = [drawn[name] for name in names]
    tail = (1.0 - level) / 2.0 * 100.0
    intervals = {}
    for column, name in enumerate(names):
        finite = values[:, column][np.isfinite(values[:, column])]
        if finite.size == 0:
            intervals[name] = (float("nan"), float("nan"))
        else:
            low, high = np.percentile(finite, [tail, 100.0 - tail])
            intervals[name] = (float(low), float(high))
    return intervals


def two_class_intervals(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: float,
    positive: int,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 100,
) -> dict[str, tuple[float, float]]:
    """`bootstrap_intervals` of `classification_metrics` for two classes, computed for all resamples at once.

    The resamples are the same draws (one generator, `samples` rows of N indices) and each metric is the same
    number: a resample is a vector of case weights (how often each case was drawn); sensitivity, specificity and
    accuracy are weighted counts, and the AUC the weighted Mann-Whitney statistic (ties count one half), which is
    what MONAI's compute_roc_auc gives on the resampled cases. tests/training/test_metrics.py checks the equality.

    Args:
        chunk: resamples computed together (memory: chunk x N floats).
    """
    n = len(labels)
    names = ("accuracy", "auc", "sensitivity", "specificity")
    if n == 0 or samples == 0:
        return {name: (float("nan"), float("nan")) for name in names}
    rng = np.random.default_rng(seed)
    score = probabilities[:, 1].astype(np.float64)  # as roc_auc: the AUC of class 1 (equal to the positive's)
    order = np.argsort(score, kind="stable")
    starts = np.r_[0, np.nonzero(np.diff(score[order]))[0] + 1]  # first case of each distinct score, ascending
    one, is_positive = labels == 1, labels == positive
    called = probabilities[:, positive] >= threshold
    rows = []
    for first in range(0, samples, chunk):
        count = min(chunk, samples - first)
        drawn = rng.integers(0, n, size=(count, n))
        weights = np.bincount((drawn + n * np.arange(count)[:, None]).ravel(), minlength=count * n)
        weights = weights.reshape(count, n).astype(np.float64)
        rows.append(np.stack([*_weighted_rates(weights, is_positive, called, n),
                              _weighted_auc(weights[:, order], one[order], starts)], axis=1))
    values = np.concatenate(rows)[:, [0, 3, 1, 2]]  # accuracy, auc, sensitivity, specificity
    tail = (1.0 - level) / 2.0 * 100.0
    intervals = {}
    for column, name in enumerate(names):
        finite = values[:, column][np.isfinite(values[:, column])]
        low, high = np.percentile(finite, [tail, 100.0 - tail]) if finite.size else (float("nan"), float("nan"))
        intervals[name] = (float(low), float(high))
    return intervals


def _weighted_rates(
    weights: np.ndarray, is_positive: np.ndarray, called: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy, sensitivity and specificity of each resample (rows of case weights); nan where undefined."""
    positives, negatives = weights[:, is_positive].sum(axis=1), weights[:, ~is_positive].sum(axis=1)
    hits = weights[:, is_positive & called].sum(axis=1)
    rejections = weights[:, ~is_positive & ~called].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hits + rejections) / n, hits / positives, rejections / negatives


def _weighted_auc(weights: np.ndarray, one: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The AUC of class 1 for each resample: weights and labels in ascending score order, `starts` the first case
    of each distinct score; per positive, the weight of negatives scored lower plus half of those tied."""
    negative_at = np.add.reduceat(weights * ~one, starts, axis=1)  # negatives' weight at each distinct score
    positive_at = np.add.reduceat(weights * one, starts, axis=1)
    below = np.cumsum(negative_at, axis=1) - negative_at
    pairs = positive_at.sum(axis=1) * negative_at.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive_at * (below + 0.5 * negative_at)).sum(axis=1) / pairs


def evaluation_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    classes: Sequence[str],
    threshold: float,
    positive: int,
    samples: int,
    seed: int,
) -> dict[str, object]:
    """The report of one evaluation set: metrics with 95% intervals, the confusion matrix, and how they were made.

    Args:
        probabilities: (N, C) softmax outputs of the selected model.
        labels: (N,) class indices.
        classes: class names, by index.
        threshold: decision threshold (two classes).
        positive: index of the positive class (two classes).
        samples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        A JSON-ready dict: n, metrics {name: {value, ci95}}, confusion_matrix, and the options used.
    """

    def measure(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return classification_metrics(p, y, threshold=threshold, positive=positive)

    point = measure(probabilities, labels)
    if probabilities.shape[1] == 2:  # the same resamples and figures as bootstrap_intervals, 30x faster
        intervals = two_class_intervals(probabilities, labels, threshold=threshold, positive=positive,
                                        samples=samples, seed=seed)
    else:
        intervals = bootstrap_intervals(probabilities, labels, measure, samples=samples, seed=seed)
    predictions = predict(probabilities, threshold=threshold, positive=positive)
    return {
        "n": int(len(labels)),
        "classes": list(classes),
        "class_counts": np.bincount(labels, minlength=len(classes)).tolist(),
        "metrics": {
            name: {"value": _json_number(value), "ci95": [_json_number(v) for v in intervals[name]]}
            for name, value in point.items()
        },
        "confusion_matrix": confusion_matrix(labels, predictions, len(classes)).tolist(),
        "threshold": threshold if len(classes) == 2 else None,
        "positive_class": classes[positive] if len(classes) == 2 else None,
        "bootstrap": {"samples": samples, "seed": seed, "method": "percentile", "level": 0.95},
    }


def _scalar(value: object) -> float:
    return float(np.asarray(value))


def _ratio(numerator: np.integer | int, denominator: np.integer | int) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def _json_number(value: float) -> float | None:
    """JSON has no nan: undefined values become null."""
    return value if math.isfinite(value) else None

"""The operating point of a two-class model (issue 22 item 3): the decision threshold, chosen on the validation set
for a target sensitivity or specificity, and the ROC and precision-recall curves it sits on.

The rule (`choose_threshold`): the call is positive when P(positive) >= threshold.
- `target_sensitivity S`: the highest threshold whose validation sensitivity is at least S: of all thresholds that
  reach the target, the one with the best specificity.
- `target_specificity S`: the lowest threshold whose validation specificity is at least S: the best sensitivity.
- neither: the fixed `threshold` hyperparameter (0.5 equals the argmax).
Every threshold between two neighbouring validation scores gives the same validation counts; the one chosen lies
halfway between them, so that a score a hair away at inference (another runtime, another CPU) falls on the same
side as it did here. Scores are the calibrated probabilities (training/job/calibration.py), the ones inference
thresholds. The test set then reports sensitivity and specificity at this threshold with their intervals
(training/job/evaluation.py); the bundle records the threshold and how it was chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METHODS = ("fixed", "target_sensitivity", "target_specificity")


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and how it was chosen.

    Attributes:
        threshold: positive when P(positive) >= threshold.
        method: one of METHODS.
        target: the target sensitivity or specificity (None for "fixed").
        validation_sensitivity, validation_specificity: at the threshold, on the set it was chosen on (None: a
            class absent there, or "fixed" without validation outputs).
        chosen_on: "validation", or "hyperparameter" for "fixed".
    """

    threshold: float
    method: str
    target: float | None
    validation_sensitivity: float | None
    validation_specificity: float | None
    chosen_on: str

    def record(self) -> dict[str, Any]:
        """JSON-ready, for metrics.json and the bundle's metadata.json."""
        return asdict(self)


def choose_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    positive: int,
    threshold: float = 0.5,
    target_sensitivity: float = 0.0,
    target_specificity: float = 0.0,
) -> OperatingPoint:
    """The operating point by this module's rule.

    Args:
        probabilities: N x 2 validation probabilities (calibrated).
        labels: N class indices.
        positive: the positive class's index.
        threshold: the fixed threshold, used when no target is set.
        target_sensitivity, target_specificity: in (0, 1]; at most one of them set (0: unset).

    Raises:
        ValueError: both targets set, a target out of range, more than two classes, or a class absent from the
            validation set while a target is set.
    """
    if target_sensitivity and target_specificity:
        raise ValueError("set target_sensitivity or target_specificity, not both")
    scores, is_positive = _scores(probabilities, labels, positive)
    if not (target_sensitivity or target_specificity):
        sensitivity, specificity = rates(scores, is_positive, threshold)
        return OperatingPoint(threshold, "fixed", None, _or_none(sensitivity), _or_none(specificity), "hyperparameter")
    target = target_sensitivity or target_specificity
    if not 0.0 < target <= 1.0:
        raise ValueError(f"a target sensitivity or specificity must be in (0, 1]; got {target}")
    if is_positive.all() or not is_positive.any():
        raise ValueError("the validation set needs cases of both classes to choose a threshold for a target")
    if target_sensitivity:
        method, chosen = "target_sensitivity", _for_sensitivity(scores, is_positive, target)
    else:
        method, chosen = "target_specificity", _for_specificity(scores, is_positive, target)
    sensitivity, specificity = rates(scores, is_positive, chosen)
    return OperatingPoint(chosen, method, target, _or_none(sensitivity), _or_none(specificity), "validation")


def rates(scores: np.ndarray, is_positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the call `score >= threshold`; nan where a class is absent."""
    called = scores >= threshold
    positives, negatives = int(is_positive.sum()), int((~is_positive).sum())
    sensitivity = float((called & is_positive).sum()) / positives if positives else math.nan
    specificity = float((~called & ~is_positive).sum()) / negatives if negatives else math.nan
    return sensitivity, specificity


def roc_curve(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    hits, ordered = is_positive[order], scores[order]
    last = np.r_[np.nonzero(np.diff(ordered))[0], len(ordered) - 1]  # the last case of each distinct score
    tp, fp = np.cumsum(hits)[last], np.cumsum(~hits)[last]
    positives, negatives = max(int(is_positive.sum()), 1), max(int((~is_positive).sum()), 1)
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def precision_recall_curve(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, highest threshold first."""
    order = np.argsort(-scores, kind="stable")
    hits, ordered = is_positive[order], scores[order]
    last = np.r_[np.nonzero(np.diff(ordered))[0], len(ordered) - 1]
    tp, called = np.cumsum(hits)[last], last + 1
    positives = max(int(is_positive.sum()), 1)
    return tp / positives, tp / called


def positive_scores(probabilities: np.ndarray, labels: np.ndarray, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """(P(positive), is the case positive) of a two-class set, for the curves and `rates`."""
    return _scores(probabilities, labels, positive)


def _for_sensitivity(scores: np.ndarray, is_positive: np.ndarray, target: float) -> float:
    """Halfway below the k-th highest positive score (k = ceil(target * positives)), above the next lower score."""
    ranked = np.sort(scores[is_positive])[::-1]
    k = max(1, math.ceil(target * len(ranked) - 1e-9))
    at = float(ranked[k - 1])
    below = scores[scores < at]
    return (at + float(below.max())) / 2.0 if below.size else at / 2.0


def _for_specificity(scores: np.ndarray, is_positive: np.ndarray, target: float) -> float:
    """Halfway above the m-th lowest negative score (m = ceil(target * negatives)), below the next higher score."""
    ranked = np.sort(scores[~is_positive])
    m = max(1, math.ceil(target * len(ranked) - 1e-9))
    at = float(ranked[m - 1])
    above = scores[scores > at]
    return (at + float(above.min())) / 2.0 if above.size else (at + 1.0) / 2.0


def _scores(probabilities: np.ndarray, labels: np.ndarray, positive: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"an operating point needs two classes; got probabilities of shape {p.shape}")
    return p[:, positive], np.asarray(labels) == positive


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None

"""Calibration of a classifier's scores (issue 22 item 2): temperature scaling, and how calibrated scores are.

Temperature scaling (Guo et al., 2017) divides every logit by one number T > 0 fitted on the validation set by
minimizing the negative log-likelihood: it changes no ranking (AUC, the argmax) and only how sure the scores are. A
network that is over-confident gets T > 1. The measures are computed on held-out data:

- expected calibration error (ECE): the top-label confidence in `bins` equal-width bins, the weighted mean gap
  between each bin's mean confidence and its accuracy;
- the Brier score: the mean squared distance between the probability vector and the one-hot label;
- the reliability diagram's points: per bin, its mean confidence, its accuracy and its count.

This module holds the arithmetic only; nothing here is wired into the job, the bundle or inference yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

TEMPERATURE_RANGE = (0.05, 20.0)  # beyond these the fit says more about the data (separable, or noise) than the net
BINS = 15  # the usual number of ECE bins


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *,
                    max_iter: int = 100) -> float:
    """The temperature that minimizes the validation negative log-likelihood of softmax(logits / T).

    Args:
        logits: N x C raw outputs of the network (N >= 1, C >= 2).
        labels: N class indices in [0, C).
        max_iter: LBFGS iterations (the one-parameter problem converges in a few).

    Returns:
        T in TEMPERATURE_RANGE.

    Raises:
        ValueError: shapes that do not match, fewer than 2 classes, a label out of range, or a value not finite.
    """
    x, y = _checked(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    value = float(log_t.detach().exp())
    return min(max(value, low), high) if math.isfinite(value) else 1.0


def scaled_probabilities(logits: torch.Tensor | np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), float64, N x C."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature}")
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return torch.softmax(x / temperature, dim=1).numpy()


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability diagram: its confidence range, mean confidence, accuracy and count."""

    low: float
    high: float
    confidence: float
    accuracy: float
    count: int


def reliability(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = BINS) -> list[ReliabilityBin]:
    """The non-empty bins of the top-label confidence, in order (the reliability diagram's points)."""
    p, y = _probabilities(probabilities, labels)
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for k in range(bins):
        members = index == k
        if members.any():
            out.append(ReliabilityBin(float(edges[k]), float(edges[k + 1]), float(confidence[members].mean()),
                                      float((predicted[members] == y[members]).mean()), int(members.sum())))
    return out


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = BINS) -> float:
    """ECE: sum over bins of (count / N) * |mean confidence - accuracy|, in [0, 1]."""
    points = reliability(probabilities, labels, bins=bins)
    total = sum(point.count for point in points)
    return float(sum(point.count / total * abs(point.confidence - point.accuracy) for point in points))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean over samples of sum over classes of (p - one-hot)^2, in [0, 2]."""
    p, y = _probabilities(probabilities, labels)
    one_hot = np.eye(p.shape[1])[y]
    return float(((p - one_hot) ** 2).sum(axis=1).mean())


def _checked(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if x.dim() != 2 or x.shape[1] < 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"logits must be N x C (N >= 1, C >= 2) with N labels; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("logits must be finite")
    if int(y.min()) < 0 or int(y.max()) >= x.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {x.shape[1]}); got {int(y.min())} to {int(y.max())}")
    return x, y


def _probabilities(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or p.shape[1] < 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(f"probabilities must be N x C (N >= 1, C >= 2) with N labels; got {p.shape} and {y.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probabilities must be finite, non-negative and sum to 1 in each row")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {p.shape[1]})")
    return p, y

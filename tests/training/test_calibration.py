"""training/job/calibration.py: temperature scaling fitted on one half of a set whose true probabilities the test
knows, judged on the other half; the measures on cases worked by hand; bad inputs refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.job import calibration


def _sample(classes: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model (labels drawn from softmax(logits)): the test knows the true probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (count, classes))
    truth = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return logits, labels


@pytest.mark.parametrize("classes", [2, 3])
def test_an_over_confident_model_is_scaled_back_and_its_test_ece_and_brier_drop(classes: int) -> None:
    logits, labels = _sample(classes, 6000, seed=classes)
    over = 3.0 * logits  # the same ranking, three times too sure
    validation, test = slice(0, 3000), slice(3000, None)
    temperature = calibration.fit_temperature(over[validation], labels[validation])
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = torch.softmax(torch.as_tensor(over[test]), dim=1).numpy()
    after = calibration.scaled_probabilities(over[test], temperature)
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()  # no decision of the argmax changes
    ece_before = calibration.expected_calibration_error(before, labels[test])
    ece_after = calibration.expected_calibration_error(after, labels[test])
    assert ece_after < ece_before and ece_after < 0.04 < ece_before
    assert calibration.brier_score(after, labels[test]) < calibration.brier_score(before, labels[test])


def test_a_calibrated_model_keeps_a_temperature_near_1() -> None:
    logits, labels = _sample(2, 4000, seed=7)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.12)


def test_the_measures_on_a_case_worked_by_hand() -> None:
    probabilities = np.array([[0.8, 0.2]] * 10)
    labels = np.array([0] * 8 + [1] * 2)  # 80% right at a confidence of 0.8: calibrated
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.0)
    assert calibration.brier_score(probabilities, labels) == pytest.approx((8 * 0.08 + 2 * 1.28) / 10)
    (point,) = calibration.reliability(probabilities, labels)
    assert (point.confidence, point.accuracy, point.count) == (pytest.approx(0.8), pytest.approx(0.8), 10)
    assert point.low <= 0.8 <= point.high
    sure = np.array([[1.0, 0.0]] * 4)
    assert calibration.expected_calibration_error(sure, np.array([0, 0, 1, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.array([[0.0, float("nan")]]), np.array([0]), "logits must be finite"),
        (np.zeros((2, 2)), np.array([0, 2]), r"labels must be class indices in \[0, 2\)"),
        (np.zeros((2, 1)), np.array([0, 0]), "logits must be N x C"),
        (np.zeros((2, 2)), np.array([0]), "logits must be N x C"),
    ],
)
def test_bad_logits_or_labels_are_refused(logits: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibration.fit_temperature(logits, labels)


def test_bad_probabilities_or_temperatures_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        calibration.expected_calibration_error(np.array([[0.7, 0.7]]), np.array([0]))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        calibration.scaled_probabilities(np.zeros((1, 2)), 0.0)

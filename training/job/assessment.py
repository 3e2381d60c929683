"""What the job says of its model after training (issue 22 items 2-4): calibrated scores, an operating point, the
reports of the validation and test sets at it, calibration before and after on held-out data, and the test metrics
per subgroup. training/job/train.py `run` calls `assess` on every rank with the best weights' gathered outputs (each
rank computes the same); rank 0 reports and writes.

The order is the one inference follows: the temperature is fitted on the validation logits (training/job/
calibration.py), every probability after that is calibrated, the threshold is chosen on the calibrated validation
probabilities (training/job/operating_point.py), and the test set, seen once, is reported at that threshold.
Calibration is measured on the test set (the validation set fitted the temperature: its figures flatter), or on the
validation set with a note when there is no test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.job import calibration, subgroups
from training.job.config import TrainConfig
from training.job.evaluation import evaluation_report, positive_index
from training.job.loop import Evaluation
from training.job.operating_point import OperatingPoint, choose_threshold


@dataclass
class Assessment:
    """The model's calibrated assessment.

    Attributes:
        temperature: divides the logits before the softmax (1.0: not calibrated).
        operating_point: the threshold and how it was chosen (two classes; "fixed" otherwise).
        validation, test: evaluation reports (training/job/evaluation.py) of calibrated probabilities at the
            threshold; test None without a test set.
        calibration: {"method", "temperature", "fitted_on", "measured_on", "before": {...}, "after": {...}}.
        subgroups: training/job/subgroups.py's report of the test set (else validation), with "split"; None without
            subgroup values.
        measured: (split, calibrated probabilities, labels) of the set measured ("test", else "validation"), for
            the figures.
    """

    temperature: float
    operating_point: OperatingPoint
    validation: dict[str, Any]
    test: dict[str, Any] | None
    calibration: dict[str, Any]
    subgroups: dict[str, Any] | None
    measured: tuple[str, np.ndarray, np.ndarray]

    def records(self) -> dict[str, Any]:
        """The metrics.json entries beyond the two reports."""
        return {"calibration": self.calibration, "operating_point": self.operating_point.record(),
                "subgroups": self.subgroups}


def assess(
    config: TrainConfig,
    classes: Sequence[str],
    validation: Evaluation,
    test: Evaluation | None,
    test_subgroups: Sequence[tuple[str, ...]] | None = None,
    validation_subgroups: Sequence[tuple[str, ...]] | None = None,
) -> Assessment:
    """Calibrate, choose the operating point, and report (the module docstring's order).

    Args:
        config: calibrate, threshold, target_sensitivity, target_specificity, positive_class, bootstrap settings.
        classes: class names by index.
        validation: the best weights' validation outputs (with logits).
        test: the test outputs, or None.
        test_subgroups, validation_subgroups: per sample SUBGROUP_ATTRIBUTES values (None: not known).

    Raises:
        ValueError: a target that cannot be met by the rule (training/job/operating_point.py).
    """
    positive = positive_index(classes, config.positive_class)
    temperature = _temperature(config, validation)
    valid_p = _calibrated(validation, temperature)
    if len(classes) == 2:
        point = choose_threshold(valid_p, validation.labels, positive=positive, threshold=config.threshold,
                                 target_sensitivity=config.target_sensitivity,
                                 target_specificity=config.target_specificity)
    else:
        point = OperatingPoint(config.threshold, "fixed", None, None, None, "hyperparameter")
    options: dict[str, Any] = {"classes": classes, "threshold": point.threshold, "positive": positive,
               "samples": config.bootstrap_samples, "seed": config.seed}
    test_report = None
    outputs, probabilities, split, groups = validation, valid_p, "validation", validation_subgroups
    if test is not None and len(test.labels):
        outputs, probabilities, split, groups = test, _calibrated(test, temperature), "test", test_subgroups
        test_report = evaluation_report(probabilities, test.labels, **options)
    return Assessment(
        temperature=temperature,
        operating_point=point,
        validation=evaluation_report(valid_p, validation.labels, **options),
        test=test_report,
        calibration=_calibration_record(config, temperature, outputs, probabilities, split),
        subgroups=_subgroups(probabilities, outputs.labels, groups, split, options),
        measured=(split, probabilities, outputs.labels),
    )


def _temperature(config: TrainConfig, validation: Evaluation) -> float:
    if not config.calibrate or validation.logits is None or len(validation.labels) == 0:
        return 1.0
    return calibration.fit_temperature(validation.logits, validation.labels)


def _calibrated(outputs: Evaluation, temperature: float) -> np.ndarray:
    if outputs.logits is None or len(outputs.labels) == 0:
        return outputs.probabilities
    return calibration.scaled_probabilities(outputs.logits, temperature)


def _measures(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {
        "ece": calibration.expected_calibration_error(probabilities, labels),
        "brier": calibration.brier_score(probabilities, labels),
        "reliability": [vars(point) for point in calibration.reliability(probabilities, labels)],
    }


def _calibration_record(
    config: TrainConfig, temperature: float, outputs: Evaluation, calibrated: np.ndarray, split: str
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "method": "temperature scaling" if config.calibrate else "none (calibrate=false)",
        "temperature": temperature,
        "fitted_on": "validation",
        "measured_on": split,
        "bins": calibration.BINS,
    }
    if len(outputs.labels) == 0:
        return record
    record["before"] = _measures(outputs.probabilities, outputs.labels)  # the network's own softmax
    record["after"] = _measures(calibrated, outputs.labels)
    if split == "validation":
        record["note"] = "no test set: measured on the validation set the temperature was fitted on (optimistic)"
    return record


def _subgroups(
    probabilities: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[tuple[str, ...]] | None,
    split: str,
    options: dict[str, Any],
) -> dict[str, Any] | None:
    if not groups or len(groups) != len(labels) or len(labels) == 0:
        return None
    report = subgroups.subgroup_report(probabilities, labels, groups, options)
    return {"split": split, **report}

"""What the job reports, and the one format it prints it in: the lines SageMaker's metric regexes read.

Each epoch prints one line of `key=value` pairs, for example

    epoch=3 train_loss=0.41562 val_loss=0.38107 val_accuracy=0.9125 val_auc=0.97031 images_per_second=81.4

and the test report one line `test_accuracy=... test_auc=...`. METRIC_DEFINITIONS holds the regexes for these lines;
the launcher passes them to the SageMaker SDK (`MetricDefinition(name=d["Name"], regex=d["Regex"])`) so that the
job's console and its CloudWatch metrics can never disagree. A value that is undefined (an AUC on a one-class set)
prints as `nan`, which the regexes do not match, so no metric point is recorded for it.

Only the standard library is imported here: the launcher imports this module where the job's packages may be absent.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

# Epoch line keys, in print order, and the SageMaker metric each one feeds.
EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_auc", "images_per_second")
TEST_KEYS = ("test_accuracy", "test_auc", "test_sensitivity", "test_specificity", "test_ece", "test_brier")
_METRIC_NAMES = {
    "epoch": "epoch",
    "train_loss": "train:loss",
    "val_loss": "validation:loss",
    "val_accuracy": "validation:accuracy",
    "val_auc": "validation:auc",
    "images_per_second": "train:images_per_second",
    "test_accuracy": "test:accuracy",
    "test_auc": "test:auc",
    "test_sensitivity": "test:sensitivity",
    "test_specificity": "test:specificity",
    "test_ece": "test:ece",  # expected calibration error of the calibrated probabilities (training/job/calibration.py)
    "test_brier": "test:brier",
}
# `\bkey=`: the key as a whole word (best_epoch= is not epoch=). Plain constructs only (no lookaround), which
# every regex engine accepts.
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": _METRIC_NAMES[key], "Regex": rf"\b{key}={_NUMBER}"} for key in EPOCH_KEYS + TEST_KEYS
]
_PATTERNS = tuple((d["Name"], re.compile(d["Regex"])) for d in METRIC_DEFINITIONS)


def format_line(values: Mapping[str, float | int]) -> str:
    """One `key=value` line in the stable format (integers as such, floats with 5 significant digits, nan as nan).

    Args:
        values: keys in the order to print.
    """
    parts = []
    for key, value in values.items():
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            text = str(int(value))
        elif value is None or not math.isfinite(float(value)):
            text = "nan"
        else:
            text = f"{float(value):.5g}"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse_line(line: str) -> dict[str, float]:
    """Read back the metrics of a printed line with METRIC_DEFINITIONS, as SageMaker does (the launcher follows a
    local job's lines with it: launcher/job_contract.py parse_metrics).

    Args:
        line: one line of the job's output.

    Returns:
        SageMaker metric name (e.g. "validation:auc") to value; empty for a line without metrics.
    """
    found = {}
    for name, pattern in _PATTERNS:
        match = pattern.search(line)
        if match:
            found[name] = float(match.group(1))
    return found

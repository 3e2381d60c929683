"""What the job leaves for people at its end: the test report on the console (one metric line for SageMaker's
regexes, then each metric with its 95% interval), and in the output directory metrics.json, confusion_matrix.csv and
the two figures (training/job/plots.py). training/job/train.py `run` calls these on rank 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.job import plots
from training.job.assessment import Assessment
from training.job.loop import TrainState
from training.job.metrics import format_line

log = logging.getLogger(__name__)


def print_test_report(report: Mapping[str, Any], judged: Assessment | None = None) -> None:
    """The test metrics: one line for SageMaker's regexes (with the calibrated ECE and Brier score), then each with
    its 95% interval for people, the operating point and calibration."""
    metrics = report["metrics"]
    values = {f"test_{name}": _nan(entry["value"]) for name, entry in metrics.items()}
    after = judged.calibration.get("after") if judged is not None else None
    if after:
        values |= {"test_ece": after["ece"], "test_brier": after["brier"]}
    print(format_line(values), flush=True)
    for name, entry in metrics.items():
        low, high = (_nan(v) for v in entry["ci95"])
        log.info("test %-11s %.4f  (95%% CI %.4f-%.4f, n=%d)", name, _nan(entry["value"]), low, high, report["n"])
    if judged is None:
        return
    point = judged.operating_point
    log.info("threshold %.4f (%s%s)", point.threshold, point.method.replace("_", " "),
             f" {point.target:g} on validation" if point.target is not None else "")
    if after:
        before = judged.calibration["before"]
        log.info("calibration: temperature %.3f; test ECE %.4f -> %.4f, Brier %.4f -> %.4f", judged.temperature,
                 before["ece"], after["ece"], before["brier"], after["brier"])


def write_outputs(
    output_dir: Path,
    *,
    state: TrainState,
    classes: Sequence[str],
    judged: Assessment,
    seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """metrics.json, confusion_matrix.csv and the figures in the output directory: learning_curve.png,
    confusion_matrix.png, reliability.png (calibration before and after) and, for two classes, roc_pr.png (ROC and
    precision-recall curves with the operating point marked).

    The confusion matrix and curves are the test set's when there is one, else the validation set's.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    validation, test = judged.validation, judged.test
    shown, split = (test, "test") if test is not None else (validation, "validation")
    metrics_file = output_dir / "metrics.json"
    document = {
        "classes": list(classes),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "history": state.history,
        "validation": validation,
        "test": test,
        "confusion_matrix": {"split": split, "matrix": shown["confusion_matrix"]},
        **judged.records(),
        "seconds": round(seconds, 1),
        **(extra or {}),
    }
    metrics_file.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    rows = [",".join(["true\\predicted", *classes])]
    rows += [
        ",".join([name, *map(str, counts)]) for name, counts in zip(classes, shown["confusion_matrix"], strict=True)
    ]
    (output_dir / "confusion_matrix.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    plots.learning_curve(state.history, output_dir / "learning_curve.png", best_epoch=state.best_epoch)
    plots.confusion_matrix(
        shown["confusion_matrix"], classes, output_dir / "confusion_matrix.png", title=f"{split} (n={shown['n']})"
    )
    if "after" in judged.calibration:
        plots.reliability(judged.calibration, output_dir / "reliability.png")
    _, probabilities, labels = judged.measured
    if len(classes) == 2 and len(labels):
        positive = classes.index(shown["positive_class"])
        plots.roc_pr(probabilities[:, positive], labels == positive, judged.operating_point, output_dir / "roc_pr.png",
                     split=split)
    return metrics_file


def headline(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The metric values of a report, for the bundle's eval_metrics."""
    return {name: entry["value"] for name, entry in report["metrics"].items()}


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)

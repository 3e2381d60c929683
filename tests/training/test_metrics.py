"""training/job/metrics.py (the printed lines and SageMaker's regexes) and training/job/evaluation.py (the numbers)."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.dataset.subgroup_attributes import age_band
from training.job import metrics
from training.job.evaluation import (
    bootstrap_intervals,
    classification_metrics,
    confusion_matrix,
    evaluation_report,
    predict,
    roc_auc,
    two_class_intervals,
)
from training.job.metrics import EPOCH_KEYS, METRIC_DEFINITIONS, TEST_KEYS, format_line, parse_line
from training.job.operating_point import choose_threshold, rates
from training.job.subgroups import pooled


def test_definitions_are_what_the_sdk_takes() -> None:
    names = [d["Name"] for d in METRIC_DEFINITIONS]
    assert len(names) == len(set(names)) == len(EPOCH_KEYS) + len(TEST_KEYS)
    for definition in METRIC_DEFINITIONS:
        assert set(definition) == {"Name", "Regex"}
        assert 1 <= len(definition["Regex"]) <= 500  # the API's limit
        assert re.compile(definition["Regex"]).groups == 1
        assert "(?<" not in definition["Regex"] and "(?=" not in definition["Regex"]  # no lookaround


def test_epoch_line_round_trips_through_the_regexes() -> None:
    line = format_line(
        {
            "epoch": 3,
            "train_loss": 0.41562,
            "val_loss": 0.38107,
            "val_accuracy": 0.9125,
            "val_auc": 0.97031,
            "images_per_second": 81.44,
        }
    )
    assert line == (
        "epoch=3 train_loss=0.41562 val_loss=0.38107 val_accuracy=0.9125 val_auc=0.97031 images_per_second=81.44"
    )
    assert parse_line(line) == {
        "epoch": 3.0,
        "train:loss": 0.41562,
        "validation:loss": 0.38107,
        "validation:accuracy": 0.9125,
        "validation:auc": 0.97031,
        "train:images_per_second": 81.44,
    }


def test_keys_do_not_match_inside_other_keys() -> None:
    assert parse_line("best_epoch=4 train_loss=0.5") == {"train:loss": 0.5}
    assert parse_line("test_accuracy=0.95 test_auc=1e-05") == {"test:accuracy": 0.95, "test:auc": 1e-05}


def test_undefined_values_print_as_nan_and_record_nothing() -> None:
    line = format_line({"val_auc": float("nan"), "val_accuracy": None})  # type: ignore[dict-item]
    assert line == "val_auc=nan val_accuracy=nan"
    assert parse_line(line) == {}


def test_metrics_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(open(metrics.__file__, encoding="utf-8").read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "math", "numbers", "re", "collections.abc"}


def _binary(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * labels + 0.7 * rng.random(n), 0, 1)
    return np.stack([1 - p1, p1], axis=1), labels


def test_binary_auc_equals_sklearn() -> None:
    probabilities, labels = _binary()
    assert roc_auc(probabilities, labels) == pytest.approx(roc_auc_score(labels, probabilities[:, 1]))


def test_multiclass_auc_is_macro_one_vs_rest() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    probabilities = rng.dirichlet([1, 1, 1], 300)
    probabilities[np.arange(300), labels] += 0.5
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert roc_auc(probabilities, labels) == pytest.approx(expected)


def test_auc_is_nan_when_a_class_is_absent() -> None:
    probabilities, _ = _binary(10)
    assert np.isnan(roc_auc(probabilities, np.zeros(10, dtype=np.int64)))


def test_threshold_decides_two_classes() -> None:
    probabilities = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    assert predict(probabilities, threshold=0.5, positive=1).tolist() == [0, 1, 1]
    assert predict(probabilities, threshold=0.7, positive=1).tolist() == [0, 0, 1]
    assert predict(probabilities, threshold=0.5, positive=0).tolist() == [0, 1, 1]
    assert predict(probabilities, threshold=0.3, positive=0).tolist() == [0, 0, 1]
    assert predict(np.eye(3)[[2, 0, 1]], threshold=0.9, positive=1).tolist() == [2, 0, 1]  # argmax for 3 classes


def test_sensitivity_and_specificity_of_the_positive_class() -> None:
    probabilities = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([1, 1, 0, 0, 0])
    result = classification_metrics(probabilities, labels, threshold=0.5, positive=1)
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["sensitivity"] == pytest.approx(1 / 2)
    assert result["specificity"] == pytest.approx(1 / 3)
    flipped = classification_metrics(probabilities, labels, threshold=0.5, positive=0)
    assert flipped["sensitivity"] == pytest.approx(1 / 3)  # now class 0 is the one to find


def test_confusion_matrix_rows_are_true_classes() -> None:
    assert confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3).tolist() == [
        [1, 1, 0],
        [0, 1, 0],
        [1, 0, 0],
    ]


def test_bootstrap_is_repeatable_and_brackets_the_estimate() -> None:
    probabilities, labels = _binary(300)

    def measure(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return classification_metrics(p, y, threshold=0.5, positive=1)

    first = bootstrap_intervals(probabilities, labels, measure, samples=300, seed=7)
    assert first == bootstrap_intervals(probabilities, labels, measure, samples=300, seed=7)
    assert first != bootstrap_intervals(probabilities, labels, measure, samples=300, seed=8)
    point = measure(probabilities, labels)
    for name, (low, high) in first.items():
        assert low < point[name] < high, name
        assert high - low < 0.25


def test_bootstrap_of_an_empty_set_is_undefined() -> None:
    empty = np.zeros((0, 2))
    intervals = bootstrap_intervals(empty, np.zeros(0, dtype=np.int64), lambda p, y: {"accuracy": 0.0}, samples=5)
    assert np.isnan(intervals["accuracy"]).all()


def test_report_is_json_ready_with_nulls_for_undefined_values() -> None:
    probabilities, _ = _binary(20)
    report = evaluation_report(
        probabilities, np.ones(20, dtype=np.int64), classes=["a", "b"], threshold=0.5, positive=1, samples=50, seed=0
    )
    assert report["metrics"]["auc"] == {"value": None, "ci95": [None, None]}  # type: ignore[index]
    assert report["metrics"]["specificity"]["value"] is None  # type: ignore[index]
    assert report["positive_class"] == "b" and report["class_counts"] == [0, 20]
    assert report["bootstrap"] == {"samples": 50, "seed": 0, "method": "percentile", "level": 0.95}


@pytest.mark.parametrize(("seed", "n", "positive"), [(1, 120, 1), (2, 37, 0), (3, 400, 1), (4, 5, 1)])
def test_the_two_class_bootstrap_gives_the_same_intervals_as_the_generic_one(seed: int, n: int, positive: int) -> None:
    """The vectorized bootstrap (same draws, weighted counts, weighted Mann-Whitney AUC) equals resampling the cases
    and recomputing with MONAI's AUC, tied scores and resamples without a class included."""
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2).astype(np.float32)  # rounded: many tied scores
    labels = (rng.random(n) < p).astype(np.int64)
    probabilities = np.stack([1 - p, p], axis=1)

    def measure(q: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return classification_metrics(q, y, threshold=0.5, positive=positive)

    generic = bootstrap_intervals(probabilities, labels, measure, samples=300, seed=7)
    fast = two_class_intervals(probabilities, labels, threshold=0.5, positive=positive, samples=300, seed=7, chunk=64)
    assert list(fast) == list(generic)
    for name, interval in generic.items():
        assert np.allclose(fast[name], interval, atol=1e-12, equal_nan=True), name


def test_the_threshold_for_a_target_sensitivity_is_the_highest_that_reaches_it() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.4).astype(np.int64)
    score = np.clip(0.3 * labels + rng.normal(0.35, 0.2, 300), 0, 1)
    probabilities = np.stack([1 - score, score], axis=1)
    for target in (0.5, 0.8, 0.95, 1.0):
        point = choose_threshold(probabilities, labels, positive=1, target_sensitivity=target)
        sensitivity, _ = rates(score, labels == 1, point.threshold)
        assert point.validation_sensitivity == sensitivity >= target
        lowest_called = score[score >= point.threshold].min()
        higher, _ = rates(score, labels == 1, np.nextafter(lowest_called, 2.0))
        assert higher < target  # one case fewer called misses it: no higher threshold reaches the target
    point = choose_threshold(probabilities, labels, positive=1, target_specificity=0.9)
    assert point.validation_specificity is not None and point.validation_specificity >= 0.9
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(probabilities[labels == 1], labels[labels == 1], positive=1, target_sensitivity=0.9)


def test_age_bands_and_rare_values_pooled() -> None:
    assert [age_band(t) for t in ("017Y", "018Y", "045Y", "079Y", "090Y", "006M", "003W", "", "45")] == [
        "<18", "18-39", "40-59", "60-79", "80+", "<18", "<18", "unknown", "unknown"]
    assert pooled(["A"] * 10 + ["B"] * 9 + ["C"], 10).tolist() == ["A"] * 10 + ["other"] * 10

"""Test metrics per subgroup (issue 22 item 4): for each non-identifying attribute (training/dataset/
subgroup_attributes.py: Manufacturer, ManufacturerModelName, Modality, BodyPartExamined, PatientSex, age band), the
metrics of each of its values, with 95% intervals, at the model's operating point.

Rules:
- a sample without the attribute counts as "unknown" (a value like any other);
- values with fewer than `min_size` samples are pooled as "other" (a rare value never stands alone: it would say
  little, and a rare scanner or age could point at a person); "other" is reported whatever its size, with its n;
- the intervals come from the same percentile bootstrap as the whole set's (training/job/evaluation.py), so a
  subgroup's interval and the whole set's can be compared;
- groups are listed largest first, "unknown" and "other" last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from training.dataset.subgroup_attributes import SUBGROUP_ATTRIBUTES, UNKNOWN, as_mapping
from training.job.evaluation import evaluation_report

MIN_SIZE = 10  # the fewest samples a value needs to be reported on its own
OTHER = "other"


def subgroup_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    subgroups: Sequence[tuple[str, ...]],
    options: Mapping[str, Any],
    min_size: int = MIN_SIZE,
) -> dict[str, Any]:
    """The metrics per value of each attribute.

    Args:
        probabilities: N x C (calibrated) probabilities of one evaluation set.
        labels: its N class indices.
        subgroups: per sample, its SUBGROUP_ATTRIBUTES values (an empty tuple: all unknown).
        options: training/job/evaluation.py evaluation_report's keyword arguments (classes, threshold, positive,
            samples, seed).
        min_size: values with fewer samples are pooled as "other".

    Returns:
        {"min_size", "attributes": {name: [{"value", "n", "class_counts", "metrics": {name: {value, ci95}}}, ...]}}.

    Raises:
        ValueError: subgroups and labels differ in length.
    """
    if len(subgroups) != len(labels):
        raise ValueError(f"one subgroup entry per sample: {len(subgroups)} entries for {len(labels)} samples")
    rows = [as_mapping(values) for values in subgroups]
    attributes: dict[str, list[dict[str, Any]]] = {}
    for name in SUBGROUP_ATTRIBUTES:
        values = pooled([row[name] for row in rows], min_size)
        attributes[name] = [_group(value, values == value, probabilities, labels, options)
                            for value in _ordered(values)]
    return {"min_size": min_size, "attributes": attributes}


def pooled(values: Sequence[str], min_size: int) -> np.ndarray:
    """The values with those rarer than min_size replaced by "other"."""
    counts = Counter(values)
    return np.array([value if counts[value] >= min_size else OTHER for value in values], dtype=object)


def weakest(report: dict[str, Any], attribute: str, metric: str = "accuracy") -> str | None:
    """The value of an attribute whose group scores lowest on a metric (None: no group defines it)."""
    scored = [(g["metrics"][metric]["value"], g["value"]) for g in report["attributes"][attribute]
              if g["metrics"].get(metric, {}).get("value") is not None]
    return min(scored)[1] if scored else None


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per attribute and value (for the notebook's table and the model card)."""
    rows = []
    for attribute, groups in report["attributes"].items():
        if len(groups) == 1 and groups[0]["value"] == UNKNOWN:
            continue  # nothing known of this attribute: no row says so six times
        for group in groups:
            row: dict[str, Any] = {"attribute": attribute, "value": group["value"], "n": group["n"]}
            for metric, entry in group["metrics"].items():
                row[metric] = entry["value"]
                row[f"{metric}_ci95"] = entry["ci95"]
            rows.append(row)
    return rows


def _ordered(values: np.ndarray) -> list[str]:
    counts = Counter(values.tolist())
    last = {UNKNOWN: 1, OTHER: 2}
    return sorted(counts, key=lambda value: (last.get(value, 0), -counts[value], value))


def _group(
    value: str, members: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, options: Mapping[str, Any]
) -> dict[str, Any]:
    report = evaluation_report(probabilities[members], labels[members], **options)
    return {"value": value, "n": report["n"], "class_counts": report["class_counts"], "metrics": report["metrics"]}

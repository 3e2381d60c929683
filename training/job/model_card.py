"""The model card: the bundle's docs/README.md (the MONAI bundle convention), written by the job (issue 22 item 5).

It says what a reviewer asks before trusting the model, from the bundle's own metadata and the job's assessment
(training/job/assessment.py): the data (counts per class and split, patients per split, each channel's files by
checksum: no identifier), the metrics with 95% intervals, the calibration, the operating point, the subgroups,
the intended use and the limits, and how to run the model. Every figure is one the job measured; a section the job
could not fill (no test set, no subgroup values) says so rather than staying silent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.job.assessment import Assessment
from training.job.subgroups import table_rows

LIMITS = (
    "Research and demonstration only: not a medical device, not for diagnosis or treatment decisions.",
    "The figures hold for data like the test set (its scanners, sites, patients and label rules); a new site needs "
    "its own evaluation before any use, and the subgroup table shows where the model is weaker.",
    "Intervals are percentile-bootstrap 95% intervals over cases; several images of one patient are not independent, "
    "so they can be too narrow.",
    "Calibration (the temperature) was fitted on the validation set; a shift in the data changes it.",
)


def render(meta: Mapping[str, Any], judged: Assessment, usage: str) -> str:
    """docs/README.md from the metadata (configs/metadata.json's dict) and the assessment.

    Args:
        meta: the bundle's metadata (name, description, classes, lineage).
        judged: the calibration, operating point, reports and subgroups.
        usage: the text on how to run the bundle (its first heading and summary lines are replaced here).
    """
    report, split = (judged.test, "test") if judged.test is not None else (judged.validation, "validation")
    sections = [
        f"# {meta['name']}\n\n{meta['description']}\n",
        "## Intended use and limits\n\n" + "\n".join(f"- {line}" for line in LIMITS) + "\n",
        _data(meta.get("lineage", {}).get("data", {})),
        _metrics(report, split),
        _operating_point(judged),
        _calibration(judged.calibration),
        _subgroups(judged.subgroups),
        "## Use" + usage.split("## Use", 1)[1] if "## Use" in usage else usage,
    ]
    return "\n".join(sections)


def _data(data: Mapping[str, Any]) -> str:
    lines = ["## Data\n"]
    counts: Mapping[str, Mapping[str, int]] = data.get("class_counts", {})
    if counts:
        classes = list(next(iter(counts.values())))
        lines.append(_table(["split", *classes, "patients"],
                            [[side, *(by_class.get(c, 0) for c in classes), data.get("patients", {}).get(side, "")]
                             for side, by_class in counts.items()]))
    sources = data.get("sources") or []
    if sources:
        lines.append("\nSources by checksum (SHA-256 of the sorted `file<TAB>sha256` lines of each channel's files):\n")
        lines.append(_table(["channel", "files", "sha256"], [[s["channel"], s["files"], f"`{s['sha256']}`"]
                                                            for s in sources]))
    lines.append(f"\nPatients were grouped by {data.get('split_key', 'PatientID')} and named by keyed pseudonyms; "
                 "no identifier is in this bundle.")
    return "\n".join(lines) + "\n"


def _metrics(report: Mapping[str, Any], split: str) -> str:
    rows = [[name, _number(entry["value"]), _interval(entry["ci95"])] for name, entry in report["metrics"].items()]
    return (f"## Metrics ({split} set, n={report['n']}, calibrated probabilities at the operating point)\n\n"
            + _table(["metric", "value", "95% CI"], rows) + "\n")


def _operating_point(judged: Assessment) -> str:
    point = judged.operating_point
    if point.method == "fixed":
        how = f"the fixed threshold hyperparameter {point.threshold:g}"
    else:
        how = (f"the {point.method.replace('_', ' ')} {point.target:g} on the validation set (there: sensitivity "
               f"{_number(point.validation_sensitivity)}, specificity {_number(point.validation_specificity)})")
    return f"## Operating point\n\nThreshold {point.threshold:.4f} on the calibrated probability, chosen by {how}.\n"


def _calibration(record: Mapping[str, Any]) -> str:
    text = f"## Calibration\n\n{record['method'].capitalize()}: temperature {record['temperature']:.4f}"
    if "after" not in record:
        return text + " (no held-out set to measure it on).\n"
    before, after = record["before"], record["after"]
    text += (f", fitted on the {record['fitted_on']} set; on the {record['measured_on']} set the expected calibration "
             f"error went from {before['ece']:.4f} to {after['ece']:.4f} and the Brier score from "
             f"{before['brier']:.4f} to {after['brier']:.4f}.")
    return text + (f" {record['note']}." if "note" in record else "") + "\n"


def _subgroups(report: Mapping[str, Any] | None) -> str:
    if not report:
        return "## Subgroups\n\nThe data carried no subgroup attributes (e.g. Manufacturer, PatientSex).\n"
    rows = table_rows(dict(report))
    metrics = [m for m in ("accuracy", "auc", "sensitivity", "specificity") if rows and m in rows[0]]
    body = _table(["attribute", "value", "n", *metrics],
                  [[r["attribute"], r["value"], r["n"], *(f"{_number(r[m])} {_interval(r[m + '_ci95'])}"
                                                        for m in metrics)] for r in rows])
    return (f"## Subgroups ({report['split']} set)\n\nValues with fewer than {report['min_size']} cases are pooled "
            f"as \"other\"; an attribute no case carried is left out.\n\n{body}\n")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _interval(bounds: Sequence[float | None]) -> str:
    low, high = bounds
    return "(n/a)" if low is None or high is None else f"({low:.4f}-{high:.4f})"

"""The job under SageMaker's training contract, run by the SDK v3 driver on the synthetic demo set.

One run serves every test here and in test_bundle.py (conftest.py, `job_sagemaker_run`): the demo hyperparameters
(96x96, 5 epochs) sent as the SDK sends them, train and test channels, an S3 manifest channel, the image's identity
in the environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import JOB_HYPERPARAMETERS, JOB_IMAGE_VERSION
from tests.training.job_sagemaker import JOB_NAME, SageMakerRun
from training.job.metrics import EPOCH_KEYS, TEST_KEYS, parse_line
from training.local_demo import TEST_IMAGES, TRAIN_IMAGES

pytestmark = pytest.mark.slow


def _epoch_lines(run: SageMakerRun) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith("epoch=")]


def test_the_driver_runs_the_entry_script_and_it_writes_the_bundle(job_sagemaker_run: SageMakerRun) -> None:
    run = job_sagemaker_run
    assert run.returncode == 0, run.stdout[-5000:]
    assert "Running Basic Script driver" in run.stdout
    assert "train_entry.py --epochs 5 --batch_size 16 --learning_rate 0.0005" in run.stdout  # as CLI strings
    for relative in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts"):
        assert (run.model_dir / relative).is_file(), relative
    assert not (run.base / "output" / "failure").exists()
    print(f"\nSageMaker driver run (generation excluded): {run.seconds:.0f} s")


def test_hyperparameters_and_channels_reached_the_job(job_sagemaker_run: SageMakerRun, job_bundle: Path) -> None:
    meta = json.loads((job_bundle / "configs" / "metadata.json").read_text())
    recorded = meta["lineage"]["hyperparameters"]
    assert recorded["image_size"] == "96,96" and recorded["epochs"] == "5" and recorded["batch_size"] == "16"
    assert recorded["class_weighting"] == "true" and recorded["learning_rate"] == str(
        float(JOB_HYPERPARAMETERS["learning_rate"])  # type: ignore[arg-type]
    )
    channels = meta["lineage"]["data"]["channels"]
    assert set(channels) == {"train", "test"}


def test_every_epoch_line_feeds_every_metric_definition(job_sagemaker_run: SageMakerRun) -> None:
    lines = _epoch_lines(job_sagemaker_run)
    assert 1 <= len(lines) <= 5
    for line in lines:
        assert len(parse_line(line)) == len(EPOCH_KEYS), line
    test_lines = [line for line in job_sagemaker_run.stdout.splitlines() if line.startswith("test_accuracy=")]
    assert len(test_lines) == 1 and len(parse_line(test_lines[0])) == len(TEST_KEYS)


def test_no_progress_bars_under_sagemaker(job_sagemaker_run: SageMakerRun) -> None:
    assert "\r" not in job_sagemaker_run.stdout and "it/s]" not in job_sagemaker_run.stdout


def test_demo_set_reaches_95_percent_validation_accuracy_within_5_epochs(job_sagemaker_run: SageMakerRun) -> None:
    history = [parse_line(line) for line in _epoch_lines(job_sagemaker_run)]
    print("\n" + "\n".join(_epoch_lines(job_sagemaker_run)))
    assert max(row["validation:accuracy"] for row in history) >= 0.95


def test_test_report_has_bootstrap_intervals(job_metrics: dict[str, object]) -> None:
    report = job_metrics["test"]
    assert isinstance(report, dict)
    assert report["n"] == pytest.approx(TEST_IMAGES, abs=4)
    assert report["bootstrap"] == {"samples": 1000, "seed": 0, "method": "percentile", "level": 0.95}
    assert report["positive_class"] == "abnormal" and report["threshold"] == 0.5
    assert set(report["metrics"]) == {"accuracy", "auc", "sensitivity", "specificity"}
    for name, entry in report["metrics"].items():
        low, high = entry["ci95"]
        assert low <= entry["value"] <= high, name
    assert report["metrics"]["accuracy"]["value"] >= 0.85
    print("\ntest report: " + json.dumps(report["metrics"]))


def test_output_directory(job_sagemaker_run: SageMakerRun, job_metrics: dict[str, object]) -> None:
    output = job_sagemaker_run.output_data_dir
    for name in ("learning_curve.png", "confusion_matrix.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    csv_rows = (output / "confusion_matrix.csv").read_text().splitlines()
    assert csv_rows[0] == "true\\predicted,abnormal,normal"
    assert job_metrics["confusion_matrix"]["split"] == "test"  # type: ignore[index]
    counts = job_metrics["confusion_matrix"]["matrix"]  # type: ignore[index]
    assert sum(map(sum, counts)) == job_metrics["test"]["n"]  # type: ignore[index]
    assert 1 <= job_metrics["best_epoch"] <= job_metrics["epochs_run"] <= 5  # type: ignore[operator]


def test_lineage(job_bundle: Path) -> None:
    lineage = json.loads((job_bundle / "configs" / "metadata.json").read_text())["lineage"]
    files = lineage["data"]["files"]
    assert (
        len(files)
        == TRAIN_IMAGES
        + lineage["data"]["class_counts"]["test"]["abnormal"]
        + lineage["data"]["class_counts"]["test"]["normal"]
    )
    assert {f["split"] for f in files} == {"train", "validation", "test"}
    assert all(f["patient"].startswith("p-") for f in files)  # hashed patients, the split assignment
    by_patient: dict[str, set[str]] = {}
    for entry in files:
        by_patient.setdefault(entry["patient"], set()).add(entry["split"])
    assert all(len(splits) == 1 for splits in by_patient.values())  # no patient on two sides
    versioned = [f for f in files if "version_id" in f]
    assert [(f["file"], f["version_id"]) for f in versioned] == [("images/study-000/img-00000.dcm", "v-test-0001")]
    assert lineage["data"]["s3"]["files_matched"] == 1
    assert lineage["image"] == {"version": JOB_IMAGE_VERSION}
    assert lineage["job"]["name"] == JOB_NAME and lineage["job"]["on_sagemaker"] is True
    assert lineage["code"]["commit"] and lineage["code"]["source"] == "environment"
    assert "salt" not in lineage["hyperparameters"] and "pseudonym_key" not in lineage["hyperparameters"]


def test_no_patient_identifiers_in_logs_or_bundle(job_sagemaker_run: SageMakerRun, job_bundle: Path) -> None:
    texts = [job_sagemaker_run.stdout, (job_bundle / "configs" / "metadata.json").read_text()]
    texts.append((job_sagemaker_run.output_data_dir / "metrics.json").read_text())
    for text in texts:
        assert "SYN-0" not in text and "SYNTHETIC^PATIENT" not in text

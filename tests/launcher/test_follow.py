"""The job's metric lines read back with the job's own regexes, from its CloudWatch log streams; stopping a job."""

from __future__ import annotations

import math
import time
from pathlib import Path

import boto3
import pytest

from launcher import job_contract
from launcher.datasets.upload import upload_dataset
from launcher.jobs.follow import LOG_GROUP, follow, stop_training
from launcher.jobs.handle import TrainingJob
from launcher.jobs.launch import start_training
from tests.launcher.conftest import Recording, Stack

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sagemaker.*")

# Rows as training/job/train.py builds them for its epoch lines, and its test report.
EPOCHS = [
    {"epoch": 1, "train_loss": 0.693147, "val_loss": 0.650321, "val_accuracy": 0.8125, "val_auc": 0.901234,
     "images_per_second": 85.31},
    {"epoch": 2, "train_loss": 0.41562, "val_loss": 0.38107, "val_accuracy": 0.9125, "val_auc": 0.970312,
     "images_per_second": 81.4},
    {"epoch": 3, "train_loss": 3.2e-05, "val_loss": 1.5e-4, "val_accuracy": 1, "val_auc": float("nan"),
     "images_per_second": 1234.5},
]
TEST_REPORT = {"test_accuracy": 0.875, "test_auc": 0.93, "test_sensitivity": 0.8, "test_specificity": float("nan")}
NAMES = {"epoch": "epoch", "train_loss": "train:loss", "val_loss": "validation:loss",
         "val_accuracy": "validation:accuracy", "val_auc": "validation:auc",
         "images_per_second": "train:images_per_second", "test_accuracy": "test:accuracy", "test_auc": "test:auc",
         "test_sensitivity": "test:sensitivity", "test_specificity": "test:specificity"}


def job_lines() -> list[str]:
    """What the job prints, in its own format (training.job.metrics.format_line), between ordinary log lines."""
    from training.job.metrics import format_line

    return ["classes abnormal, normal (positive: abnormal); 6 training and 2 validation images; 1 steps an epoch",
            *(format_line(row) for row in EPOCHS), "best epoch 2: " + format_line(EPOCHS[1]),
            format_line(TEST_REPORT), "test accuracy    0.8750  (95% CI 0.5000-1.0000, n=8)"]


def expected(row: dict[str, float]) -> dict[str, float]:
    """The metrics SageMaker records for a row: printed with 5 significant digits; nan is not recorded."""
    return {NAMES[k]: float(f"{v:.5g}") for k, v in row.items() if not math.isnan(v)}


def test_the_regexes_read_every_metric_of_the_job_lines() -> None:
    from training.job.metrics import METRIC_DEFINITIONS, format_line

    assert job_contract.metric_definitions() == METRIC_DEFINITIONS
    for row in [*EPOCHS, TEST_REPORT]:
        assert job_contract.parse_metrics(format_line(row)) == expected(row)
    assert job_contract.parse_metrics("best_epoch=3 epochs_run=4") == {}


@pytest.fixture(scope="module")
def job(stack: Stack, dicom_folder: Path) -> TrainingJob:
    manifest = upload_dataset(stack.settings, dicom_folder, "follow", progress=False)
    return start_training(stack.settings, dataset=manifest)


def write_logs(job_name: str, host: str, lines: list[str]) -> None:
    """The job's output where SageMaker puts it: one stream per instance in /aws/sagemaker/TrainingJobs."""
    logs = boto3.Session().client("logs")
    try:
        logs.create_log_group(logGroupName=LOG_GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    stream = f"{job_name}/{host}-{int(time.time())}"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)])


def test_follow_reports_status_and_the_metrics_of_each_epoch(job: TrainingJob) -> None:
    write_logs(job.name, "algo-1", job_lines())
    write_logs(job.name, "algo-2", job_lines())  # a second instance printing the same epochs
    write_logs(f"{job.name}-other", "algo-1", ["epoch=99 train_loss=1"])  # another job sharing the prefix
    printed: list[str] = []

    progress = follow(job, poll_s=0, print_fn=printed.append)

    assert (progress.status, progress.following) == ("Completed", False)  # moto completes jobs at once
    assert progress.epochs == [expected(row) for row in EPOCHS]
    assert progress.metrics["test:auc"] == 0.93 and "test:specificity" not in progress.metrics
    assert printed[0] == f"{job.name}: Completed (Completed)"
    assert printed.count(job_lines()[1]) == 2 and not any("epoch=99" in line for line in printed)
    assert "classes abnormal, normal" not in "\n".join(printed)


def test_follow_prints_every_line_when_asked(job: TrainingJob) -> None:
    printed: list[str] = []
    follow(job, poll_s=0, all_lines=True, print_fn=printed.append)
    assert job_lines()[0] in printed


def test_stop_training_asks_sagemaker_to_stop_the_job(job: TrainingJob, recording: Recording,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # moto does not implement StopTrainingJob (HTTP 500) and says the job Completed: stop_training leaves it alone.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries of that 500
    stop_training(job)
    assert [call["TrainingJobName"] for call in recording.calls("StopTrainingJob")] == [job.name]

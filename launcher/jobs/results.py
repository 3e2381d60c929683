"""Collect what a finished job wrote, and list the stack's jobs with their final metrics.

    results = collect(job, "results")   # results/<job>/model/ (the MONAI bundle), results/<job>/output/ (figures)
    results.metadata["lineage"]         # the bundle's configs/metadata.json
    results.plots                       # learning_curve.png, confusion_matrix.png
    for summary in list_jobs(settings): print(summary.name, summary.status, summary.final_metrics)

SageMaker archives the job's model directory as `jobs/<job>/output/model.tar.gz` and its output-data directory as
`jobs/<job>/output/output.tar.gz` in the stack's bucket; both are unpacked here, refusing members that would land
outside the destination.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from launcher import job_contract
from launcher.jobs.follow import TERMINAL_STATUSES
from launcher.jobs.handle import DATASET_TAG, STACK_TAG, TrainingJob, job_name_prefix, job_tags
from launcher.settings import Settings

log = logging.getLogger(__name__)


class JobNotFinishedError(RuntimeError):
    """The job has not ended well: it is still running, or it failed; the message says which and why."""


@dataclass(frozen=True)
class JobResults:
    """What a finished job left, downloaded and unpacked.

    Attributes:
        job: the job.
        status: Completed or Stopped.
        directory: where everything was put (`<dest>/<job name>`).
        model_dir: the unpacked bundle.
        output_dir: the unpacked output data (None when the job wrote none).
        metadata: the bundle's configs/metadata.json ({} when absent).
        metrics: the output data's metrics.json ({} when absent).
        final_metrics: SageMaker's final value of each metric (DescribeTrainingJob FinalMetricDataList).
    """

    job: TrainingJob
    status: str
    directory: Path
    model_dir: Path
    output_dir: Path | None
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def plots(self) -> list[Path]:
        """The figures of the output data (PNG files), sorted."""
        return sorted(self.output_dir.rglob("*.png")) if self.output_dir else []


@dataclass(frozen=True)
class JobSummary:
    """One job of the stack, as list_jobs reports it.

    Attributes:
        name: the job.
        status: its TrainingJobStatus.
        created: when it was created.
        dataset: the dataset it trained on ("" when not tagged).
        instance_type, instance_count: its cluster.
        spot: whether it used managed spot training.
        final_metrics: SageMaker's final value of each metric.
        failure_reason: why it failed, when it did.
    """

    name: str
    status: str
    created: datetime | None
    dataset: str
    instance_type: str
    instance_count: int
    spot: bool
    final_metrics: dict[str, float]
    failure_reason: str | None = None


def collect(job: TrainingJob, dest: str | os.PathLike[str]) -> JobResults:
    """Download and unpack a finished job's bundle (model.tar.gz) and output data (output.tar.gz).

    Args:
        job: the job's handle.
        dest: the folder to put `<job name>/` in.

    Raises:
        JobNotFinishedError: the job is still running (follow(job) waits for it), or failed (with its reason).
        FileNotFoundError: the job ended without a model archive.
    """
    session = job.boto_session()
    described = session.client("sagemaker").describe_training_job(TrainingJobName=job.name)
    status = described["TrainingJobStatus"]
    if status == "Failed":
        raise JobNotFinishedError(f"training job {job.name} failed: {described.get('FailureReason', '(no reason)')}; "
                                  f"its logs are in CloudWatch, log group /aws/sagemaker/TrainingJobs")
    if status not in TERMINAL_STATUSES:  # Completed or Stopped: Failed is answered above
        raise JobNotFinishedError(f"training job {job.name} is {status}: follow(job) waits until it ends")
    s3 = session.client("s3")
    directory = Path(dest) / job.name
    directory.mkdir(parents=True, exist_ok=True)
    model_uri = (described.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or job.model_uri
    model_archive = _download(s3, model_uri, directory / job_contract.MODEL_ARCHIVE)
    if model_archive is None:
        raise FileNotFoundError(f"training job {job.name} ended ({status}) without a model archive at {model_uri}")
    model_dir = unpack(model_archive, directory / "model")
    output_uri = model_uri.rsplit("/", 1)[0] + "/" + job_contract.OUTPUT_ARCHIVE
    output_archive = _download(s3, output_uri, directory / job_contract.OUTPUT_ARCHIVE)
    output_dir = unpack(output_archive, directory / "output") if output_archive else None
    return JobResults(
        job=job, status=status, directory=directory, model_dir=model_dir, output_dir=output_dir,
        metadata=_read_json(model_dir / job_contract.BUNDLE_METADATA),
        metrics=_read_json(output_dir / job_contract.METRICS_FILE) if output_dir else {},
        final_metrics=_final_metrics(described),
    )


def list_jobs(settings: Settings, *, max_jobs: int = 50) -> list[JobSummary]:
    """The stack's training jobs, newest first, with their final metrics.

    Jobs are found by the stack's name prefix and confirmed by their stack tag (another stack's names may share the
    prefix).

    Args:
        settings: the stack's values.
        max_jobs: at most this many jobs.
    """
    sagemaker = settings.boto_session().client("sagemaker")
    summaries: list[JobSummary] = []
    paginator = sagemaker.get_paginator("list_training_jobs")
    pages = paginator.paginate(NameContains=f"{job_name_prefix(settings.stack_name)}-", SortBy="CreationTime",
                               SortOrder="Descending")
    for page in pages:
        for listed in page.get("TrainingJobSummaries", []):
            tags = job_tags(sagemaker, listed["TrainingJobArn"])
            if tags.get(STACK_TAG) != settings.stack_name:
                continue
            described = sagemaker.describe_training_job(TrainingJobName=listed["TrainingJobName"])
            resources = described.get("ResourceConfig", {})
            summaries.append(JobSummary(
                name=listed["TrainingJobName"], status=described["TrainingJobStatus"],
                created=described.get("CreationTime"), dataset=tags.get(DATASET_TAG, ""),
                instance_type=resources.get("InstanceType", ""), instance_count=int(resources.get("InstanceCount", 0)),
                spot=bool(described.get("EnableManagedSpotTraining")), final_metrics=_final_metrics(described),
                failure_reason=described.get("FailureReason"),
            ))
            if len(summaries) >= max_jobs:
                return summaries
    return summaries


def unpack(archive: Path, destination: Path) -> Path:
    """Unpack a .tar.gz into `destination`, refusing links and members that would land outside it.

    Args:
        archive: the archive.
        destination: the folder (created).

    Raises:
        ValueError: an unsafe member; the message names it.
    """
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
                raise ValueError(f"{archive} holds {member.name!r}, which is not a plain file inside the archive's "
                                 "folder: not unpacked")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, filter="data")
        else:  # Python before 3.11.4 (an older notebook kernel): the members were checked above
            tar.extractall(destination)
    return destination


def _download(s3: Any, uri: str, path: Path) -> Path | None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        s3.download_file(bucket, key, str(path))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return path


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    document = json.loads(path.read_text(encoding="utf-8"))
    return document if isinstance(document, dict) else {"value": document}


def _final_metrics(described: dict[str, Any]) -> dict[str, float]:
    return {m["MetricName"]: float(m["Value"]) for m in described.get("FinalMetricDataList", [])}

"""Follow a training job: its status and its metric lines as they arrive; stop it on request.

    progress = follow(job)            # prints status changes and epoch lines until the job ends
    progress.epochs                   # one row of metrics per epoch, e.g. {"epoch": 3, "validation:auc": 0.97, ...}
    stop_training(job)                # or follow(job, stop_on_interrupt=True) and interrupt the kernel

The lines come from the job's CloudWatch log streams (`/aws/sagemaker/TrainingJobs`, one stream per instance named
`<job>/algo-<n>-<time>`) and are read with the same regexes SageMaker is given (launcher/job_contract.py), so what
this prints and the job's CloudWatch metrics never disagree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from launcher import job_contract
from launcher.jobs.handle import TrainingJob

log = logging.getLogger(__name__)

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
DEFAULT_POLL_S = 15.0  # SageMaker updates a job's status about that often; CloudWatch delivers logs within seconds


@dataclass
class JobProgress:
    """What follow saw of a job.

    Attributes:
        name: the job.
        status: TrainingJobStatus (InProgress, Completed, Failed, Stopping, Stopped).
        secondary_status: SageMaker's finer status (Starting, Downloading, Training, Uploading, ...).
        failure_reason: why the job failed, when it did.
        epochs: one row per epoch: every metric of the job's epoch line, by SageMaker metric name.
        metrics: the last value seen of every metric (the test metrics too).
        following: False once the job ended and its logs were read to the end.
    """

    name: str
    status: str = ""
    secondary_status: str = ""
    failure_reason: str | None = None
    epochs: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    following: bool = True

    def add_line(self, line: str) -> dict[str, float]:
        """Record the metrics of one log line; returns them (empty for other lines).

        Args:
            line: a line of the job's output.
        """
        found = job_contract.parse_metrics(line)
        self.metrics.update(found)
        if "epoch" in found and all(row.get("epoch") != found["epoch"] for row in self.epochs):
            self.epochs.append(found)  # a distributed job may print the line on each instance: keep one
        return found


def follow(
    job: TrainingJob,
    *,
    poll_s: float = DEFAULT_POLL_S,
    timeout_s: float | None = None,
    echo: bool = True,
    all_lines: bool = False,
    stop_on_interrupt: bool = False,
    print_fn: Callable[[str], None] = print,
) -> JobProgress:
    """Print a job's status changes and metric lines until it ends (or the timeout, or an interrupt).

    Interrupting (Ctrl-C, the notebook's stop button) ends the following, not the job, unless stop_on_interrupt.

    Args:
        job: the job's handle.
        poll_s: seconds between two looks.
        timeout_s: stop following after this many seconds (the job keeps running); None: until it ends.
        echo: print status changes and metric lines.
        all_lines: print every log line, not only those with metrics.
        stop_on_interrupt: stop the job when following is interrupted.
        print_fn: where lines go.

    Returns:
        What was seen: status, per-epoch metrics, last metric values.
    """
    session = job.boto_session()
    sagemaker, reader = session.client("sagemaker"), LogReader(session.client("logs"), job.name)
    progress = JobProgress(name=job.name)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            described = sagemaker.describe_training_job(TrainingJobName=job.name)
            status, secondary = described["TrainingJobStatus"], described.get("SecondaryStatus", "")
            if echo and (status, secondary) != (progress.status, progress.secondary_status):
                print_fn(f"{job.name}: {status} ({secondary})" if secondary else f"{job.name}: {status}")
            progress.status, progress.secondary_status = status, secondary
            progress.failure_reason = described.get("FailureReason")
            for _, line in reader.read():
                found = progress.add_line(line)
                if echo and (found or all_lines):
                    print_fn(line)
            if status in TERMINAL_STATUSES:
                for _, line in reader.read():  # what CloudWatch delivered after the status changed
                    found = progress.add_line(line)
                    if echo and (found or all_lines):
                        print_fn(line)
                progress.following = False
                if echo and progress.failure_reason:
                    print_fn(f"{job.name} failed: {progress.failure_reason}")
                return progress
            if deadline is not None and time.monotonic() >= deadline:
                if echo:
                    print_fn(f"stopped following {job.name} after {timeout_s:.0f} s; the job keeps running")
                return progress
            time.sleep(poll_s)
    except KeyboardInterrupt:
        if stop_on_interrupt:
            stop_training(job)
            if echo:
                print_fn(f"stopping {job.name}")
        elif echo:
            print_fn(f"stopped following {job.name}; the job keeps running (stop_training(job) stops it)")
        return progress


def stop_training(job: TrainingJob) -> None:
    """Ask SageMaker to stop a job (it uploads what /opt/ml/model holds by then); a job that ended is left alone.

    Args:
        job: the job's handle.
    """
    sagemaker = job.boto_session().client("sagemaker")
    try:
        sagemaker.stop_training_job(TrainingJobName=job.name)
    except ClientError as exc:
        status = sagemaker.describe_training_job(TrainingJobName=job.name)["TrainingJobStatus"]
        if status in TERMINAL_STATUSES:
            log.info("%s has already ended (%s)", job.name, status)
            return
        raise exc
    log.info("stopping %s", job.name)


class LogReader:
    """Reads a job's log streams from where the last read ended."""

    def __init__(self, logs: Any, job_name: str) -> None:
        """Start at the beginning of every stream.

        Args:
            logs: a boto3 CloudWatch Logs client.
            job_name: the job whose streams (`<job>/...`) are read.
        """
        self._logs = logs
        self._prefix = f"{job_name}/"
        self._tokens: dict[str, str | None] = {}

    def read(self) -> list[tuple[str, str]]:
        """The lines that arrived since the last read, as (stream, line), stream by stream."""
        lines = []
        for stream in self._streams():
            token = self._tokens.get(stream)
            while True:
                kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
                if token:
                    kwargs["nextToken"] = token
                response = self._logs.get_log_events(**kwargs)
                lines += [(stream, e["message"].rstrip("\n")) for e in response.get("events", [])]
                next_token = response.get("nextForwardToken")
                if not next_token or next_token == token:  # the same token back: nothing newer yet
                    break
                token = next_token
            self._tokens[stream] = token
        return lines

    def _streams(self) -> list[str]:
        names: list[str] = []
        try:
            paginator = self._logs.get_paginator("describe_log_streams")
            for page in paginator.paginate(logGroupName=LOG_GROUP, logStreamNamePrefix=self._prefix):
                names += [s["logStreamName"] for s in page.get("logStreams", [])]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        return sorted(names)  # the group or the streams do not exist before the instances start

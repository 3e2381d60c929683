"""The local runner against the emulator: the job recorded as on AWS, then run here under the training contract.

One small real job (the synthetic set, 32x32, one epoch) serves most tests: its CreateTrainingJob request (from moto's
recorder), what follow() reads from its CloudWatch stream, and what collect() unpacks from its S3 archives.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from demo.emulator import Emulator
from launcher.datasets.manifest import DatasetManifest
from launcher.datasets.upload import upload_dataset
from launcher.jobs.follow import JobProgress, follow
from launcher.jobs.handle import RUNNER_TAG, TrainingJob, attach
from launcher.jobs.launch import start_training
from launcher.jobs.results import JobResults, collect
from launcher.local.runner import LocalJobError, LocalRunner, download_prefix, job_environment
from tests.launcher.conftest import BUCKET, Recording, Stack

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:sagemaker.*")]

# Small enough for a few seconds of training on a loaded 2-core machine; the real loop, bundle and figures all the same.
HYPERPARAMETERS = {"image_size": (32, 32), "epochs": 1, "batch_size": 8, "bootstrap_samples": 20,
                   "torchscript": False, "workers": 1}


@pytest.fixture(scope="module")
def dataset(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    """24 synthetic images (6 patients) with a test channel of 8 more."""
    from training.local_demo import make_demo_data

    root = tmp_path_factory.mktemp("local-data")
    make_demo_data(root, train_images=24, test_images=8)
    return upload_dataset(stack.settings, root, "local", progress=False)


@dataclass(frozen=True)
class Ran:
    job: TrainingJob
    request: dict[str, Any]  # CreateTrainingJob as sent
    printed: list[str]  # the runner's own lines
    progress: JobProgress
    results: JobResults
    tree: Path | None  # where the job ran


@pytest.fixture(scope="module")
def ran(stack: Stack, dataset: DatasetManifest, emulator: Emulator,
        tmp_path_factory: pytest.TempPathFactory) -> Ran:
    printed: list[str] = []
    runner = LocalRunner(print_fn=printed.append)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("recording"))  # moto writes its recording file in the working directory
        recording = Recording(emulator.endpoint)
        recording.start()
        try:
            job = start_training(stack.settings, dataset=dataset, hyperparameters=HYPERPARAMETERS,
                                 runner=runner)
            (request,) = recording.calls("CreateTrainingJob")
        finally:
            recording.stop()
    progress = follow(job, poll_s=0.1, echo=False)
    results = collect(job, tmp_path_factory.mktemp("collected"))
    return Ran(job, request, printed, progress, results, runner.last_tree)


def test_the_job_is_created_as_the_sagemaker_runner_creates_it(stack: Stack, dataset: DatasetManifest,
                                                              ran: Ran, recording: Recording) -> None:
    start_training(stack.settings, dataset=dataset, hyperparameters=HYPERPARAMETERS)  # the SageMaker runner
    (sagemaker,) = recording.calls("CreateTrainingJob")

    def normalized(request: dict[str, Any]) -> str:
        name = request["TrainingJobName"]
        tags = [t for t in request["Tags"] if t["Key"] != RUNNER_TAG]
        return json.dumps({**request, "Tags": tags}, sort_keys=True).replace(name, "JOB")

    assert normalized(ran.request) == normalized(sagemaker)
    assert {t["Key"]: t["Value"] for t in ran.request["Tags"]}[RUNNER_TAG] == "local"
    assert ran.job.runner == "local" and attach(stack.settings, ran.job.name).runner == "local"


def test_follow_reads_the_job_s_log_from_cloudwatch(ran: Ran) -> None:
    assert ran.progress.status == "Completed" and not ran.progress.following
    assert [row["epoch"] for row in ran.progress.epochs] == [1.0]
    assert {"train:loss", "validation:loss", "test:accuracy"} <= set(ran.progress.metrics)
    streams = boto3.client("logs").describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs",
                                                        logStreamNamePrefix=f"{ran.job.name}/")["logStreams"]
    assert [s["logStreamName"].rsplit("-", 1)[0] for s in streams] == [f"{ran.job.name}/algo-1"]


def test_the_job_ran_under_the_training_contract(ran: Ran) -> None:
    lineage = ran.results.metadata["lineage"]
    assert lineage["job"]["name"] == ran.job.name and lineage["job"]["on_sagemaker"] is True
    sent = ran.request["HyperParameters"]
    assert sent["image_size"] == "32,32" and sent["torchscript"] == "false"
    assert {k: lineage["hyperparameters"][k] for k in sent} == sent  # the strings the job was sent
    assert set(lineage["data"]["channels"]) == {"train", "test"}
    assert lineage["data"]["s3"]["files_matched"] > 0 and lineage["data"]["s3"]["files_unmatched"] == 0


def test_collect_finds_the_bundle_and_outputs_encrypted_where_sagemaker_puts_them(stack: Stack, ran: Ran) -> None:
    assert (ran.results.model_dir / "models" / "model.pt").is_file()
    assert {p.name for p in ran.results.plots} == {"learning_curve.png", "confusion_matrix.png", "reliability.png",
                                                   "roc_pr.png"}
    assert ran.results.metrics["epochs_run"] == 1 and ran.results.metrics["test"]["n"] >= 4
    s3 = boto3.client("s3")
    for uri in (ran.job.model_uri, ran.job.output_data_uri):
        head = s3.head_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", stack.settings.data_key_arn)
    assert ran.printed[0].startswith(f"{ran.job.name}: running on this machine")
    assert ran.job.model_uri in ran.printed[-1]


def test_the_job_gets_no_aws_credentials_and_leaves_no_tree(ran: Ran) -> None:
    events = boto3.client("logs").filter_log_events(logGroupName="/aws/sagemaker/TrainingJobs",
                                                    logStreamNamePrefix=f"{ran.job.name}/")["events"]
    log = "\n".join(e["message"] for e in events)
    assert "TRAINING_JOB_NAME" in log  # the SDK's environment.py lists the job's environment
    assert "AWS_" not in log
    assert ran.tree is not None and not ran.tree.exists()


def test_job_environment_keeps_only_the_basics() -> None:
    described = {"TrainingJobName": "j", "TrainingJobArn": "arn:j"}
    env = job_environment(described, {"TRAINING_CODE_COMMIT": "abc"},
                          inherit={"HOME": "/home/u", "PATH": "/usr/bin", "AWS_SECRET_ACCESS_KEY": "s", "X": "1",
                                   "OMP_NUM_THREADS": "1"})
    assert env["PATH"].endswith("/usr/bin") and env["PATH"] != "/usr/bin"  # this Python's folder first
    assert {k: v for k, v in env.items() if k != "PATH"} == {
        "HOME": "/home/u", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TRAINING_JOB_NAME": "j",
        "TRAINING_JOB_ARN": "arn:j", "TRAINING_CODE_COMMIT": "abc"}


def test_a_failing_job_raises_with_its_reason(stack: Stack, tmp_path: Path) -> None:
    from training.synthetic import generate

    generate(tmp_path / "one", count=8, size=64)
    labels = tmp_path / "one" / "labels.csv"
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join([rows[0], *(row.rsplit(",", 1)[0] + ",normal" for row in rows[1:])]) + "\n")
    manifest = upload_dataset(stack.settings, tmp_path / "one", "one-class", progress=False)
    runner = LocalRunner(print_fn=lambda _: None)
    with pytest.raises(LocalJobError, match=r"failed \(exit status 1\): channel .train. has 1 class"):
        start_training(stack.settings, dataset=manifest, hyperparameters=HYPERPARAMETERS, runner=runner)
    assert runner.last_tree is not None and not runner.last_tree.exists()


def _processes_in(tree: Path) -> list[str]:
    """Live processes whose working directory or command line is inside `tree` (a killed one may linger as a
    zombie until its new parent reaps it: dead, so not counted)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(tree) in command or cwd.startswith(str(tree)):
            found.append(command)
    return found


def test_a_job_past_its_maximum_runtime_is_stopped_with_all_its_processes(stack: Stack,
                                                                          dataset: DatasetManifest) -> None:
    runner = LocalRunner(print_fn=lambda _: None, keep=True)
    started = time.monotonic()
    with pytest.raises(LocalJobError, match="ran longer than its maximum runtime"):
        start_training(stack.settings, dataset=dataset, hyperparameters=HYPERPARAMETERS, max_runtime_s=5,
                       runner=runner)
    assert time.monotonic() - started < 60
    assert runner.last_tree is not None
    try:
        # bash, the SDK's driver, the job and its workers: all gone (one caught mid-exit has a few seconds to finish)
        deadline = time.monotonic() + 10
        while _processes_in(runner.last_tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_in(runner.last_tree) == []
    finally:
        shutil.rmtree(runner.last_tree)


def test_several_instances_are_refused_before_anything_starts(stack: Stack, dataset: DatasetManifest,
                                                             recording: Recording) -> None:
    with pytest.raises(ValueError, match="the local runner runs one instance"):
        LocalRunner().start(replace(_request(stack, dataset), instance_count=2))
    assert recording.calls("CreateTrainingJob") == []


@pytest.mark.parametrize(("uri", "expected"), [
    ("s3://{b}/ch/data/", {"a.dcm", "sub/b.dcm"}),
    ("s3://{b}/ch/data", {"a.dcm", "sub/b.dcm", "data2/c.dcm"}),  # S3Prefix: `data` also matches `data2/`
    ("s3://{b}/ch/data/a.dcm", {"a.dcm"}),  # a one-object channel keeps the object's name
])
def test_channels_download_as_sagemaker_lays_them_out(stack: Stack, tmp_path: Path, uri: str,
                                                      expected: set[str]) -> None:
    s3 = boto3.client("s3")
    for key in ("ch/data/a.dcm", "ch/data/sub/b.dcm", "ch/data2/c.dcm"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    written = download_prefix(s3, uri.format(b=BUCKET), tmp_path / "channel")
    assert {p.relative_to(tmp_path / "channel").as_posix() for p in written} == expected


def _request(stack: Stack, dataset: DatasetManifest) -> Any:
    from launcher.jobs.request import DEFAULT_MAX_RUNTIME_S, build_request

    return build_request(stack.settings, dataset=dataset, hyperparameters=HYPERPARAMETERS, instance_type=None,
                         instance_count=1, spot=False, max_runtime_s=DEFAULT_MAX_RUNTIME_S, max_wait_s=None,
                         input_mode=None, volume_size_gb=None, network_isolation=True)

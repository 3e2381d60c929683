"""The local runner: a training job recorded in the local AWS emulator as on AWS, then run on this machine.

    MONAI_DICOM_RUNNER=local        # what `make demo` sets; start_training(...) then uses this runner

It does what the SageMaker runner does, then what the SageMaker service does with the job:

1. Create the job: SageMakerRunner.start, unchanged (ModelTrainer stages training/ and the SDK's drivers under code/
   and sends CreateTrainingJob). The emulator (moto's server) records the job and reports it Completed at once.
2. Read the job back (DescribeTrainingJob) and run it under SageMaker's training contract in a temporary
   /opt/ml-like tree: input/config/hyperparameters.json (the job's strings), resourceconfig.json and
   inputdataconfig.json; every channel of the job downloaded from S3 into input/data/<channel>/, the code and the
   SDK's drivers (sm_drivers) included; model/ and output/data/. The container's entrypoint and arguments (the SDK's
   sm_train.sh) run with /opt/ml replaced by the tree, in the drivers too, as FACTS.md describes; the job's
   environment is its own (TRAINING_JOB_NAME, the request's Environment, PATH with this Python first) and holds no
   AWS credentials, as under network isolation.
3. Send the job's output, line by line, to CloudWatch Logs: group /aws/sagemaker/TrainingJobs, stream
   `<job>/algo-1-<epoch seconds>`, where follow() reads it.
4. Archive model/ as model.tar.gz and output/data/ as output.tar.gz under `<S3OutputPath><job>/output/`, encrypted
   with the job's output key, where collect() and DescribeTrainingJob's ModelArtifacts look.

start() returns when the job has ended, so the emulator's "Completed" is true by the time follow() or collect() ask.
A job that fails raises LocalJobError with its failure reason and the end of its log (the emulator cannot record
"Failed"). One instance only; spot checkpoints are not synced (a local job is never interrupted).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from launcher import job_contract
from launcher.jobs.follow import LOG_GROUP
from launcher.jobs.handle import TrainingJob
from launcher.jobs.launch import LOCAL_RUNNER
from launcher.jobs.request import TrainingRequest
from launcher.jobs.sagemaker_runner import SageMakerRunner

OPT_ML = "/opt/ml"  # the container's root of the training contract, hard-coded in the SDK's drivers
HOST = "algo-1"  # SageMaker's name of a job's first (here: only) instance
LOG_TAIL_LINES = 40  # how much of the job's output a LocalJobError shows
LOG_BATCH_EVENTS = 500  # PutLogEvents takes at most 10,000 events or 1 MiB a call
LOG_BATCH_BYTES = 512 * 1024
LOG_BATCH_SECONDS = 2.0  # lines reach CloudWatch at most this late while the job runs
MAX_EVENT_BYTES = 200 * 1024  # CloudWatch's limit is 256 KiB an event (with 26 bytes of overhead)
# What the job inherits from this process besides its own variables: the system's basics, never AWS_* values.
# OMP_NUM_THREADS: a limit the user set for this machine's cores (two jobs side by side) holds for the job too.
INHERITED = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "OMP_NUM_THREADS")


class LocalJobError(RuntimeError):
    """A local job failed or ran out of time; the message holds its failure reason and the end of its log."""


class LocalRunner(SageMakerRunner):
    """Creates the job in the emulator with the SageMaker runner, then runs it here (see the module docstring).

    Args:
        workdir: where the job's /opt/ml-like tree is made (a new temporary folder inside it); default the system's
            temporary folder.
        keep: keep the tree after the job (to look at what it read and wrote); it is removed by default.
        print_fn: where the runner's two lines (started, ended) go.
    """

    name = LOCAL_RUNNER

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None, keep: bool = False,
                 print_fn: Callable[[str], None] = print) -> None:
        self.workdir = Path(workdir) if workdir is not None else None
        self.keep = keep
        self.print_fn = print_fn
        self.last_tree: Path | None = None  # the tree of the last job (removed unless keep)

    def start(self, request: TrainingRequest) -> TrainingJob:
        """Create the job as on AWS, run it here until it ends, and upload what it wrote.

        Args:
            request: the resolved request.

        Raises:
            ValueError: a job of several instances.
            LocalJobError: the job failed or ran longer than its maximum runtime.
        """
        if request.instance_count != 1:
            raise ValueError(f"the local runner runs one instance; got instance_count={request.instance_count}: "
                             "start the job with instance_count=1, or on SageMaker (MONAI_DICOM_RUNNER=sagemaker)")
        job = super().start(request)
        session = request.settings.boto_session()
        described = session.client("sagemaker").describe_training_job(TrainingJobName=job.name)
        # moto keeps the request's channels, hyperparameters, entrypoint and output path, but not its Environment
        # (FACTS.md): that comes from the request, which the SageMaker runner sent as it is.
        environment = dict(request.environment)
        tree = Path(tempfile.mkdtemp(prefix=f"{job.name}-", dir=self.workdir))
        self.last_tree = tree
        self.print_fn(f"{job.name}: running on this machine (local runner) in {tree}; the emulator lists it as "
                      "Completed already, and its log and results appear when it ends")
        started = time.monotonic()
        try:
            make_tree(tree, described, session.client("s3"))
            stream = CloudWatchStream(session.client("logs"), f"{job.name}/{HOST}-{int(time.time())}")
            try:
                status, lines = run_job(tree, described, environment=environment, on_line=stream.put,
                                        timeout_s=request.max_runtime_s)
            finally:
                stream.close()
            if status != 0:
                failure = tree / "output" / "failure"
                reason = failure.read_text(encoding="utf-8", errors="replace").strip() if failure.is_file() else ""
                tail = "\n".join(lines[-LOG_TAIL_LINES:])
                raise LocalJobError(f"training job {job.name} failed (exit status {status}): "
                                    f"{reason or 'no failure reason written'}\nthe end of its log:\n{tail}")
            uploaded = upload_outputs(tree, described, session.client("s3"))
        finally:
            if not self.keep:
                shutil.rmtree(tree, ignore_errors=True)
        self.print_fn(f"{job.name}: ended after {time.monotonic() - started:.0f} s; uploaded "
                      f"{', '.join(uploaded)}")
        return job


def make_tree(base: Path, described: Mapping[str, Any], s3: Any) -> None:
    """Lay out base/ as SageMaker lays out /opt/ml for the job: config files, channels, model/ and output/data/.

    Args:
        base: an empty folder.
        described: DescribeTrainingJob of the job.
        s3: a boto3 S3 client.
    """
    config, data = base / "input" / "config", base / "input" / "data"
    for directory in (config, data, base / "model", base / "output" / "data"):
        directory.mkdir(parents=True, exist_ok=True)
    spec = described["AlgorithmSpecification"]
    instance_type = described["ResourceConfig"]["InstanceType"]
    _write_json(config / "hyperparameters.json", described.get("HyperParameters", {}))
    _write_json(config / "resourceconfig.json", {
        "current_host": HOST, "current_instance_type": instance_type, "current_group_name": "homogeneousCluster",
        "hosts": [HOST], "network_interface_name": "eth0",
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                             "hosts": [HOST]}],
    })
    channels = described.get("InputDataConfig", [])
    _write_json(config / "inputdataconfig.json", {
        c["ChannelName"]: {
            "TrainingInputMode": c.get("InputMode") or spec.get("TrainingInputMode", "File"),
            "S3DistributionType": c["DataSource"]["S3DataSource"].get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": c.get("RecordWrapperType", "None"),
        }
        for c in channels
    })
    for channel in channels:
        download_prefix(s3, channel["DataSource"]["S3DataSource"]["S3Uri"], data / channel["ChannelName"])
    # The SDK's drivers hard-code /opt/ml (FACTS.md); the job's own code reads SM_* variables and is left as shipped.
    drivers = data / "sm_drivers"
    for path in drivers.rglob("*") if drivers.is_dir() else ():
        if path.suffix in (".py", ".sh", ".json") and path.is_file():
            path.write_text(path.read_text(encoding="utf-8").replace(OPT_ML, str(base)), encoding="utf-8")


def download_prefix(s3: Any, uri: str, destination: Path) -> list[Path]:
    """Download an S3Prefix channel as SageMaker does: every object under the prefix, below `destination`.

    A key's path below `destination` is what follows the prefix (`s3://b/data/` and `s3://b/data` put `data/x/a.dcm`
    at `x/a.dcm`); an object whose key is the prefix itself (a one-file channel such as the manifest) keeps its name.

    Args:
        s3: a boto3 S3 client.
        uri: the channel's S3Uri.
        destination: the channel's folder (created).

    Returns:
        The files written.
    """
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue  # a folder marker, not a file
            if key == prefix:
                relative = key.rsplit("/", 1)[-1]
            elif prefix.endswith("/") or key[len(prefix)] == "/":
                relative = key[len(prefix):].lstrip("/")
            else:  # `data` also matches `data2/...`: that object keeps its own folder name
                relative = key[prefix.rfind("/") + 1:]
            target = destination.joinpath(*relative.split("/"))
            if destination.resolve() not in target.resolve().parents:
                raise ValueError(f"s3://{bucket}/{key} would be written outside the channel folder {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            written.append(target)
    return written


def job_environment(described: Mapping[str, Any], environment: Mapping[str, str],
                    inherit: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment: what SageMaker sets in the container, with this Python first on PATH.

    Args:
        described: DescribeTrainingJob of the job.
        environment: the request's Environment.
        inherit: where INHERITED values and PATH come from; default os.environ.
    """
    source = os.environ if inherit is None else inherit
    env = {name: source[name] for name in INHERITED if name in source}
    env.update(
        # The SDK's sm_train.sh runs `command -v python3` and `pip`: this interpreter's folder comes first.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), source.get("PATH", os.defpath)]),
        PYTHONUNBUFFERED="1",  # lines reach the log as they are printed
        TRAINING_JOB_NAME=described["TrainingJobName"],
        TRAINING_JOB_ARN=described["TrainingJobArn"],
    )
    env.update(environment)
    return env


def run_job(base: Path, described: Mapping[str, Any], *, environment: Mapping[str, str],
            on_line: Callable[[str], None], timeout_s: float) -> tuple[int, list[str]]:
    """Run the job's container command (entrypoint and arguments) with /opt/ml replaced by `base`.

    Args:
        base: the job's tree (make_tree).
        described: DescribeTrainingJob of the job.
        environment: the request's Environment.
        on_line: called with every line the job prints (stdout and stderr, in order).
        timeout_s: the job's MaxRuntimeInSeconds: its processes are killed after that.

    Returns:
        The exit status (negative: killed by that signal) and the lines printed.

    Raises:
        LocalJobError: the job ran longer than timeout_s.
        KeyboardInterrupt: after the job's processes were killed.
    """
    spec = described["AlgorithmSpecification"]
    command = [*spec.get("ContainerEntrypoint", []), *spec.get("ContainerArguments", [])]
    if not command:
        raise LocalJobError(f"training job {described['TrainingJobName']} has no container entrypoint: the local "
                            "runner runs jobs started with SourceCode (the launcher's), whose entrypoint is the SDK's "
                            "sm_train.sh")
    command = [part.replace(OPT_ML, str(base)) for part in command]
    # In this process's group, not a new one: whoever stops this process's group (Jupyter stopping the kernel, Ctrl-C
    # in a terminal) stops the job too. The runner itself stops the job's whole process tree (_kill_tree).
    process = subprocess.Popen(command, cwd=base, env=job_environment(described, environment),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        _kill_tree(process)

    timer = threading.Timer(timeout_s, kill)
    timer.daemon = True
    timer.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            on_line(line)
        status = process.wait()
    except BaseException:
        _kill_tree(process)
        process.wait()
        raise
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise LocalJobError(f"training job {described['TrainingJobName']} ran longer than its maximum runtime "
                            f"({timeout_s:.0f} s) and was stopped; the end of its log:\n"
                            + "\n".join(lines[-LOG_TAIL_LINES:]))
    return status, lines


def upload_outputs(base: Path, described: Mapping[str, Any], s3: Any) -> list[str]:
    """Archive model/ and output/data/ as SageMaker does and upload them to the job's output location.

    Args:
        base: the job's tree, after the job.
        described: DescribeTrainingJob of the job (OutputDataConfig: S3OutputPath, KmsKeyId).
        s3: a boto3 S3 client.

    Returns:
        The S3 URIs written.
    """
    output = described["OutputDataConfig"]
    location = f"{output['S3OutputPath'].rstrip('/')}/{described['TrainingJobName']}/output/"
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": output["KmsKeyId"]} if output.get("KmsKeyId") else {}
    uploaded = []
    for name, folder in ((job_contract.MODEL_ARCHIVE, base / "model"),
                         (job_contract.OUTPUT_ARCHIVE, base / "output" / "data")):
        archive = base / name
        with tarfile.open(archive, "w:gz") as tar:
            for child in sorted(folder.iterdir()):
                tar.add(child, arcname=child.name)
        s3.upload_file(str(archive), bucket, f"{prefix}{name}", ExtraArgs=extra)
        uploaded.append(f"{location}{name}")
    return uploaded


class CloudWatchStream:
    """A job's log stream in /aws/sagemaker/TrainingJobs, written in batches (PutLogEvents).

    Args:
        logs: a boto3 CloudWatch Logs client.
        stream: the stream's name, `<job>/algo-1-<epoch seconds>` as SageMaker names it.
    """

    def __init__(self, logs: Any, stream: str) -> None:
        self._logs, self.stream = logs, stream
        try:
            logs.create_log_group(logGroupName=LOG_GROUP)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                raise
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        self._events: list[dict[str, Any]] = []
        self._bytes = 0
        self._last_flush = time.monotonic()
        self._last_time = 0

    def put(self, line: str) -> None:
        """Add one line (empty lines are not sent: CloudWatch refuses empty events)."""
        if line.strip():
            message = line.encode("utf-8")[:MAX_EVENT_BYTES].decode("utf-8", errors="ignore")
            self._last_time = max(self._last_time, int(time.time() * 1000))  # events must not go back in time
            self._events.append({"timestamp": self._last_time, "message": message})
            self._bytes += len(message.encode("utf-8")) + 26
        if (len(self._events) >= LOG_BATCH_EVENTS or self._bytes >= LOG_BATCH_BYTES
                or time.monotonic() - self._last_flush >= LOG_BATCH_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Send the lines added since the last flush."""
        if self._events:
            self._logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=self.stream, logEvents=self._events)
        self._events, self._bytes, self._last_flush = [], 0, time.monotonic()

    def close(self) -> None:
        """Send what is left."""
        self.flush()


def _kill_tree(process: subprocess.Popen[str]) -> None:
    """Kill a process and every process it started (the SDK's drivers, the job, its data workers).

    The tree is frozen first (SIGSTOP: a stopped process starts no other), read again, then killed, so that no
    process started in between is left behind. Without /proc (macOS), only the process itself is killed.
    """
    tree = [process.pid, *descendants(process.pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
        if sig == signal.SIGSTOP:
            tree = list(dict.fromkeys([*tree, *descendants(process.pid)]))


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, their children, ...), read from /proc; [] without /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")

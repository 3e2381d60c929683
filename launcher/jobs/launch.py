"""Start a training job on a dataset of the stack's bucket: the notebook's one call, whichever runner runs it.

    job = start_training(settings, dataset="synthetic", hyperparameters={"epochs": 10}, spot=True)

start_training checks and resolves everything into a TrainingRequest (launcher/jobs/request.py: instance type
against the image, hyperparameters with the job's own parser, input mode, volume, stopping conditions, checkpoints),
adds the deployment's pseudonym key as a file channel (made on first launch), then hands the request to a runner.
Runners register under a name (launcher/runners.py, the one place that imports them) and are chosen with
Settings.runner (MONAI_DICOM_RUNNER), so notebook cells stay the same: "sagemaker" (launcher/jobs/sagemaker_runner.py,
the default) builds a ModelTrainer from the request; "local" (launcher/local/runner.py, what `make demo` uses) creates
the job the same way against the local AWS emulator, then runs it on this machine. This module imports no runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from launcher import job_contract
from launcher.datasets.manifest import DatasetManifest, read_manifest
from launcher.jobs.handle import TrainingJob
from launcher.jobs.request import DEFAULT_MAX_RUNTIME_S, TrainingRequest, build_request
from launcher.settings import Settings

log = logging.getLogger(__name__)

LOCAL_RUNNER = "local"  # launcher/local/runner.py: records the job in the emulator, runs it on this machine
PSEUDONYM_KEY_OBJECT = "secrets/pseudonym-key"  # in the stack's bucket; made on first launch, never rewritten


class Runner(Protocol):
    """Starts a job described by a TrainingRequest and returns its handle."""

    name: str

    def start(self, request: TrainingRequest) -> TrainingJob:
        """Start the job (without waiting for it).

        Args:
            request: the resolved request.
        """
        ...


RUNNERS: dict[str, Callable[[], Runner]] = {}  # filled by launcher/runners.py, which the package imports


def register_runner(name: str, factory: Callable[[], Runner]) -> None:
    """Make a runner available to Settings.runner / MONAI_DICOM_RUNNER under `name`.

    Args:
        name: e.g. "local".
        factory: builds the runner.
    """
    RUNNERS[name] = factory


def start_training(
    settings: Settings,
    *,
    dataset: DatasetManifest | str,
    hyperparameters: Mapping[str, Any] | None = None,
    instance_type: str | None = None,
    instance_count: int = 1,
    spot: bool = False,
    max_runtime_s: int = DEFAULT_MAX_RUNTIME_S,
    max_wait_s: int | None = None,
    input_mode: str | None = None,
    volume_size_gb: int | None = None,
    network_isolation: bool = True,
    resume_from: TrainingJob | str | None = None,
    runner: Runner | str | None = None,
) -> TrainingJob:
    """Start a training job on a dataset of the stack's bucket; returns at once (see follow and collect).

    Args:
        settings: the stack's values.
        dataset: a manifest from upload_dataset, or the name of a dataset uploaded earlier.
        hyperparameters: fields of training.job.config.TrainConfig (e.g. {"epochs": 10, "image_size": (128, 128)}).
        instance_type: default ml.m5.xlarge with the CPU image, ml.g5.xlarge with the GPU image.
        instance_count: more than one runs the job under torchrun, one process per GPU (or one per CPU instance).
        spot: managed spot training: cheaper, may be interrupted; the job resumes from its checkpoints.
        max_runtime_s: the job is stopped after this many seconds of training (default 24 h).
        max_wait_s: spot only: the job is stopped after this many seconds including waits for capacity
            (default twice max_runtime_s, at most 28 days; at least max_runtime_s).
        input_mode: "File" (copy the data to the volume first) or "FastFile" (stream it); default File, FastFile
            for datasets over 50 GiB.
        volume_size_gb: default 30 GB, more for File mode with a large dataset.
        network_isolation: cut the container off the network (channels and outputs still work); on by default, and
            the stack's notebook role may create no job without it (infra/constructs/roles.py ISOLATED).
        resume_from: start from an earlier job's newest checkpoint (that job, or its checkpoint S3 URI in the
            stack's bucket): it continues that job's training, e.g. with more epochs, instead of starting afresh.
        runner: a runner, or a registered runner's name; default Settings.runner.

    Returns:
        The job's handle.

    Raises:
        ValueError: an argument that SageMaker or the job would reject, or an instance type that does not fit the
            image; the message says which and what to use.
    """
    manifest = read_manifest(settings, dataset) if isinstance(dataset, str) else dataset
    request = build_request(
        settings, dataset=manifest, hyperparameters=hyperparameters or {}, instance_type=instance_type,
        instance_count=instance_count, spot=spot, max_runtime_s=max_runtime_s, max_wait_s=max_wait_s,
        input_mode=input_mode, volume_size_gb=volume_size_gb, network_isolation=network_isolation,
        resume_from=resume_from,
    )
    chosen = _runner(runner if runner is not None else settings.runner)
    request.channels[job_contract.PSEUDONYM_KEY_CHANNEL] = ensure_pseudonym_key(settings)
    job = chosen.start(request)
    log.info("started training job %s (%s)", job.name, chosen.name)
    return job


def ensure_pseudonym_key(settings: Settings, s3: Any = None) -> str:
    """The S3 URI of the deployment's pseudonym key (training/dataset/pseudonym_key.py), made of 32 random bytes on
    first use.

    The object is encrypted with the stack's key and written with IfNoneMatch='*' after a HEAD, so that two
    launchers never replace each other's key (which would rename every patient).
    """
    import secrets

    from botocore.exceptions import ClientError

    s3 = s3 or settings.boto_session().client("s3")
    bucket, key = settings.bucket, PSEUDONYM_KEY_OBJECT
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=secrets.token_bytes(32), IfNoneMatch="*",
                          ServerSideEncryption="aws:kms", SSEKMSKeyId=settings.data_key_arn)
        except ClientError as race:  # another launcher made it first: theirs is the key
            if race.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
    return f"s3://{bucket}/{key}"


def _runner(runner: Runner | str) -> Runner:
    if not isinstance(runner, str):
        return runner
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r} (from the runner argument or MONAI_DICOM_RUNNER); known: "
                         f"{', '.join(sorted(RUNNERS))}")
    return RUNNERS[runner]()

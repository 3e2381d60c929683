"""What start_training asks for, checked and resolved into a TrainingRequest before any runner starts anything.

    request = build_request(settings, dataset=manifest, hyperparameters={"epochs": 10}, instance_type=None, ...)

Every argument SageMaker or the job would reject fails here, with a message that says what to use: the instance type
against the image's variant (CPU or GPU), the hyperparameters with the job's own parser (launcher/job_contract.py),
the input mode, the volume, the stopping conditions and the checkpoint to resume from. The request then holds what a
runner needs and nothing it must look up: the dataset's channels and the `manifest` channel, the job's base name,
output and checkpoint locations in the stack's bucket, its environment and tags. The default instance types live
here, the one definition the launcher's other modules (launcher/inference.py) and the tests import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher import job_contract
from launcher.datasets.manifest import DatasetManifest
from launcher.jobs.handle import (
    CHECKPOINTS_PREFIX,
    DATASET_TAG,
    JOBS_PREFIX,
    STACK_TAG,
    TrainingJob,
    new_base_job_name,
)
from launcher.settings import Settings

DEFAULT_CPU_INSTANCE = "ml.m5.xlarge"  # 4 vCPUs, 16 GiB: trains the demo set at 96x96 in minutes
DEFAULT_GPU_INSTANCE = "ml.g5.xlarge"  # one A10G: the smallest current GPU type with bf16
DEFAULT_MAX_RUNTIME_S = 24 * 3600  # a runaway job stops costing money within a day
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600  # SageMaker's limit for MaxRuntimeInSeconds and MaxWaitTimeInSeconds
# Above this, File mode would copy the data to the volume for minutes before training starts; FastFile streams it.
LARGE_DATASET_BYTES = 50 * 1024**3
INPUT_MODES = ("File", "FastFile")
MIN_VOLUME_GB = 30  # SageMaker's default volume
VOLUME_HEADROOM_GB = 10  # the job's decoded-image cache, the bundle, the outputs
_INSTANCE_TYPE = re.compile(r"^ml\.(?P<family>[a-z][a-z0-9-]*)\.[a-z0-9]+$")


@dataclass(frozen=True)
class TrainingRequest:
    """Everything a runner needs to start one job, resolved and checked.

    Attributes:
        settings: the stack's values.
        dataset: the dataset's manifest.
        base_job_name: the job name without the timestamp the SDK appends.
        channels: channel name to S3 URI: the dataset's channels and the `manifest` channel.
        hyperparameters: as strings, checked by the job's parser.
        instance_type, instance_count: the training cluster.
        distributed: run the entry under torchrun (several instances).
        input_mode: File or FastFile.
        volume_size_gb: the instances' EBS volume.
        max_runtime_s: MaxRuntimeInSeconds.
        spot: managed spot training.
        max_wait_s: MaxWaitTimeInSeconds (spot only).
        checkpoint_uri: where SageMaker syncs /opt/ml/checkpoints (spot only).
        output_uri: S3OutputPath (`s3://<bucket>/jobs/`).
        network_isolation: the container gets no network access (its channels and outputs still work).
        inter_container_encryption: encrypt traffic between the instances of a distributed job.
        environment: environment variables of the job.
        tags: tags of the job.
    """

    settings: Settings
    dataset: DatasetManifest
    base_job_name: str
    channels: dict[str, str]
    hyperparameters: dict[str, str]
    instance_type: str
    instance_count: int
    distributed: bool
    input_mode: str
    volume_size_gb: int
    max_runtime_s: int
    spot: bool
    max_wait_s: int | None
    checkpoint_uri: str | None
    output_uri: str
    network_isolation: bool
    inter_container_encryption: bool
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def build_request(
    settings: Settings,
    *,
    dataset: DatasetManifest,
    hyperparameters: Mapping[str, Any],
    instance_type: str | None,
    instance_count: int,
    spot: bool,
    max_runtime_s: int,
    max_wait_s: int | None,
    input_mode: str | None,
    volume_size_gb: int | None,
    network_isolation: bool,
    resume_from: TrainingJob | str | None = None,
) -> TrainingRequest:
    """Check and resolve start_training's arguments (see there) into a TrainingRequest.

    Raises:
        ValueError: see start_training.
    """
    if dataset.bucket != settings.bucket:
        raise ValueError(f"dataset {dataset.name!r} is in bucket {dataset.bucket}, not the stack's {settings.bucket}: "
                         "upload it with upload_dataset(settings, ...)")
    if "train" not in dataset.channels:
        raise ValueError(f"dataset {dataset.name!r} has no train channel (it has {list(dataset.channels)})")
    variant = image_variant(settings)
    instance_type = instance_type or (DEFAULT_GPU_INSTANCE if variant == "gpu" else DEFAULT_CPU_INSTANCE)
    check_instance_type(instance_type, variant, settings.training_image_uri)
    if instance_count < 1:
        raise ValueError(f"instance_count must be at least 1; got {instance_count}")
    mode = input_mode or ("FastFile" if dataset.total_bytes > LARGE_DATASET_BYTES else "File")
    if mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {', '.join(INPUT_MODES)}; got {input_mode!r}")
    max_wait_s = _stopping_condition(spot, max_runtime_s, max_wait_s)
    volume_size_gb = _volume_size(volume_size_gb, dataset.total_bytes if mode == "File" else 0)

    base = new_base_job_name(settings.stack_name)
    bucket = settings.bucket
    channels = {c: dataset.channel_uri(c) for c in dataset.channels}
    channels[job_contract.MANIFEST_CHANNEL] = dataset.manifest_uri
    if resume_from is not None:
        channels[job_contract.RESUME_CHANNEL] = _checkpoints_of(resume_from, bucket)
    commit = job_contract.code_commit()
    return TrainingRequest(
        settings=settings,
        dataset=dataset,
        base_job_name=base,
        channels=channels,
        hyperparameters=job_contract.hyperparameters(hyperparameters),
        instance_type=instance_type,
        instance_count=instance_count,
        distributed=instance_count > 1,
        input_mode=mode,
        volume_size_gb=volume_size_gb,
        max_runtime_s=max_runtime_s,
        spot=spot,
        max_wait_s=max_wait_s,
        # The job's own location: its name starts with `base` (the SDK appends a timestamp), no other job's does.
        checkpoint_uri=f"s3://{bucket}/{CHECKPOINTS_PREFIX}{base}/" if spot else None,
        output_uri=f"s3://{bucket}/{JOBS_PREFIX}",
        network_isolation=network_isolation,
        inter_container_encryption=True,
        environment={job_contract.CODE_COMMIT_VARIABLE: commit} if commit else {},
        tags={STACK_TAG: settings.stack_name, DATASET_TAG: dataset.name},
    )


def _stopping_condition(spot: bool, max_runtime_s: int, max_wait_s: int | None) -> int | None:
    """The checked MaxWaitTimeInSeconds: for spot jobs given or twice the runtime (at most 28 days), else None."""
    if not 1 <= max_runtime_s <= MAX_RUNTIME_LIMIT_S:
        raise ValueError(f"max_runtime_s must be between 1 and {MAX_RUNTIME_LIMIT_S} (28 days); got {max_runtime_s}")
    if spot:
        max_wait_s = max_wait_s or min(2 * max_runtime_s, MAX_RUNTIME_LIMIT_S)
        if not max_runtime_s <= max_wait_s <= MAX_RUNTIME_LIMIT_S:
            raise ValueError(f"max_wait_s must be between max_runtime_s ({max_runtime_s}) and {MAX_RUNTIME_LIMIT_S}: "
                             f"it counts the training time and the waits for spot capacity; got {max_wait_s}")
        return max_wait_s
    if max_wait_s is not None:
        raise ValueError("max_wait_s applies to spot jobs only: pass spot=True, or leave max_wait_s out")
    return None


def _volume_size(volume_size_gb: int | None, copied_bytes: int) -> int:
    """The checked volume size: given, else room for the data File mode copies (`copied_bytes`) and the job's own."""
    if volume_size_gb is None:
        return max(MIN_VOLUME_GB, math.ceil(1.2 * (copied_bytes / 1e9)) + VOLUME_HEADROOM_GB)
    if volume_size_gb < 1:
        raise ValueError(f"volume_size_gb must be at least 1; got {volume_size_gb}")
    return volume_size_gb


def _checkpoints_of(source: TrainingJob | str, bucket: str) -> str:
    """The S3 URI of an earlier job's checkpoints, checked to be where the training role may read them."""
    if isinstance(source, TrainingJob):
        if not source.checkpoint_uri:
            raise ValueError(f"job {source.name} wrote no checkpoints (only spot jobs do): nothing to resume from")
        uri = source.checkpoint_uri
    else:
        uri = source
    prefix = f"s3://{bucket}/{CHECKPOINTS_PREFIX}"
    if not uri.startswith(prefix):
        raise ValueError(f"resume_from must be a job's checkpoint location under {prefix}; got {uri!r}")
    return uri


def image_variant(settings: Settings) -> str | None:
    """"cpu" or "gpu": the stack's word (Settings.image_variant), else the image tag's; None when neither says.

    Tags such as `2.13-cpu-amzn2023-sagemaker` and `2.13-cu133-...` (the SageMaker PyTorch containers) are read;
    an image built by `cdk deploy` is tagged with a content hash, which says nothing.

    Args:
        settings: the stack's values.
    """
    if settings.image_variant:
        return settings.image_variant
    uri = settings.training_image_uri
    tag = uri.rsplit(":", 1)[1] if ":" in uri.rsplit("/", 1)[-1] else ""
    words = set(re.split(r"[-_.]", tag.lower()))
    if "cpu" in words:
        return "cpu"
    if "gpu" in words or any(re.fullmatch(r"cu\d+", w) for w in words):
        return "gpu"
    return None


def check_instance_type(instance_type: str, variant: str | None, image_uri: str) -> None:
    """Raise when the instance type cannot run the image well: GPUs with the CPU image, or the reverse.

    Args:
        instance_type: e.g. ml.m5.xlarge.
        variant: the image's variant (image_variant), None when unknown (then only the name is checked).
        image_uri: for the message.

    Raises:
        ValueError: a malformed type, a Trainium/Inferentia type (no Neuron image here), or a mismatch.
    """
    match = _INSTANCE_TYPE.match(instance_type)
    if not match:
        raise ValueError(f"instance_type {instance_type!r} is not a SageMaker instance type such as "
                         f"{DEFAULT_CPU_INSTANCE} or {DEFAULT_GPU_INSTANCE}")
    family = match["family"]
    if family.startswith(("trn", "inf")):
        raise ValueError(f"instance_type {instance_type} is an AWS Trainium/Inferentia type; the training image is "
                         f"built for CPUs or NVIDIA GPUs: use e.g. {DEFAULT_CPU_INSTANCE} or {DEFAULT_GPU_INSTANCE}")
    has_gpu = family.startswith(("g", "p"))
    if variant == "cpu" and has_gpu:
        raise ValueError(
            f"instance_type {instance_type} has NVIDIA GPUs, but the training image {image_uri} is the CPU variant: "
            f"the GPUs would sit idle. Use a CPU type such as {DEFAULT_CPU_INSTANCE}, or deploy the GPU image "
            "(make deploy CDK_ARGS='-c imageVariant=gpu') and reload the settings"
        )
    if variant == "gpu" and not has_gpu:
        raise ValueError(
            f"instance_type {instance_type} has no GPU, but the training image {image_uri} is the GPU (CUDA) variant. "
            f"Use a GPU type such as {DEFAULT_GPU_INSTANCE}, or deploy the CPU image "
            "(make deploy CDK_ARGS='-c imageVariant=cpu') and reload the settings"
        )

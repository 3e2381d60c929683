"""Start the training job on the stack's resources with the SageMaker Python SDK v3 (ModelTrainer).

    job = start_training(settings, dataset="synthetic", hyperparameters={"epochs": 10}, spot=True)

start_training checks and resolves everything (instance type against the image, hyperparameters with the job's own
parser, input mode, volume, stopping conditions, checkpoints) into a TrainingRequest, then hands it to a runner.
The SageMaker runner builds a ModelTrainer from it: the stack's image and training role; training/ staged under
code/ of the stack's bucket; outputs under jobs/ and checkpoints under checkpoints/, everything encrypted with the
stack's key; the stack's subnets when it has a VPC; network isolation and inter-container traffic encryption on;
the job's metric regexes; a maximum runtime. Other runners register under a name and are chosen with Settings.runner
(MONAI_DICOM_RUNNER), so notebook cells stay the same: "local" (launcher/local/runner.py, what `make demo` uses)
creates the job the same way against the local AWS emulator, then runs it on this machine.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from launcher import job_contract
from launcher.datasets.upload import DatasetManifest, read_manifest
from launcher.jobs.handle import (
    CHECKPOINTS_PREFIX,
    CODE_PREFIX,
    DATASET_TAG,
    JOBS_PREFIX,
    RUNNER_TAG,
    STACK_TAG,
    TrainingJob,
    new_base_job_name,
)
from launcher.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CPU_INSTANCE = "ml.m5.xlarge"  # 4 vCPUs, 16 GiB: trains the demo set at 96x96 in minutes
DEFAULT_GPU_INSTANCE = "ml.g5.xlarge"  # one A10G: the smallest current GPU type with bf16
DEFAULT_MAX_RUNTIME_S = 24 * 3600  # a runaway job stops costing money within a day
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600  # SageMaker's limit for MaxRuntimeInSeconds and MaxWaitTimeInSeconds
# Above this, File mode would copy the data to the volume for minutes before training starts; FastFile streams it.
LARGE_DATASET_BYTES = 50 * 1024**3
INPUT_MODES = ("File", "FastFile")
MIN_VOLUME_GB = 30  # SageMaker's default volume
VOLUME_HEADROOM_GB = 10  # the job's decoded-image cache, the bundle, the outputs
LOCAL_RUNNER = "local"  # launcher/local/runner.py: records the job in the emulator, runs it on this machine
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
    request.channels[PSEUDONYM_KEY_CHANNEL] = ensure_pseudonym_key(settings)
    job = chosen.start(request)
    log.info("started training job %s (%s)", job.name, chosen.name)
    return job


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
    if not 1 <= max_runtime_s <= MAX_RUNTIME_LIMIT_S:
        raise ValueError(f"max_runtime_s must be between 1 and {MAX_RUNTIME_LIMIT_S} (28 days); got {max_runtime_s}")
    if spot:
        max_wait_s = max_wait_s or min(2 * max_runtime_s, MAX_RUNTIME_LIMIT_S)
        if not max_runtime_s <= max_wait_s <= MAX_RUNTIME_LIMIT_S:
            raise ValueError(f"max_wait_s must be between max_runtime_s ({max_runtime_s}) and {MAX_RUNTIME_LIMIT_S}: "
                             f"it counts the training time and the waits for spot capacity; got {max_wait_s}")
    elif max_wait_s is not None:
        raise ValueError("max_wait_s applies to spot jobs only: pass spot=True, or leave max_wait_s out")
    if volume_size_gb is None:
        data_gb = dataset.total_bytes / 1e9 if mode == "File" else 0.0
        volume_size_gb = max(MIN_VOLUME_GB, math.ceil(1.2 * data_gb) + VOLUME_HEADROOM_GB)
    elif volume_size_gb < 1:
        raise ValueError(f"volume_size_gb must be at least 1; got {volume_size_gb}")

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
        max_wait_s=max_wait_s if spot else None,
        # The job's own location: its name starts with `base` (the SDK appends a timestamp), no other job's does.
        checkpoint_uri=f"s3://{bucket}/{CHECKPOINTS_PREFIX}{base}/" if spot else None,
        output_uri=f"s3://{bucket}/{JOBS_PREFIX}",
        network_isolation=network_isolation,
        inter_container_encryption=True,
        environment={job_contract.CODE_COMMIT_VARIABLE: commit} if commit else {},
        tags={STACK_TAG: settings.stack_name, DATASET_TAG: dataset.name},
    )


# One file, the key (training/job/environment.py); no hyphen: sm_train.sh exports it.
PSEUDONYM_KEY_CHANNEL = "pseudonym_key"
PSEUDONYM_KEY_OBJECT = "secrets/pseudonym-key"  # in the stack's bucket; made on first launch, never rewritten
_FILE_CHANNELS = (job_contract.MANIFEST_CHANNEL, job_contract.RESUME_CHANNEL, PSEUDONYM_KEY_CHANNEL)


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


def _runner(runner: Runner | str) -> Runner:
    if not isinstance(runner, str):
        return runner
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r} (from the runner argument or MONAI_DICOM_RUNNER); known: "
                         f"{', '.join(sorted(RUNNERS))}")
    return RUNNERS[runner]()


class SageMakerRunner:
    """Starts a SageMaker training job with the SDK v3 ModelTrainer."""

    name = "sagemaker"

    def start(self, request: TrainingRequest) -> TrainingJob:
        """Create the job (staging training/ under code/) and return without waiting.

        Args:
            request: the resolved request.
        """
        trainer = self.model_trainer(request)
        trainer.train(input_data_config=self.channels(request), wait=False, logs=False)
        created = trainer._latest_training_job  # the SDK's handle of the job train() created (its documented way)
        settings = request.settings
        return TrainingJob(name=str(created.training_job_name), region=settings.region, bucket=settings.bucket,
                           stack_name=settings.stack_name, dataset=request.dataset.name,
                           checkpoint_uri=request.checkpoint_uri, runner=self.name)

    @classmethod
    def model_trainer(cls, request: TrainingRequest) -> Any:
        """The ModelTrainer for a request (also what a test can inspect without starting anything).

        The job is tagged with the runner's name (RUNNER_TAG), so that attach() knows which runner started it.

        Args:
            request: the resolved request.
        """
        from sagemaker.core.helper.session_helper import Session
        from sagemaker.core.training.configs import (
            CheckpointConfig,
            Compute,
            MetricDefinition,
            Networking,
            OutputDataConfig,
            SourceCode,
            StoppingCondition,
            Tag,
        )
        from sagemaker.train.distributed import Torchrun

        settings = request.settings
        # default_bucket given: otherwise the SDK asks STS for the account to name its own bucket.
        session = Session(boto_session=settings.boto_session(), default_bucket=settings.bucket)
        trainer = _stack_model_trainer()(
            sagemaker_session=session,
            role=settings.training_role_arn,
            training_image=settings.training_image_uri,
            base_job_name=request.base_job_name,
            input_s3_key_prefix=CODE_PREFIX.rstrip("/"),
            source_code=SourceCode(source_dir=str(job_contract.SOURCE_DIR), entry_script=job_contract.ENTRY_SCRIPT,
                                   ignore_patterns=list(job_contract.IGNORE_PATTERNS)),
            distributed=Torchrun() if request.distributed else None,
            compute=Compute(
                instance_type=request.instance_type, instance_count=request.instance_count,
                volume_size_in_gb=request.volume_size_gb, volume_kms_key_id=settings.data_key_arn,
                enable_managed_spot_training=request.spot,
            ),
            networking=Networking(
                subnets=list(settings.subnets) or None, security_group_ids=list(settings.security_group_ids) or None,
                enable_network_isolation=request.network_isolation,
                enable_inter_container_traffic_encryption=request.inter_container_encryption,
            ),
            stopping_condition=StoppingCondition(max_runtime_in_seconds=request.max_runtime_s,
                                                 max_wait_time_in_seconds=request.max_wait_s),
            output_data_config=OutputDataConfig(s3_output_path=request.output_uri, kms_key_id=settings.data_key_arn,
                                                compression_type="GZIP"),
            checkpoint_config=(CheckpointConfig(s3_uri=request.checkpoint_uri,
                                                local_path=job_contract.CHECKPOINT_LOCAL_PATH)
                               if request.checkpoint_uri else None),
            training_input_mode=request.input_mode,
            hyperparameters=dict(request.hyperparameters),
            environment=dict(request.environment),
            tags=[Tag(key=k, value=v) for k, v in {**request.tags, RUNNER_TAG: cls.name}.items()],
        )
        definitions = [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in job_contract.metric_definitions()]
        return trainer.with_metric_definitions(definitions)

    @staticmethod
    def channels(request: TrainingRequest) -> list[Any]:
        """The input channels, each in the request's input mode (the manifest, one small file, always in File).

        Args:
            request: the resolved request.
        """
        from sagemaker.core.training.configs import Channel, DataSource, S3DataSource

        return [
            Channel(
                channel_name=name,
                data_source=DataSource(s3_data_source=S3DataSource(
                    s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated")),
                # A channel's own InputMode overrides the job's: set it on each (InputData would force File).
                input_mode="File" if name in _FILE_CHANNELS else request.input_mode,
            )
            for name, uri in request.channels.items()
        ]


@cache
def _stack_model_trainer() -> type:
    """ModelTrainer, staging code where the stack's training role can read it: `code/` of the stack's bucket.

    ModelTrainer stages training/ and its driver scripts under `<default bucket>/<input_s3_key_prefix>/<job>/input/`
    unless a simulation of the training role says it may not write `arn:aws:s3:::<bucket>/*`; then it stages under
    the output path's prefix instead (jobs/code/...). The stack grants the training role prefixes of the bucket
    (reads code/ and datasets/, writes jobs/ and checkpoints/), never the whole bucket, so on AWS that simulation says
    "denied" and the code would land under jobs/, while the emulator (no iam:SimulatePrincipalPolicy) keeps code/.
    The notebook role uploads the code and the training role reads code/: the default bucket is the right place.
    """
    from sagemaker.train import ModelTrainer

    class StackModelTrainer(ModelTrainer):  # type: ignore[misc]
        def _resolve_staging_bucket(self) -> tuple[str, None]:
            return str(self.sagemaker_session.default_bucket()), None

    return StackModelTrainer


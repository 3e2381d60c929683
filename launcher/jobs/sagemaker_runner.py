"""The SageMaker runner: starts a TrainingRequest (launcher/jobs/request.py) as a training job with the SageMaker
Python SDK v3 (ModelTrainer).

The job gets the stack's image and training role; training/ staged under code/ of the stack's bucket; outputs under
jobs/ and checkpoints under checkpoints/, everything encrypted with the stack's key; the stack's subnets when it has
a VPC; network isolation and inter-container traffic encryption on; the job's metric regexes; a maximum runtime.
start_training (launcher/jobs/launch.py) finds it by name in its registry, which launcher/runners.py fills; the local
runner (launcher/local/runner.py) builds on it, and this module imports neither of them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from launcher import job_contract
from launcher.jobs.handle import CODE_PREFIX, RUNNER_TAG, TrainingJob
from launcher.jobs.request import TrainingRequest

# Read whole before the job starts, whatever the request's input mode: one small file or a few checkpoints.
_FILE_CHANNELS = (job_contract.MANIFEST_CHANNEL, job_contract.RESUME_CHANNEL, job_contract.PSEUDONYM_KEY_CHANNEL)


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

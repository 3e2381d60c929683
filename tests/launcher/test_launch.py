"""start_training with the real SDK v3 ModelTrainer against the emulator: what CreateTrainingJob carries.

moto's DescribeTrainingJob rewrites MetricDefinitions and Environment (FACTS.md), so the assertions read the request
the SDK sent, from moto's recorder.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from demo.emulator import Emulator
from launcher import job_contract
from launcher.datasets.manifest import DatasetManifest, DatasetObject
from launcher.datasets.upload import upload_dataset
from launcher.jobs.handle import DATASET_TAG, STACK_TAG, TrainingJob, job_name_prefix
from launcher.jobs.launch import start_training
from launcher.jobs.request import (
    DEFAULT_CPU_INSTANCE,
    DEFAULT_GPU_INSTANCE,
    DEFAULT_MAX_RUNTIME_S,
    LARGE_DATASET_BYTES,
    build_request,
    check_instance_type,
    image_variant,
)
from tests.launcher.conftest import BUCKET, STACK_NAME, Recording, Stack

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sagemaker.*")

HYPERPARAMETERS = {"epochs": 2, "image_size": (64, 64), "learning_rate": 3e-4, "channels_last": False}
SENT_HYPERPARAMETERS = {"epochs": "2", "image_size": "64,64", "learning_rate": "0.0003", "channels_last": "false"}


@pytest.fixture(scope="module")
def dataset(stack: Stack, dicom_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    import shutil

    root = tmp_path_factory.mktemp("channels")
    shutil.copytree(dicom_folder, root / "train")
    shutil.copytree(dicom_folder, root / "validation")
    shutil.copytree(dicom_folder, root / "test")
    return upload_dataset(stack.settings, root, "launch", progress=False)


def created(recording: Recording) -> dict[str, Any]:
    calls = recording.calls("CreateTrainingJob")
    assert len(calls) == 1
    return calls[0]


def channel(request: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in request["InputDataConfig"] if c["ChannelName"] == name)


def s3_uri(request: dict[str, Any], name: str) -> str:
    return str(channel(request, name)["DataSource"]["S3DataSource"]["S3Uri"])


@dataclass(frozen=True)
class Launched:
    job: TrainingJob
    request: dict[str, Any]  # the CreateTrainingJob request the SDK sent


@pytest.fixture(scope="module")
def default_job(stack: Stack, dataset: DatasetManifest, emulator: Emulator,
                tmp_path_factory: pytest.TempPathFactory) -> Launched:
    """A job with the defaults and a few hyperparameters, and its recorded request (one launch for two tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("recording"))  # see the recording fixture
        recording = Recording(emulator.endpoint)
        recording.start()
        try:
            job = start_training(stack.settings, dataset=dataset, hyperparameters=HYPERPARAMETERS)
            return Launched(job, created(recording))
        finally:
            recording.stop()


def test_a_job_runs_on_the_stack_resources(stack: Stack, default_job: Launched) -> None:
    settings, job, request = stack.settings, default_job.job, default_job.request
    assert request["TrainingJobName"] == job.name and job.name.startswith(f"{job_name_prefix(STACK_NAME)}-")
    assert request["RoleArn"] == settings.training_role_arn
    spec = request["AlgorithmSpecification"]
    assert spec["TrainingImage"] == settings.training_image_uri and spec["TrainingInputMode"] == "File"
    assert spec["MetricDefinitions"] == job_contract.metric_definitions()
    assert request["HyperParameters"] == SENT_HYPERPARAMETERS
    for name in ("train", "validation", "test"):
        assert s3_uri(request, name) == f"s3://{BUCKET}/datasets/launch/{name}/"
        assert channel(request, name)["InputMode"] == "File"
    assert s3_uri(request, "manifest") == f"s3://{BUCKET}/datasets/launch/manifest.json"
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/jobs/",
                                           "KmsKeyId": settings.data_key_arn, "CompressionType": "GZIP"}
    assert request["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30,
                                         "VolumeKmsKeyId": settings.data_key_arn}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": DEFAULT_MAX_RUNTIME_S}
    assert request["EnableNetworkIsolation"] is True
    assert request["EnableInterContainerTrafficEncryption"] is True
    assert "VpcConfig" not in request and "CheckpointConfig" not in request
    assert not request.get("EnableManagedSpotTraining")
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert (tags[STACK_TAG], tags[DATASET_TAG]) == (STACK_NAME, "launch")
    assert set(request.get("Environment", {})) <= {job_contract.CODE_COMMIT_VARIABLE}


def test_the_code_is_staged_under_code_with_the_stack_key(stack: Stack, default_job: Launched) -> None:
    job, request = default_job.job, default_job.request
    code, drivers = s3_uri(request, "code"), s3_uri(request, "sm_drivers")
    assert code.startswith(f"s3://{BUCKET}/code/{job.name}/") and drivers.startswith(f"s3://{BUCKET}/code/{job.name}/")
    s3 = boto3.Session().client("s3")
    prefix = code.removeprefix(f"s3://{BUCKET}/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    shipped = {k.removeprefix(prefix).lstrip("/") for k in keys}
    assert job_contract.ENTRY_SCRIPT in shipped and "job/metrics.py" in shipped
    assert not any("__pycache__" in k or k.endswith(".pyc") for k in shipped)
    assert not {"Dockerfile", ".dockerignore"} & shipped  # the image's build files stay home
    head = s3.head_object(Bucket=BUCKET, Key=keys[0])
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", stack.settings.data_key_arn)
    source = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{drivers.removeprefix(f's3://{BUCKET}/')}/sourcecode.json")
                        ["Body"].read())
    assert source["entry_script"] == job_contract.ENTRY_SCRIPT


def test_spot_in_the_vpc_on_two_instances(stack: Stack, dataset: DatasetManifest, recording: Recording) -> None:
    settings = stack.vpc_settings
    job = start_training(settings, dataset=dataset, instance_count=2, spot=True, max_runtime_s=3600)

    request = created(recording)
    assert request["VpcConfig"] == {"Subnets": list(settings.subnets),
                                    "SecurityGroupIds": list(settings.security_group_ids)}
    assert request["EnableManagedSpotTraining"] is True
    stopping = request["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == 3600 and stopping["MaxWaitTimeInSeconds"] >= 3600
    checkpoint = request["CheckpointConfig"]
    assert checkpoint == {"S3Uri": job.checkpoint_uri, "LocalPath": job_contract.CHECKPOINT_LOCAL_PATH}
    assert checkpoint["S3Uri"].startswith(f"s3://{BUCKET}/checkpoints/")
    run = checkpoint["S3Uri"].removeprefix(f"s3://{BUCKET}/checkpoints/").rstrip("/")
    assert job.name.startswith(f"{run}-")  # the job's own location: the prefix of its name
    assert request["ResourceConfig"]["InstanceCount"] == 2
    # Torchrun as the SDK expresses it: its driver runs from the staged sm_train.sh, configured by distributed.json.
    s3 = boto3.Session().client("s3")
    drivers = s3_uri(request, "sm_drivers").removeprefix(f"s3://{BUCKET}/")
    script = s3.get_object(Bucket=BUCKET, Key=f"{drivers}/sm_train.sh")["Body"].read().decode()
    assert "distributed_drivers/torchrun_driver.py" in script
    distributed = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{drivers}/distributed.json")["Body"].read())
    assert distributed == {"process_count_per_node": None, "smp": None}


def test_fast_file_sets_every_data_channel(stack: Stack, dataset: DatasetManifest, recording: Recording) -> None:
    start_training(stack.settings, dataset="launch", input_mode="FastFile")  # by name: its manifest is read

    request = created(recording)
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert {c["ChannelName"]: c["InputMode"] for c in request["InputDataConfig"]
            if c["ChannelName"] in ("train", "validation", "test", "manifest")} == {
        "train": "FastFile", "validation": "FastFile", "test": "FastFile", "manifest": "File"}


def test_a_wrong_hyperparameter_fails_before_anything_starts(stack: Stack, dataset: DatasetManifest,
                                                             recording: Recording) -> None:
    with pytest.raises(ValueError, match="unknown hyperparameter 'epoch'"):
        start_training(stack.settings, dataset=dataset, hyperparameters={"epoch": 3})
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        start_training(stack.settings, dataset=dataset, hyperparameters={"batch_size": 0})
    assert recording.requests() == []


def test_an_unknown_runner_is_named(stack: Stack, dataset: DatasetManifest) -> None:
    with pytest.raises(ValueError, match="unknown runner 'docker' .* known: local, sagemaker"):
        start_training(replace(stack.settings, runner="docker"), dataset=dataset)


def test_the_staging_hook_launch_overrides_is_the_one_the_sdk_calls() -> None:
    """sagemaker_runner._stack_model_trainer keeps code under code/ by overriding this method; the SDK must use it."""
    from sagemaker.train import ModelTrainer

    assert "self._resolve_staging_bucket()" in inspect.getsource(ModelTrainer.create_input_data_channel)


def big_dataset(size: int) -> DatasetManifest:
    obj = DatasetObject(channel="train", file="a.dcm", key="datasets/big/train/a.dcm", size=size, sha256="0" * 64,
                        checksum_sha256="x", version_id=None, etag=None)
    return DatasetManifest(name="big", bucket=BUCKET, objects=(obj,))


def request_for(stack: Stack, manifest: DatasetManifest, **overrides: Any) -> Any:
    arguments: dict[str, Any] = dict(hyperparameters={}, instance_type=None, instance_count=1, spot=False,
                                     max_runtime_s=DEFAULT_MAX_RUNTIME_S, max_wait_s=None, input_mode=None,
                                     volume_size_gb=None, network_isolation=True)
    return build_request(stack.settings, dataset=manifest, **{**arguments, **overrides})


def test_large_datasets_stream_with_fast_file(stack: Stack) -> None:
    small = request_for(stack, big_dataset(LARGE_DATASET_BYTES // 2))
    assert (small.input_mode, small.volume_size_gb) == ("File", 43)  # the data is copied to the volume
    large = request_for(stack, big_dataset(LARGE_DATASET_BYTES + 1))
    assert (large.input_mode, large.volume_size_gb) == ("FastFile", 30)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"max_wait_s": 100}, "max_wait_s applies to spot jobs only"),
    ({"spot": True, "max_runtime_s": 3600, "max_wait_s": 60}, "max_wait_s must be between max_runtime_s"),
    ({"max_runtime_s": 0}, "max_runtime_s must be between 1 and"),
    ({"input_mode": "Pipe"}, "input_mode must be one of File, FastFile"),
    ({"instance_count": 0}, "instance_count must be at least 1"),
])
def test_arguments_sagemaker_would_reject_are_named(stack: Stack, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        request_for(stack, big_dataset(1), **overrides)


GPU_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/monai-training:2.13-cu133-amzn2023-sagemaker"
HASH_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/cdk-hnb659fds-container-assets:3f2a9c0d1e"


@pytest.mark.parametrize(("image", "variant"), [
    ("public.ecr.aws/deep-learning-containers/pytorch:2.13-cpu-amzn2023-sagemaker", "cpu"),
    (GPU_IMAGE, "gpu"),
    ("localhost:5000/x:gpu", "gpu"),
    (HASH_IMAGE, None),
    ("localhost:5000/cpu", None),
])
def test_the_image_variant_is_read_from_its_tag(stack: Stack, image: str, variant: str | None) -> None:
    assert image_variant(replace(stack.settings, training_image_uri=image)) == variant
    assert image_variant(replace(stack.settings, training_image_uri=image, image_variant="gpu")) == "gpu"


@pytest.mark.parametrize(("instance_type", "variant", "message"), [
    ("ml.g5.xlarge", "cpu", r"ml\.g5\.xlarge has NVIDIA GPUs, but the training image .* is the CPU variant"),
    ("ml.p4d.24xlarge", "cpu", "is the CPU variant"),
    ("ml.m5.xlarge", "gpu", r"ml\.m5\.xlarge has no GPU, but the training image .* is the GPU \(CUDA\) variant"),
    ("ml.trn1.2xlarge", None, "Trainium/Inferentia"),
    ("m5.xlarge", "cpu", "is not a SageMaker instance type"),
])
def test_an_instance_type_that_does_not_fit_the_image_is_refused(instance_type: str, variant: str | None,
                                                                 message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_instance_type(instance_type, variant, "IMAGE")


@pytest.mark.parametrize(("instance_type", "variant"), [
    ("ml.m5.xlarge", "cpu"), ("ml.c6i.4xlarge", "cpu"), ("ml.g5.xlarge", "gpu"), ("ml.g6e.2xlarge", None),
])
def test_fitting_instance_types_pass(instance_type: str, variant: str | None) -> None:
    check_instance_type(instance_type, variant, "IMAGE")


def test_the_gpu_image_defaults_to_a_gpu_instance(stack: Stack) -> None:
    gpu = replace(stack.settings, training_image_uri=GPU_IMAGE)
    request = build_request(gpu, dataset=big_dataset(1), hyperparameters={}, instance_type=None, instance_count=1,
                            spot=False, max_runtime_s=60, max_wait_s=None, input_mode=None, volume_size_gb=None,
                            network_isolation=True)
    assert request.instance_type == "ml.g5.xlarge" == DEFAULT_GPU_INSTANCE


def test_the_instance_types_the_notebook_and_the_readme_name_are_the_launchers_defaults() -> None:
    """Prose cannot import DEFAULT_CPU_INSTANCE and DEFAULT_GPU_INSTANCE (launcher/jobs/request.py, their one
    definition): every instance type the notebook and the README name is one of them, or, in the README, the notebook
    instance's own default (infra/config.py)."""
    from infra.config import SETTINGS

    root = Path(__file__).resolve().parents[2]
    named = re.compile(r"\bml\.[a-z0-9-]+\.[a-z0-9]+")
    defaults = {DEFAULT_CPU_INSTANCE, DEFAULT_GPU_INSTANCE}
    assert set(named.findall((root / "notebooks" / "dicom_training.ipynb").read_text(encoding="utf-8"))) == defaults
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert set(named.findall(readme)) == defaults | {SETTINGS["notebookInstanceType"][0]}


def test_a_new_job_resumes_from_an_earlier_spot_jobs_checkpoints(stack: Stack, dataset: DatasetManifest,
                                                                 recording: Recording) -> None:
    earlier = start_training(stack.settings, dataset=dataset, spot=True)
    assert earlier.checkpoint_uri is not None
    recording.start()  # from here on
    start_training(stack.settings, dataset=dataset, hyperparameters={"epochs": 30}, resume_from=earlier)

    resume = channel(created(recording), job_contract.RESUME_CHANNEL)
    assert resume["DataSource"]["S3DataSource"]["S3Uri"] == earlier.checkpoint_uri
    assert resume["InputMode"] == "File"  # read whole before the job starts


def test_resume_from_is_checked_before_anything_starts(stack: Stack, dataset: DatasetManifest,
                                                       recording: Recording) -> None:
    on_demand = start_training(stack.settings, dataset=dataset)
    recording.start()  # from here on
    with pytest.raises(ValueError, match=f"job {on_demand.name} wrote no checkpoints"):
        start_training(stack.settings, dataset=dataset, resume_from=on_demand)
    with pytest.raises(ValueError, match=f"resume_from must be a job's checkpoint location under s3://{BUCKET}/"):
        start_training(stack.settings, dataset=dataset, resume_from="s3://elsewhere/checkpoints/x/")
    assert recording.calls("CreateTrainingJob") == []


def test_the_pseudonym_key_is_made_once_and_sent_as_a_file_channel(stack: Stack, dataset: DatasetManifest,
                                                                     recording: Recording) -> None:
    from launcher.jobs.launch import PSEUDONYM_KEY_OBJECT, ensure_pseudonym_key

    s3 = boto3.Session().client("s3")
    start_training(stack.settings, dataset=dataset)
    channels = {c["ChannelName"]: c for c in created(recording)["InputDataConfig"]}
    key_channel = channels[job_contract.PSEUDONYM_KEY_CHANNEL]
    assert key_channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/{PSEUDONYM_KEY_OBJECT}"
    assert key_channel["InputMode"] == "File"
    first = s3.get_object(Bucket=BUCKET, Key=PSEUDONYM_KEY_OBJECT)
    assert (first["ServerSideEncryption"], first["SSEKMSKeyId"]) == ("aws:kms", stack.settings.data_key_arn)
    key = first["Body"].read()
    assert len(key) == 32
    ensure_pseudonym_key(stack.settings)  # a second launcher keeps the key
    assert s3.get_object(Bucket=BUCKET, Key=PSEUDONYM_KEY_OBJECT)["Body"].read() == key
    request = json.dumps(created(recording))
    assert key.hex() not in request and "pseudonym_key" not in json.dumps(created(recording)["HyperParameters"])

"""Use a trained model: batch transform over an S3 prefix, or a real-time endpoint (created, invoked, deleted).

    model = create_model(settings, job.model_data_url)               # the training image serves it (`serve`)
    job = start_transform(settings, model, "s3://BUCKET/inference/scan-1/input/")
    described = wait_for_transform(settings, job)                      # JSON per file under .../output/
    with endpoint(settings, model) as name:                          # deleted when the block ends
        invoke_endpoint(settings, name, Path("image.dcm").read_bytes())
    delete_model(settings, model)

Everything runs in the stack's training image, whose `serve` command answers SageMaker's hosting contract with
training/inference.py's handlers (application/dicom or application/zip in, JSON out). The model runs with network
isolation (it fetches nothing), in the stack's subnets when it has them, with the stack's KMS key on volumes and
outputs. The execution role is the stack's training role, which the stack grants the model artifacts under jobs/
and the inference/ prefix (input read, output written) besides what it already has.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from launcher.settings import Settings

INFERENCE_PREFIX = "inference/"  # infra/constructs/storage.py: transform input and output
DICOM = "application/dicom"
ZIP = "application/zip"
DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"  # CPU image; the GPU image serves on ml.g5.xlarge
TERMINAL = ("Completed", "Failed", "Stopped")


def _name(settings: Settings, kind: str) -> str:
    # SageMaker names: at most 63 characters of [a-zA-Z0-9-]; unique per second, as the launcher's job names.
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{settings.stack_name[:40]}-{kind}-{stamp}"[:63]


def _sagemaker(settings: Settings) -> Any:
    return settings.boto_session().client("sagemaker", region_name=settings.region)


def _vpc_config(settings: Settings) -> dict[str, Any]:
    if not settings.subnets:
        return {}
    return {"VpcConfig": {"Subnets": list(settings.subnets), "SecurityGroupIds": list(settings.security_group_ids)}}


def create_model(
    settings: Settings, model_data_url: str, *, name: str | None = None, role_arn: str | None = None
) -> str:
    """CreateModel: the stack's image serving a training job's model.tar.gz.

    Args:
        settings: the stack's values.
        model_data_url: s3://.../model.tar.gz of a training job (its ModelArtifacts.S3ModelArtifacts).
        name: the model's name; default derived from the stack and the time.
        role_arn: the execution role; default the stack's training role (granted jobs/ and inference/).

    Returns:
        The model's name.
    """
    if not model_data_url.startswith("s3://") or not model_data_url.endswith(".tar.gz"):
        raise ValueError(f"model_data_url must be the s3://.../model.tar.gz of a training job; got {model_data_url!r}")
    name = name or _name(settings, "model")
    _sagemaker(settings).create_model(
        ModelName=name,
        PrimaryContainer={"Image": settings.training_image_uri, "ModelDataUrl": model_data_url, "Mode": "SingleModel"},
        ExecutionRoleArn=role_arn or settings.training_role_arn,
        EnableNetworkIsolation=True,
        **_vpc_config(settings),
    )
    return name


def inference_uri(settings: Settings, run: str, part: str) -> str:
    """s3://BUCKET/inference/RUN/PART/ (PART: input or output): where the roles may read and write."""
    return f"s3://{settings.bucket}/{INFERENCE_PREFIX}{run}/{part}/"


def start_transform(
    settings: Settings,
    model_name: str,
    input_uri: str,
    *,
    output_uri: str | None = None,
    content_type: str = DICOM,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    instance_count: int = 1,
    name: str | None = None,
) -> str:
    """CreateTransformJob: every object under `input_uri` is one request; its JSON lands in output_uri as NAME.out.

    Args:
        settings: the stack's values.
        model_name: from create_model.
        input_uri: an S3 prefix under the bucket's inference/ (the model role reads only there).
        output_uri: where results go; default the input's sibling .../output/.
        content_type: application/dicom (one file per object) or application/zip.
        instance_type: ml.* instance type.
        instance_count: instances sharing the objects.
        name: the job's name; default derived from the stack and the time.

    Returns:
        The transform job's name.
    """
    prefix = f"s3://{settings.bucket}/{INFERENCE_PREFIX}"
    if not input_uri.startswith(prefix):
        raise ValueError(f"input_uri must be under {prefix} (the only prefix the model role reads); got {input_uri}")
    if content_type not in (DICOM, ZIP):
        raise ValueError(f"content_type must be {DICOM} or {ZIP}; got {content_type!r}")
    name = name or _name(settings, "transform")
    if output_uri is None:
        output_uri = input_uri.rstrip("/").rsplit("/", 1)[0] + "/output/"
    if not output_uri.startswith(prefix):
        raise ValueError(f"output_uri must be under {prefix} (the only prefix the model role writes); got {output_uri}")
    _sagemaker(settings).create_transform_job(
        TransformJobName=name,
        ModelName=model_name,
        BatchStrategy="SingleRecord",  # one file (or zip) per request: DICOM cannot be split into records
        MaxPayloadInMB=100,  # training/serve.py MAX_BODY_BYTES
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": content_type,
            "SplitType": "None",
            "CompressionType": "None",
        },
        TransformOutput={"S3OutputPath": output_uri, "Accept": "application/json", "AssembleWith": "None",
                         "KmsKeyId": settings.data_key_arn},
        TransformResources={"InstanceType": instance_type, "InstanceCount": instance_count,
                            "VolumeKmsKeyId": settings.data_key_arn},
    )
    return name


def wait_for_transform(
    settings: Settings, name: str, *, poll_s: float = 30, timeout_s: float = 3 * 3600,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """DescribeTransformJob until Completed, Failed or Stopped; the last description.

    Raises:
        RuntimeError: the job failed (its FailureReason) or did not finish within timeout_s (it is stopped).
    """
    client = _sagemaker(settings)
    waited = 0.0
    while True:
        described: dict[str, Any] = client.describe_transform_job(TransformJobName=name)
        status = described["TransformJobStatus"]
        if status in TERMINAL:
            if status == "Failed":
                raise RuntimeError(f"transform job {name} failed: {described.get('FailureReason', 'no reason')}")
            return described
        if waited >= timeout_s:
            client.stop_transform_job(TransformJobName=name)
            raise RuntimeError(f"transform job {name} still {status} after {timeout_s:.0f} s: stopped it")
        sleep(poll_s)
        waited += poll_s


def create_endpoint(
    settings: Settings, model_name: str, *, instance_type: str = DEFAULT_INSTANCE_TYPE, name: str | None = None
) -> str:
    """CreateEndpointConfig (volume encrypted with the stack key) and CreateEndpoint of the same name.

    Returns:
        The endpoint's name (its config has the same name). Call delete_endpoint when done: it costs while up.
    """
    name = name or _name(settings, "endpoint")
    client = _sagemaker(settings)
    client.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": model_name, "InstanceType": instance_type,
                             "InitialInstanceCount": 1}],
        KmsKeyId=settings.data_key_arn,
    )
    client.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return name


def wait_for_endpoint(settings: Settings, name: str, *, poll_s: float = 30, max_attempts: int = 60) -> None:
    """Until the endpoint is InService (boto3's waiter).

    Raises:
        botocore.exceptions.WaiterError: it failed, or was not in service within poll_s * max_attempts.
    """
    _sagemaker(settings).get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": poll_s, "MaxAttempts": max_attempts}
    )


def invoke_endpoint(settings: Settings, name: str, body: bytes, *, content_type: str = DICOM) -> dict[str, Any]:
    """InvokeEndpoint with one DICOM file (or a zip): the model's JSON, {"predictions": [...]}."""
    runtime = settings.boto_session().client("sagemaker-runtime", region_name=settings.region)
    response = runtime.invoke_endpoint(EndpointName=name, Body=body, ContentType=content_type,
                                       Accept="application/json")
    result: dict[str, Any] = json.loads(response["Body"].read())
    return result


def delete_endpoint(settings: Settings, name: str) -> None:
    """DeleteEndpoint and DeleteEndpointConfig (same name, create_endpoint's); the model stays."""
    client = _sagemaker(settings)
    client.delete_endpoint(EndpointName=name)
    client.delete_endpoint_config(EndpointConfigName=name)


def delete_model(settings: Settings, name: str) -> None:
    """DeleteModel (the artifact in S3 stays)."""
    _sagemaker(settings).delete_model(ModelName=name)


@contextlib.contextmanager
def endpoint(
    settings: Settings, model_name: str, *, instance_type: str = DEFAULT_INSTANCE_TYPE, wait: bool = True,
    poll_s: float = 30,
) -> Iterator[str]:
    """A real-time endpoint for the block, deleted after it (also when the block raises)."""
    name = create_endpoint(settings, model_name, instance_type=instance_type)
    try:
        if wait:
            wait_for_endpoint(settings, name, poll_s=poll_s)
        yield name
    finally:
        delete_endpoint(settings, name)

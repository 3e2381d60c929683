"""A real-time endpoint of a trained model: created (after its encrypted log group), invoked, deleted.

    model = create_model(settings, job.model_uri)                     # launcher/inference.py
    with endpoint(settings, model) as name:                           # deleted when the block ends
        invoke_endpoint(settings, name, Path("image.dcm").read_bytes())
    clean_up_inference(settings, model=model)                         # and say what stays

The endpoint serves the model as batch transform does (launcher/inference.py: the stack's training image, the model
role, network isolation, the stack's key). With the local runner (Settings.runner "local", `make demo`) the same
requests go to the local emulator, and launcher/local/inference.py does the service's part on this machine:
create_endpoint returns once the endpoint's server answers, delete_endpoint stops that server, and invoke_endpoint
sends the body to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from launcher.inference import (
    DEFAULT_INSTANCE_TYPE,
    DICOM,
    INFERENCE_PREFIX,
    ZIP,
    delete_model,
    resource_name,
    runs_locally,
    sagemaker_client,
)
from launcher.settings import Settings

log = logging.getLogger(__name__)
ENDPOINT_LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"  # SageMaker logs each endpoint to this prefix + its name


def create_endpoint(
    settings: Settings, model_name: str, *, instance_type: str = DEFAULT_INSTANCE_TYPE, name: str | None = None
) -> str:
    """CreateEndpointConfig (volume encrypted with the stack key) and CreateEndpoint of the same name, after its log
    group: SageMaker logs an endpoint to /aws/sagemaker/Endpoints/NAME and would create that group unencrypted and
    kept forever, so the launcher creates it first, encrypted with the stack key, kept the stack's
    logRetentionDays (`endpoint_log_group`).

    Returns:
        The endpoint's name (its config has the same name). Call delete_endpoint when done: it costs while up.
        With the local runner, its training.serve process (a child of this one) answers by then.
    """
    name = name or resource_name(settings, "endpoint")
    endpoint_log_group(settings, name)
    client = sagemaker_client(settings)
    client.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": model_name, "InstanceType": instance_type,
                             "InitialInstanceCount": 1}],
        KmsKeyId=settings.data_key_arn,
    )
    client.create_endpoint(EndpointName=name, EndpointConfigName=name)
    if runs_locally(settings):
        from launcher.local.inference import start_endpoint

        try:
            start_endpoint(settings, name)
        except BaseException:
            delete_endpoint(settings, name)  # as a failed endpoint on SageMaker, it would need deleting
            raise
    return name


def endpoint_log_group(settings: Settings, endpoint: str) -> str:
    """Create the endpoint's log group, encrypted with the stack key and kept settings.log_retention_days, before
    SageMaker does (an existing group is given the retention; its encryption is left as it is).

    Returns:
        The group's name.
    """
    group = f"{ENDPOINT_LOG_GROUP_PREFIX}{endpoint}"
    logs = settings.boto_session().client("logs", region_name=settings.region)
    try:
        logs.create_log_group(logGroupName=group, kmsKeyId=settings.data_key_arn)
    except logs.exceptions.ResourceAlreadyExistsException:
        log.warning("the endpoint's log group exists already: its encryption stays as it is")
    logs.put_retention_policy(logGroupName=group, retentionInDays=settings.log_retention_days)
    return group


def wait_for_endpoint(settings: Settings, name: str, *, poll_s: float = 30, max_attempts: int = 60) -> None:
    """Until the endpoint is InService (boto3's waiter).

    Raises:
        botocore.exceptions.WaiterError: it failed, or was not in service within poll_s * max_attempts.
    """
    sagemaker_client(settings).get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": poll_s, "MaxAttempts": max_attempts}
    )


def request_of(path: str | os.PathLike[str]) -> dict[str, Any]:
    """invoke_endpoint's body and content_type for one request: a DICOM file as it is, a series folder zipped (3-D
    models; named by position, within the 6 MB payload: launcher/notebook_volumes.py zip_series)."""
    if Path(path).is_dir():
        from launcher.notebook_volumes import zip_series

        return {"body": zip_series(path), "content_type": ZIP}
    return {"body": Path(path).read_bytes(), "content_type": DICOM}


def invoke_endpoint(settings: Settings, name: str, body: bytes, *, content_type: str = DICOM) -> dict[str, Any]:
    """InvokeEndpoint with one DICOM file (or a zip): the model's JSON, {"predictions": [...]}."""
    if runs_locally(settings):
        from launcher.local.inference import invoke

        return invoke(name, body, content_type=content_type)
    runtime = settings.boto_session().client("sagemaker-runtime", region_name=settings.region)
    response = runtime.invoke_endpoint(EndpointName=name, Body=body, ContentType=content_type,
                                       Accept="application/json")
    result: dict[str, Any] = json.loads(response["Body"].read())
    return result


def delete_endpoint(settings: Settings, name: str) -> None:
    """DeleteEndpoint and DeleteEndpointConfig (same name, create_endpoint's); the model stays."""
    client = sagemaker_client(settings)
    try:
        client.delete_endpoint(EndpointName=name)
        client.delete_endpoint_config(EndpointConfigName=name)
    finally:
        if runs_locally(settings):
            from launcher.local.inference import stop_endpoint

            stop_endpoint(name)


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


def clean_up_inference(settings: Settings, *, model: str | None = None, endpoint: str | None = None) -> str:
    """Delete the endpoint and the model a notebook created (only those named), and say what stays.

    Args:
        settings: the stack's values.
        model: the model create_model made (None: none).
        endpoint: the endpoint create_endpoint made (None: none).

    Returns:
        What was deleted and what stays, one line each.
    """
    lines = []
    if endpoint is not None:
        if _deleted(delete_endpoint, settings, endpoint):
            lines.append(f"Deleted the endpoint {endpoint} and its configuration: it no longer bills.")
        else:
            lines.append(f"The endpoint {endpoint} was already deleted.")
    if model is not None:
        if _deleted(delete_model, settings, model):
            lines.append(f"Deleted the model {model} (SageMaker's record of image, role and model.tar.gz; the archive "
                         "stays in S3).")
        else:
            lines.append(f"The model {model} was already deleted.")
    lines.append(f"Kept: batch transform inputs and results under s3://{settings.bucket}/{INFERENCE_PREFIX} (a "
                 "finished transform job costs nothing more).")
    return "\n".join(lines)


def _deleted(delete: Callable[[Settings, str], None], settings: Settings, name: str) -> bool:
    """Run a delete; False when SageMaker could not find the resource (deleted before)."""
    try:
        delete(settings, name)
    except ClientError as exc:
        if "could not find" not in str(exc).lower():
            raise
        return False
    return True

"""The SageMaker endpoints and models the launcher created for a stack: found, and deleted, when it is torn down.

They are not part of the stack (launcher/inference.py and endpoints.py create them with the SageMaker API), and an
endpoint bills per hour until it is deleted: `python -m infra.teardown` (infra/teardown.py) lists them before it
destroys the stack, and deletes them first when asked. A model is the stack's when it runs as the stack's model role
(ModelRoleArn); an endpoint when its configuration serves one of those models or, its model deleted already, is
encrypted with the stack's key (DataKeyArn) and named as the launcher names endpoints (`<stack>-endpoint-<time>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import ClientError

from launcher.inference import name_pattern
from launcher.stack_values import OUTPUT_OF


@dataclass(frozen=True)
class Endpoint:
    """A SageMaker endpoint of the stack.

    Attributes:
        name: the endpoint's name.
        config: its endpoint configuration (the launcher gives it the endpoint's name).
        status: e.g. InService (billed per instance-hour until deleted, whatever it answers).
    """

    name: str
    config: str
    status: str


@dataclass(frozen=True)
class Inference:
    """The SageMaker endpoints and models the launcher created for the stack (not part of the stack itself).

    Attributes:
        endpoints: the endpoints, by name.
        models: the models (free by themselves; they run as the stack's model role, which the stack deletes).
    """

    endpoints: tuple[Endpoint, ...] = ()
    models: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.models)

    def describe(self) -> list[str]:
        """One line per endpoint and model."""
        return ([f"  endpoint {e.name} ({e.status}; billed per hour until deleted)" for e in self.endpoints]
                + [f"  model {m}" for m in self.models])

    def deletion_code(self) -> list[str]:
        """Python statements (boto3) that delete them by hand, one per endpoint (with its configuration) and model."""
        return ([f"s = boto3.client('sagemaker'); s.delete_endpoint(EndpointName='{e.name}'); "
                 f"s.delete_endpoint_config(EndpointConfigName='{e.config}')" for e in self.endpoints]
                + [f"boto3.client('sagemaker').delete_model(ModelName='{m}')" for m in self.models])


def find_inference(session: boto3.Session, name: str) -> Inference:
    """The SageMaker endpoints and models the launcher created for the stack; read before it is destroyed.

    Args:
        session: credentials and region of the stack.
        name: the stack name.

    Returns:
        What was found: models run as the stack's model role (ModelRoleArn); endpoints serve one of them, or, their
        models gone, are encrypted with the stack's key (DataKeyArn) and named as the launcher names endpoints.
    """
    stack = session.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    role, key = outputs.get(OUTPUT_OF["model_role_arn"]), outputs.get(OUTPUT_OF["data_key_arn"])
    if not role:  # a stack from before inference: the launcher cannot have created any
        return Inference()
    sagemaker = session.client("sagemaker")
    since = {"CreationTimeAfter": stack["CreationTime"]} if stack.get("CreationTime") else {}
    models = []
    for page in sagemaker.get_paginator("list_models").paginate(**since):
        for summary in page["Models"]:
            described = _described(sagemaker.describe_model, ModelName=summary["ModelName"])
            if described is not None and described.get("ExecutionRoleArn") == role:
                models.append(summary["ModelName"])
    launcher_name = name_pattern(name, "endpoint")
    endpoints = []
    for page in sagemaker.get_paginator("list_endpoints").paginate(**since):
        for summary in page["Endpoints"]:
            endpoint = _described(sagemaker.describe_endpoint, EndpointName=summary["EndpointName"])
            if endpoint is None:
                continue
            config = _described(sagemaker.describe_endpoint_config,
                                EndpointConfigName=endpoint["EndpointConfigName"]) or {}
            served = {v.get("ModelName") for v in config.get("ProductionVariants", [])}
            own_model = bool(served & set(models))
            orphan = bool(key) and config.get("KmsKeyId") == key and bool(launcher_name.match(endpoint["EndpointName"]))
            if own_model or (orphan and not served & _existing(sagemaker, served)):
                endpoints.append(Endpoint(endpoint["EndpointName"], endpoint["EndpointConfigName"],
                                          str(endpoint.get("EndpointStatus", "unknown"))))
    return Inference(endpoints=tuple(sorted(endpoints, key=lambda e: e.name)), models=tuple(sorted(models)))


def delete_inference(session: boto3.Session, found: Inference) -> list[str]:
    """Delete the endpoints (with their configurations), then the models; what was deleted, one line each.

    Args:
        session: credentials and region of the stack.
        found: find_inference's answer.
    """
    sagemaker = session.client("sagemaker")
    lines = []
    for endpoint in found.endpoints:
        _deleted(sagemaker.delete_endpoint, EndpointName=endpoint.name)
        _deleted(sagemaker.delete_endpoint_config, EndpointConfigName=endpoint.config)
        lines.append(f"  endpoint {endpoint.name} and its configuration {endpoint.config}")
    for model in found.models:
        _deleted(sagemaker.delete_model, ModelName=model)
        lines.append(f"  model {model}")
    return lines


def _not_found(error: ClientError) -> bool:
    # SageMaker answers a missing endpoint, configuration or model with a ValidationException "Could not find ...".
    return "could not find" in str(error).lower() or error.response["Error"]["Code"] == "ResourceNotFound"


def _described(call: Any, **name: str) -> dict[str, Any] | None:
    """A Describe* answer; None when the resource is gone (deleted between listing and describing)."""
    try:
        answer: dict[str, Any] = call(**name)
    except ClientError as error:
        if _not_found(error):
            return None
        raise
    return answer


def _existing(sagemaker: Any, models: set[str | None]) -> set[str | None]:
    return {m for m in models if m and _described(sagemaker.describe_model, ModelName=m) is not None}


def _deleted(call: Any, **name: str) -> None:
    try:
        call(**name)
    except ClientError as error:
        if not _not_found(error):  # gone already: what was asked is done
            raise

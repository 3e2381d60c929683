"""The stack on the local AWS emulator, driven by the real CDK CLI: deploy creates it, teardown keeps the data.

Each variant is deployed once and torn down once (`python -m infra.teardown`, as `make destroy` runs it); what the
emulator holds after each step is recorded with boto3 over HTTP, and the tests assert on those records. Between the
two, launcher/inference.py and endpoints.py create SageMaker models and endpoints for the stack, next to look-alikes
that are not the stack's: the default variant's teardown lists them, the other's deletes them (-c deleteEndpoints=true).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from demo.emulator import (
    ACCOUNT,
    PUBLIC_IMAGE,
    REGION,
    bootstrap,
    client,
    context_args,
    deploy,
    emulator_context,
    emulator_env,
    run_process,
    start_emulator,
)
from infra.constructs.log_groups import SAGEMAKER_LOG_GROUPS
from launcher import endpoints, inference
from launcher.settings import load_settings

# moto warns, from its server thread, about what its CloudFormation skips (bucket policies, CDK metadata); the
# template tests check those resources.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(r"ignore:Tried to parse:UserWarning:moto\.")]

OUTPUTS = ("DataBucketName", "DataKeyArn", "TrainingRoleArn", "NotebookRoleArn", "TrainingImageUri", "Region")
DEFAULT_STACK = "MonaiDicomSageMaker"
DESTROY_DATA_STACK = "E2eDestroyData"


@dataclass(frozen=True)
class Resources:
    """The stack's buckets, key and roles, by physical id."""

    data_bucket: str
    log_bucket: str
    key_id: str
    roles: tuple[str, ...]  # the training and notebook roles
    notebook: str  # the notebook instance (moto names it itself; it ignores NotebookInstanceName)
    lifecycle_config: str  # its lifecycle configuration


@dataclass(frozen=True)
class Served:
    """SageMaker resources made between deploy and teardown.

    Attributes:
        models: made by launcher/inference.py for the stack.
        endpoints: made by it too: one serving a model above, one whose model was deleted before (an orphan).
        foreign: look-alikes the teardown must leave ("model:NAME", "endpoint:NAME"): a model named as the launcher
            names them, run by another role, and an endpoint so named, encrypted with the stack's key, serving it.
    """

    models: tuple[str, ...]
    endpoints: tuple[str, ...]
    foreign: tuple[str, ...]


@dataclass(frozen=True)
class Lifecycle:
    """One stack variant taken through deploy and teardown, with what the emulator held after each step."""

    stack: str
    outputs: dict[str, str]
    resources: Resources
    after_deploy: dict[str, bool]  # "bucket:NAME", "key:ID", "role:NAME" -> exists
    after_teardown: dict[str, bool]
    stack_after_teardown: bool
    teardown: subprocess.CompletedProcess[str]
    served: Served
    served_after_teardown: dict[str, bool]  # "model:NAME", "endpoint:NAME" -> exists
    log_groups: dict[str, dict[str, Any]]  # SageMaker's log groups after deploy: name -> kmsKeyId, retentionInDays
    log_groups_after_teardown: dict[str, dict[str, Any]]


def _log_groups(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    groups = client(env, "logs").describe_log_groups(logGroupNamePrefix="/aws/sagemaker/")["logGroups"]
    return {g["logGroupName"]: {k: g.get(k) for k in ("kmsKeyId", "retentionInDays")} for g in groups}


def _stack_exists(env: dict[str, str], stack: str) -> bool:
    try:
        client(env, "cloudformation").describe_stacks(StackName=stack)
    except ClientError as error:
        if "does not exist" in str(error):
            return False
        raise
    return True


def _exists(env: dict[str, str], resources: Resources) -> dict[str, bool]:
    """Ask the emulator which of the resources exist."""
    s3, iam = client(env, "s3"), client(env, "iam")
    found: dict[str, bool] = {}
    for bucket in (resources.data_bucket, resources.log_bucket):
        try:
            s3.head_bucket(Bucket=bucket)
            found[f"bucket:{bucket}"] = True
        except ClientError as error:
            assert error.response["Error"]["Code"] == "404", error
            found[f"bucket:{bucket}"] = False
    # ListKeys, not DescribeKey: moto 5.2.5 answers DescribeKey with a 500 for keys its CloudFormation created (it
    # stores their KeyPolicy as a dict and json.loads it). It removes a deleted key at once (AWS lists the key as
    # PendingDeletion for 7-30 days), so "absent from ListKeys" is moto's form of "deleted".
    keys = {key["KeyId"] for key in client(env, "kms").list_keys()["Keys"]}
    found[f"key:{resources.key_id}"] = resources.key_id in keys
    for role in resources.roles:
        try:
            iam.get_role(RoleName=role)
            found[f"role:{role}"] = True
        except ClientError as error:
            assert error.response["Error"]["Code"] == "NoSuchEntity", error
            found[f"role:{role}"] = False
    sagemaker = client(env, "sagemaker")
    try:
        attached = sagemaker.describe_notebook_instance(NotebookInstanceName=resources.notebook)
        found[f"notebook:{resources.notebook}"] = attached["NotebookInstanceStatus"] == "InService"
    except ClientError as error:
        assert error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"), error
        found[f"notebook:{resources.notebook}"] = False
    try:
        sagemaker.describe_notebook_instance_lifecycle_config(
            NotebookInstanceLifecycleConfigName=resources.lifecycle_config)
        found[f"lifecycle:{resources.lifecycle_config}"] = True
    except ClientError as error:
        assert error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"), error
        found[f"lifecycle:{resources.lifecycle_config}"] = False
    return found


def _serve(env: dict[str, str], stack: str, outputs: dict[str, str]) -> Served:
    """Create models and endpoints for the stack with launcher/inference.py and endpoints.py, and look-alikes with
    boto3."""
    with pytest.MonkeyPatch.context() as patch:  # the launcher reaches AWS through this process's environment
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            patch.delenv(key)
        for key, value in env.items():
            if key.startswith("AWS_"):
                patch.setenv(key, value)
        settings = load_settings(stack, region=REGION)
        artifact = f"s3://{settings.bucket}/jobs/job-1/output/model.tar.gz"
        model = inference.create_model(settings, artifact)
        endpoint = endpoints.create_endpoint(settings, model)
        gone = inference.create_model(settings, artifact, name=f"{stack}-model-gone")
        orphan = endpoints.create_endpoint(settings, gone, name=f"{stack}-endpoint-20260101-000000")
        inference.delete_model(settings, gone)  # its endpoint still bills
    sagemaker = client(env, "sagemaker")
    foreign_model = f"{stack}-model-20260101-000001"
    sagemaker.create_model(ModelName=foreign_model, ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/SomeoneElse",
                           PrimaryContainer={"Image": PUBLIC_IMAGE, "ModelDataUrl": artifact})
    foreign_endpoint = f"{stack}-endpoint-20260101-000002"
    sagemaker.create_endpoint_config(EndpointConfigName=foreign_endpoint, KmsKeyId=outputs["DataKeyArn"],
                                     ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": foreign_model,
                                                          "InstanceType": "ml.m5.xlarge", "InitialInstanceCount": 1}])
    sagemaker.create_endpoint(EndpointName=foreign_endpoint, EndpointConfigName=foreign_endpoint)
    return Served(models=(model,), endpoints=(endpoint, orphan),
                  foreign=(f"model:{foreign_model}", f"endpoint:{foreign_endpoint}"))


def _served_exist(env: dict[str, str], served: Served) -> dict[str, bool]:
    sagemaker = client(env, "sagemaker")
    models = {m["ModelName"] for m in sagemaker.list_models()["Models"]}
    endpoints = {e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]}
    configs = {c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]}
    found = {f"model:{m}": m in models for m in served.models}
    found |= {f"endpoint:{e}": e in endpoints for e in served.endpoints}
    found |= {f"config:{e}": e in configs for e in served.endpoints}
    found |= {name: name.partition(":")[2] in (models | endpoints) for name in served.foreign}
    return found


def _resources(env: dict[str, str], stack: str, outputs: dict[str, str]) -> Resources:
    """Find the stack's buckets, key and roles from its resources and outputs."""
    summaries = client(env, "cloudformation").list_stack_resources(StackName=stack)["StackResourceSummaries"]
    by_type: dict[str, list[str]] = {}
    for summary in summaries:
        by_type.setdefault(summary.get("ResourceType", ""), []).append(summary.get("PhysicalResourceId", ""))
    buckets = by_type["AWS::S3::Bucket"]
    assert len(buckets) == 2, buckets
    assert outputs["DataBucketName"] in buckets
    (key_id,) = by_type["AWS::KMS::Key"]
    roles = tuple(outputs[name].rsplit("/", 1)[-1] for name in ("TrainingRoleArn", "NotebookRoleArn"))
    assert set(roles) <= set(by_type["AWS::IAM::Role"])
    (notebook,) = by_type["AWS::SageMaker::NotebookInstance"]
    (lifecycle_config,) = by_type["AWS::SageMaker::NotebookInstanceLifecycleConfig"]
    return Resources(data_bucket=outputs["DataBucketName"],
                     log_bucket=next(b for b in buckets if b != outputs["DataBucketName"]),
                     key_id=key_id, roles=roles, notebook=notebook.rsplit("/", 1)[-1],
                     lifecycle_config=lifecycle_config.rsplit("/", 1)[-1])


def _lifecycle(env: dict[str, str], context: dict[str, Any], *, teardown_context: dict[str, Any]) -> Lifecycle:
    """Deploy with the real CDK CLI, record, serve, tear down with `python -m infra.teardown`, record again."""
    stack = str(context.get("stackName", DEFAULT_STACK))
    deploy(env, context)
    described = client(env, "cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    resources = _resources(env, stack, outputs)
    after_deploy = _exists(env, resources)
    log_groups = _log_groups(env)
    served = _serve(env, stack, outputs)
    teardown = run_process([sys.executable, "-m", "infra.teardown", *context_args({**context, **teardown_context})],
                           env, timeout_s=300)
    return Lifecycle(stack=stack, outputs=outputs, resources=resources, after_deploy=after_deploy,
                     after_teardown=_exists(env, resources), stack_after_teardown=_stack_exists(env, stack),
                     teardown=teardown, served=served, served_after_teardown=_served_exist(env, served),
                     log_groups=log_groups, log_groups_after_teardown=_log_groups(env))


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    """A bootstrapped emulator for this module, and the environment that points the CLI and boto3 at it."""
    with start_emulator() as emulator:
        environment = emulator_env(emulator)
        bootstrap(environment)
        yield environment


@pytest.fixture(scope="module")
def default_stack(env: dict[str, str]) -> Lifecycle:
    """The default stack (data kept on destroy)."""
    return _lifecycle(env, emulator_context(), teardown_context={})


@pytest.fixture(scope="module")
def destroy_data_stack(env: dict[str, str]) -> Lifecycle:
    """A stack deployed with destroyData=true, under another name, in an account whose SageMaker log groups are new
    again (the default stack's stay, encrypted with its kept key; associating another key with them is AssociateKmsKey,
    which moto lacks: tests/infra/test_log_groups_handler.py checks that path)."""
    logs = client(env, "logs")
    for group in SAGEMAKER_LOG_GROUPS:
        try:
            logs.delete_log_group(logGroupName=group)
        except logs.exceptions.ResourceNotFoundException:
            pass  # the default stack has not run in this session
    return _lifecycle(env, emulator_context(stackName=DESTROY_DATA_STACK, destroyData=True),
                      teardown_context={"deleteEndpoints": True})


def _all(found: dict[str, bool], prefix: str) -> list[bool]:
    return [exists for name, exists in found.items() if name.startswith(prefix)]


def test_deploy_creates_both_buckets_the_key_and_both_roles(default_stack: Lifecycle) -> None:
    assert default_stack.after_deploy == dict.fromkeys(default_stack.after_deploy, True)
    assert len(_all(default_stack.after_deploy, "bucket:")) == 2
    assert len(_all(default_stack.after_deploy, "role:")) == 2
    assert len(_all(default_stack.after_deploy, "key:")) == 1


def test_deploy_creates_the_notebook_and_its_lifecycle_config(default_stack: Lifecycle) -> None:
    assert _all(default_stack.after_deploy, "notebook:") == [True]
    assert _all(default_stack.after_deploy, "lifecycle:") == [True]


def test_deploy_encrypts_sagemaker_s_log_groups_with_the_stack_key_and_sets_their_retention(
        default_stack: Lifecycle) -> None:
    """The stack's custom resource ran its handler (infra/handlers/log_groups.py) against the emulator's API: the
    groups SageMaker writes jobs, transforms and the notebook to exist, encrypted with the stack key, kept 365 days
    (logRetentionDays' default), and they stay after teardown (other workloads of the account write there too)."""
    expected = {"kmsKeyId": default_stack.outputs["DataKeyArn"], "retentionInDays": 365}
    assert default_stack.log_groups == {name: expected for name in SAGEMAKER_LOG_GROUPS}
    after = default_stack.log_groups_after_teardown
    assert {name: after.get(name) for name in SAGEMAKER_LOG_GROUPS} == default_stack.log_groups
    # and the endpoints the launcher made in between logged to groups it made, encrypted and retained alike
    endpoints = {name: v for name, v in after.items() if name.startswith("/aws/sagemaker/Endpoints/")}
    assert endpoints and all(v == expected for v in endpoints.values()), endpoints


def test_deploy_declares_the_outputs(default_stack: Lifecycle) -> None:
    outputs, resources = default_stack.outputs, default_stack.resources
    assert set(OUTPUTS) <= set(outputs)
    assert outputs["DataKeyArn"] == f"arn:aws:kms:{REGION}:123456789012:key/{resources.key_id}"
    assert outputs["TrainingRoleArn"] != outputs["NotebookRoleArn"]
    assert all(outputs[name].startswith("arn:aws:iam::123456789012:role/") for name in ("TrainingRoleArn",
                                                                                       "NotebookRoleArn"))
    assert outputs["TrainingImageUri"] == PUBLIC_IMAGE
    assert outputs["Region"] == REGION


def test_teardown_removes_the_stack_and_roles_and_keeps_buckets_and_key(default_stack: Lifecycle) -> None:
    assert default_stack.teardown.returncode == 0, default_stack.teardown.stderr[-3000:]
    assert not default_stack.stack_after_teardown
    after = default_stack.after_teardown
    assert _all(after, "role:") == [False, False]
    assert _all(after, "notebook:") == [False]
    assert _all(after, "lifecycle:") == [False]
    assert _all(after, "bucket:") == [True, True]
    assert _all(after, "key:") == [True]


def test_teardown_report_names_what_was_kept_and_how_to_reuse_it(default_stack: Lifecycle) -> None:
    resources, report = default_stack.resources, default_stack.teardown.stdout
    key_arn = default_stack.outputs["DataKeyArn"]
    assert "Kept (not deleted):" in report
    assert f"S3 bucket {resources.data_bucket} (data)" in report
    assert f"S3 bucket {resources.log_bucket} (access logs)" in report
    assert f"KMS key {key_arn}" in report
    assert f'make deploy CDK_ARGS="-c dataBucketName={resources.data_bucket} -c dataKeyArn={key_arn}"' in report


def test_destroy_data_deletes_buckets_and_key_too(destroy_data_stack: Lifecycle) -> None:
    lifecycle = destroy_data_stack
    assert lifecycle.after_deploy == dict.fromkeys(lifecycle.after_deploy, True)
    assert lifecycle.teardown.returncode == 0, lifecycle.teardown.stderr[-3000:]
    assert not lifecycle.stack_after_teardown
    assert lifecycle.after_teardown == dict.fromkeys(lifecycle.after_teardown, False)
    assert "Nothing was kept" in lifecycle.teardown.stdout
    assert "Kept (not deleted)" not in lifecycle.teardown.stdout


def test_teardown_lists_the_stacks_endpoints_and_models_and_keeps_them_unless_asked(default_stack: Lifecycle) -> None:
    served, report = default_stack.served, default_stack.teardown.stdout
    assert default_stack.teardown.returncode == 0, default_stack.teardown.stderr[-3000:]
    assert default_stack.served_after_teardown == dict.fromkeys(default_stack.served_after_teardown, True)
    listed = report.split("SageMaker endpoints and models of stack", 1)[1].split("Not deleting them", 1)[0]
    assert sorted(line.split()[1] for line in listed.splitlines()[1:] if line.strip()) == sorted(
        [*served.endpoints, *served.models])
    assert all(name.partition(":")[2] not in report for name in served.foreign)
    assert "pass -c deleteEndpoints=true" in report and "Not deleted (no -c deleteEndpoints=true)" in report
    for endpoint in served.endpoints:
        assert f"s.delete_endpoint(EndpointName='{endpoint}')" in report  # the commands that delete them by hand
    assert f"delete_model(ModelName='{served.models[0]}')" in report


def test_teardown_with_delete_endpoints_deletes_only_the_stacks_endpoints_and_models(
        destroy_data_stack: Lifecycle) -> None:
    lifecycle = destroy_data_stack
    served, after, report = lifecycle.served, lifecycle.served_after_teardown, lifecycle.teardown.stdout
    assert lifecycle.teardown.returncode == 0, lifecycle.teardown.stderr[-3000:]
    assert {name: exists for name, exists in after.items() if name not in served.foreign} == dict.fromkeys(
        (name for name in after if name not in served.foreign), False)
    assert [after[name] for name in served.foreign] == [True, True]  # another owner's look-alikes stay
    deleted = report.split("Deleted (deleteEndpoints=true):", 1)[1]
    for endpoint in served.endpoints:
        assert f"endpoint {endpoint} and its configuration {endpoint}" in deleted
    assert f"model {served.models[0]}" in deleted
    assert "Not deleted (no -c deleteEndpoints=true)" not in report


@pytest.mark.parametrize(("value", "asked"), [("true", True), ("false", False), (None, False), ("yes", None)])
def test_delete_endpoints_takes_true_or_false(value: str | None, asked: bool | None) -> None:
    from infra.teardown import TeardownError, delete_endpoints_asked, stack_name

    context = {"stackName": "Any"} | ({} if value is None else {"deleteEndpoints": value})
    assert stack_name(context) == "Any"  # a setting of the teardown, which the stack's own settings do not reject
    if asked is None:
        with pytest.raises(TeardownError, match=r"-c deleteEndpoints='yes': give true .* or false"):
            delete_endpoints_asked(context)
    else:
        assert delete_endpoints_asked(context) is asked

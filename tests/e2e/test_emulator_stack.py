"""The stack on the local AWS emulator, driven by the real CDK CLI: deploy creates it, teardown keeps the data.

Each variant is deployed once and torn down once (`python -m infra.teardown`, as `make destroy` runs it); what the
emulator holds after each step is recorded with boto3 over HTTP, and the tests assert on those records.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from demo.emulator import (
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
class Lifecycle:
    """One stack variant taken through deploy and teardown, with what the emulator held after each step."""

    stack: str
    outputs: dict[str, str]
    resources: Resources
    after_deploy: dict[str, bool]  # "bucket:NAME", "key:ID", "role:NAME" -> exists
    after_teardown: dict[str, bool]
    stack_after_teardown: bool
    teardown: subprocess.CompletedProcess[str]


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


def _lifecycle(env: dict[str, str], context: dict[str, Any]) -> Lifecycle:
    """Deploy with the real CDK CLI, record, tear down with `python -m infra.teardown`, record again."""
    stack = str(context.get("stackName", DEFAULT_STACK))
    deploy(env, context)
    described = client(env, "cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    resources = _resources(env, stack, outputs)
    after_deploy = _exists(env, resources)
    teardown = run_process([sys.executable, "-m", "infra.teardown", *context_args(context)], env, timeout_s=300)
    return Lifecycle(stack=stack, outputs=outputs, resources=resources, after_deploy=after_deploy,
                     after_teardown=_exists(env, resources), stack_after_teardown=_stack_exists(env, stack),
                     teardown=teardown)


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
    return _lifecycle(env, emulator_context())


@pytest.fixture(scope="module")
def destroy_data_stack(env: dict[str, str]) -> Lifecycle:
    """A stack deployed with destroyData=true, under another name."""
    return _lifecycle(env, emulator_context(stackName=DESTROY_DATA_STACK, destroyData=True))


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

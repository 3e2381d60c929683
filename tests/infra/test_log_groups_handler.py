"""The custom resource that encrypts and retains SageMaker's log groups (infra/handlers/log_groups.py; issue 18 item 2).

Creating groups, re-running on groups already encrypted with the key, and refusing a group outside /aws/sagemaker/
run against the emulator's CloudWatch Logs API (moto's server). moto 5.2.5 does not implement AssociateKmsKey and
DisassociateKmsKey: for the two paths that call them (a group that exists without the key; the key released on
delete), botocore's Stubber checks each request against the service's API model and the order of the calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from demo.emulator import REGION, client, emulator_env, start_emulator
from infra.constructs.log_groups import SAGEMAKER_LOG_GROUPS
from infra.handlers.log_groups import answer

KEY = f"arn:aws:kms:{REGION}:123456789012:key/11111111-2222-3333-4444-555555555555"
OTHER_KEY = f"arn:aws:kms:{REGION}:123456789012:key/99999999-8888-7777-6666-555555555555"


def _event(request: str, *, groups: tuple[str, ...] = SAGEMAKER_LOG_GROUPS, release: bool = False) -> dict[str, Any]:
    return {"RequestType": request, "StackId": "stack", "RequestId": "1", "LogicalResourceId": "LogGroups",
            "ResourceProperties": {"LogGroups": list(groups), "KmsKeyArn": KEY, "RetentionInDays": "365",
                                   "ReleaseKeyOnDelete": "true" if release else "false"}}


@pytest.fixture(scope="module")
def logs() -> Iterator[Any]:
    with start_emulator() as emulator:
        yield client(emulator_env(emulator), "logs")


def _state(logs: Any) -> dict[str, tuple[str | None, int | None]]:
    found = logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/")["logGroups"]
    return {g["logGroupName"]: (g.get("kmsKeyId"), g.get("retentionInDays")) for g in found}


def test_create_makes_the_groups_encrypted_and_retained_and_update_finds_them_done(logs) -> None:
    body = answer(_event("Create"), logs)
    assert body["Status"] == "SUCCESS", body
    assert _state(logs) == {group: (KEY, 365) for group in SAGEMAKER_LOG_GROUPS}
    body = answer(_event("Update"), logs)  # the groups exist, encrypted with the key: no association needed
    assert body["Status"] == "SUCCESS", body
    assert _state(logs) == {group: (KEY, 365) for group in SAGEMAKER_LOG_GROUPS}


def test_a_group_outside_sagemaker_s_is_refused_and_fails_the_stack_operation(logs) -> None:
    body = answer(_event("Create", groups=("/aws/lambda/someone-else",)), logs)
    assert body["Status"] == "FAILED" and "/aws/lambda/someone-else" in body["Reason"]
    assert not logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]


def test_delete_without_destroy_data_leaves_the_groups_alone(logs) -> None:
    before = _state(logs)
    assert answer(_event("Delete"), logs)["Status"] == "SUCCESS"
    assert _state(logs) == before


def _stubbed() -> tuple[Any, Stubber]:
    logs = boto3.client("logs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    return logs, Stubber(logs)


def test_an_existing_group_without_the_key_is_associated_with_it() -> None:
    logs, stub = _stubbed()
    group = "/aws/sagemaker/TrainingJobs"
    stub.add_client_error("create_log_group", "ResourceAlreadyExistsException",
                          expected_params={"logGroupName": group, "kmsKeyId": KEY})
    stub.add_response("describe_log_groups", {"logGroups": [{"logGroupName": group}]},  # unencrypted, made earlier
                      {"logGroupNamePrefix": group})
    stub.add_response("associate_kms_key", {}, {"logGroupName": group, "kmsKeyId": KEY})
    stub.add_response("put_retention_policy", {}, {"logGroupName": group, "retentionInDays": 365})
    with stub:
        body = answer(_event("Create", groups=(group,)), logs)
    assert body["Status"] == "SUCCESS", body
    stub.assert_no_pending_responses()


def test_with_destroy_data_delete_releases_only_the_groups_still_on_the_stack_key() -> None:
    logs, stub = _stubbed()
    ours, theirs = "/aws/sagemaker/TrainingJobs", "/aws/sagemaker/TransformJobs"  # theirs: another stack took it
    stub.add_response("describe_log_groups", {"logGroups": [{"logGroupName": ours, "kmsKeyId": KEY}]},
                      {"logGroupNamePrefix": ours})
    stub.add_response("disassociate_kms_key", {}, {"logGroupName": ours})
    stub.add_response("describe_log_groups", {"logGroups": [{"logGroupName": theirs, "kmsKeyId": OTHER_KEY}]},
                      {"logGroupNamePrefix": theirs})
    with stub:
        body = answer(_event("Delete", groups=(ours, theirs), release=True), logs)
    assert body["Status"] == "SUCCESS", body
    stub.assert_no_pending_responses()


def test_the_emulator_runs_the_handler_without_starting_a_jsii_process() -> None:
    """`make demo` checks that it leaves no process behind; importing aws_cdk would start jsii's Node runtime."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import sys, demo.emulator; print(sorted(m for m in sys.modules "
                           "if m.split('.')[0] in ('aws_cdk', 'jsii')))"], capture_output=True, text=True, timeout=120,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]", done.stdout

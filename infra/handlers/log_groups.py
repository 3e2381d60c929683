"""Custom resource handler: encrypt SageMaker's account-wide log groups with the stack's key and give them a retention.

SageMaker writes every training job, transform job and notebook instance of the account and region into fixed log
groups (/aws/sagemaker/TrainingJobs, ...), which it creates unencrypted and kept forever when they do not exist yet.
They may well exist before the stack (any earlier SageMaker use), so CloudFormation cannot own them: on Create and
Update this handler creates each missing group encrypted, associates the key with every existing group not encrypted
with it yet, and sets the retention on all. On Delete the groups stay (they hold other workloads' logs too, and an
audit trail); when the key goes with the stack (destroyData), the groups still encrypted with it are dissociated
from it first, or SageMaker could write no more logs to them once the key is deleted.

It runs as the stack's Lambda function (infra/constructs/log_groups.py; the asset is this folder) and, on the local
emulator, in process (demo/emulator.py), against the same API. Standard library and boto3 only.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

GROUP_PREFIX = "/aws/sagemaker/"  # the only groups this handler touches, whatever the request says
RESOURCE_TYPE = "Custom::SageMakerLogGroups"  # the custom resource's type (demo/emulator.py runs it in process)


def apply(logs: Any, groups: list[str], key_arn: str, retention_days: int) -> list[str]:
    """Create the missing groups (encrypted), then associate the key and set the retention on every one.

    Args:
        logs: a boto3 CloudWatch Logs client.
        groups: log group names, each under /aws/sagemaker/.
        key_arn: the KMS key ARN; its policy must let CloudWatch Logs use it for this account's groups.
        retention_days: one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ..., 3653).

    Returns:
        One line per group: created, or existing (encrypted and retained now).
    """
    done = []
    for group in _checked(groups):
        try:
            logs.create_log_group(logGroupName=group, kmsKeyId=key_arn)  # encrypted from its first event
            state = "created"
        except logs.exceptions.ResourceAlreadyExistsException:
            if _key_of(logs, group) != key_arn:
                logs.associate_kms_key(logGroupName=group, kmsKeyId=key_arn)  # new events; older ones stay as were
            state = "existing"
        logs.put_retention_policy(logGroupName=group, retentionInDays=retention_days)
        done.append(f"{group}: {state}, encrypted, kept {retention_days} days")
    return done


def release(logs: Any, groups: list[str], key_arn: str) -> list[str]:
    """Dissociate the key from the groups still encrypted with it (before the key is deleted); others stay as they are.

    Returns:
        One line per group dissociated.
    """
    done = []
    for group in _checked(groups):
        if _key_of(logs, group) == key_arn:
            logs.disassociate_kms_key(logGroupName=group)
            done.append(f"{group}: no longer encrypted with the stack key (new events)")
    return done


def _checked(groups: list[str]) -> list[str]:
    for group in groups:
        if not group.startswith(GROUP_PREFIX):
            raise ValueError(f"log group {group!r} is not under {GROUP_PREFIX}: this handler changes no other group")
    return groups


def _key_of(logs: Any, group: str) -> str | None:
    """The key a group is encrypted with (None: not encrypted, or no such group)."""
    for found in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        if found["logGroupName"] == group:
            return found.get("kmsKeyId")
    return None


def answer(event: dict[str, Any], logs: Any) -> dict[str, Any]:
    """The custom resource's response to a CloudFormation event (Create, Update, Delete)."""
    properties = event.get("ResourceProperties", {})
    body = {"StackId": event["StackId"], "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "PhysicalResourceId": event.get("PhysicalResourceId") or "sagemaker-log-groups",
            "Status": "SUCCESS", "Data": {}}
    groups, key_arn = list(properties.get("LogGroups", [])), str(properties.get("KmsKeyArn", ""))
    try:
        if event["RequestType"] in ("Create", "Update"):
            print("\n".join(apply(logs, groups, key_arn, int(properties["RetentionInDays"]))))
        elif event["RequestType"] == "Delete" and str(properties.get("ReleaseKeyOnDelete")).lower() == "true":
            print("\n".join(release(logs, groups, key_arn)))
    except Exception as e:  # noqa: BLE001 - any failure fails the stack operation, with the reason
        body.update(Status="FAILED", Reason=f"{type(e).__name__}: {e}"[:1000])
    return body


def handler(event: dict[str, Any], context: Any) -> None:  # pragma: no cover - the Lambda entry point
    import boto3

    body = answer(event, boto3.client("logs"))
    data = json.dumps(body).encode()
    request = urllib.request.Request(event["ResponseURL"], data=data, method="PUT",
                                     headers={"Content-Type": "", "Content-Length": str(len(data))})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - CloudFormation's presigned URL
        response.read()

"""Destroy the stack and print what it kept: `python -m infra.teardown [-c key=value ...] [--profile NAME]`.

`make destroy CDK_ARGS="..."` runs this. Before destroying, it reads the deployed template (DeletionPolicy Retain) and
the stack's resources, so that it knows what `cdk destroy` will leave behind; after `npx cdk destroy --force` (with
the same `-c` settings) it checks which of those still exist and says how to reuse them or delete them by hand.

The SageMaker endpoints and models that the launcher created for the stack are not part of the stack, and an
endpoint bills per hour until it is deleted: they are listed before the stack is destroyed (infra/stack_endpoints.py
finds them), and deleted first with `-c deleteEndpoints=true` (a setting of this command, not of the stack);
otherwise the report ends with the commands that delete them. The stack's name comes from the `-c` settings, else
cdk.json, else its default, as the CDK app reads it (infra/config.py context_value). boto3 honours AWS_ENDPOINT_URL,
so this works against the local emulator as well as against AWS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infra.config import SETTINGS, context_value
from infra.stack_endpoints import Inference, delete_inference, find_inference
from launcher.stack_values import OUTPUT_OF

ROOT = Path(__file__).resolve().parents[1]
RETAINING_POLICIES = ("Retain", "RetainExceptOnCreate")
KIND = {"AWS::S3::Bucket": "S3 bucket", "AWS::KMS::Key": "KMS key", "AWS::Logs::LogGroup": "CloudWatch log group"}
DELETE_ENDPOINTS = "deleteEndpoints"  # this command's own setting, not the stack's: never passed to the CDK app


class TeardownError(RuntimeError):
    """Teardown cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Holder:
    """A resource of the stack that holds data (bucket, key, log group), read before the stack is destroyed.

    Attributes:
        resource_type: its CloudFormation type, e.g. AWS::S3::Bucket.
        physical_id: bucket name, key id or log group name.
        purpose: what it holds, e.g. "data" or "access logs".
        retained: its DeletionPolicy keeps it when the stack is deleted.
    """

    resource_type: str
    physical_id: str
    purpose: str
    retained: bool

    def describe(self, key_arns: Mapping[str, str]) -> str:
        """A line such as "S3 bucket NAME (data)"; keys are named by ARN (what dataKeyArn takes)."""
        name = key_arns.get(self.physical_id, self.physical_id)
        return f"{KIND.get(self.resource_type, self.resource_type)} {name} ({self.purpose})"


def parse_args(argv: list[str]) -> tuple[dict[str, str], str | None]:
    """Read `-c key=value` pairs (as `cdk` takes them) and an optional `--profile`.

    Args:
        argv: the command line without the program name.

    Returns:
        The context pairs (deleteEndpoints among them, see delete_endpoints_asked) and the profile (None: the
        default credentials).
    """
    parser = argparse.ArgumentParser(prog="python -m infra.teardown", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE",
                        help="CDK context, as given to `make deploy` (e.g. -c stackName=MyStack)")
    parser.add_argument("--profile", help="AWS profile (as for the CDK CLI)")
    args = parser.parse_args(argv)
    context: dict[str, str] = {}
    for pair in args.context:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"-c {pair!r} is not KEY=VALUE")
        context[key] = value
    return context, args.profile


def delete_endpoints_asked(context: Mapping[str, str]) -> bool:
    """Whether `-c deleteEndpoints=true` was given (false when absent).

    Args:
        context: the `-c` pairs.

    Raises:
        TeardownError: a value other than true or false.
    """
    value = context.get(DELETE_ENDPOINTS, "false").strip().lower()
    if value not in ("true", "false"):
        raise TeardownError(f"-c {DELETE_ENDPOINTS}={context[DELETE_ENDPOINTS]!r}: give true (delete the stack's "
                            "SageMaker endpoints and models before destroying it) or false (the default: list them)")
    return value == "true"


def stack_name(context: dict[str, str]) -> str:
    """The stack name the CDK app uses for this context: `-c stackName`, else cdk.json, else the default.

    Args:
        context: the `-c` pairs.
    """
    unknown = sorted(key for key in context
                     if key not in SETTINGS and key != DELETE_ENDPOINTS and not key.startswith("@"))
    if unknown:
        raise TeardownError(f"unknown context settings {unknown}; known: {sorted([*SETTINGS, DELETE_ENDPOINTS])}")
    return str(context_value("stackName", context)).strip()


def _purpose(template: dict[str, Any], logical_id: str, physical_id: str, outputs: dict[str, str]) -> str:
    """What a resource holds, from the stack's outputs and what refers to it in the template."""
    by_output = {OUTPUT_OF["bucket"]: "data", OUTPUT_OF["data_key_arn"]: "encrypts the data"}
    for output, purpose in by_output.items():
        value = outputs.get(output, "")
        if value == physical_id or value.endswith(f"/{physical_id}"):
            return purpose
    ref = {"Ref": logical_id}
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::S3::Bucket" and props.get("LoggingConfiguration", {}).get(
                "DestinationBucketName") == ref:
            return "access logs"
        if resource["Type"] == "AWS::EC2::FlowLog" and props.get("LogGroupName") == ref:
            return "VPC flow logs"
    return logical_id


def find_holders(session: boto3.Session, name: str) -> tuple[list[Holder], list[str]]:
    """The stack's buckets, keys and log groups, and whether its deletion policies keep them; read before destroying.

    Args:
        session: credentials and region of the stack.
        name: the stack name.

    Returns:
        The resources holding data, and the data bucket and key the stack uses without owning them (deployed with
        dataBucketName / dataKeyArn), which it does not touch.

    Raises:
        TeardownError: the stack does not exist.
    """
    cfn = session.client("cloudformation")
    try:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in str(error):
            raise TeardownError(f"stack {name} does not exist in region {session.region_name}: nothing to destroy "
                                "(give the stack's name with -c stackName=NAME, its region with AWS_REGION)") from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    body = cfn.get_template(StackName=name)["TemplateBody"]
    template: dict[str, Any] = json.loads(body) if isinstance(body, str) else body
    retained = {logical_id for logical_id, resource in template.get("Resources", {}).items()
                if resource.get("DeletionPolicy") in RETAINING_POLICIES}
    holders, owned = [], set()
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=name):
        for summary in page["StackResourceSummaries"]:
            logical_id, physical_id = summary.get("LogicalResourceId"), summary.get("PhysicalResourceId")
            owned.add(physical_id)
            if summary.get("ResourceType") in KIND and logical_id and physical_id:
                holders.append(Holder(summary["ResourceType"], physical_id,
                                      _purpose(template, logical_id, physical_id, outputs), logical_id in retained))
    bucket, key = outputs.get(OUTPUT_OF["bucket"]), outputs.get(OUTPUT_OF["data_key_arn"])
    untouched = [f"S3 bucket {bucket} (data)"] if bucket and bucket not in owned else []
    untouched += [f"KMS key {key}"] if key and key.rsplit("/", 1)[-1] not in owned else []
    return holders, untouched


def still_there(session: boto3.Session, holders: list[Holder]) -> tuple[list[Holder], dict[str, str]]:
    """Which of the resources exist now (a KMS key pending deletion counts as deleted).

    Args:
        session: credentials and region of the stack.
        holders: the stack's buckets, keys and log groups.

    Returns:
        The existing ones, and the ARNs of existing KMS keys by key id.
    """
    key_arns: dict[str, str] = {}
    if any(h.resource_type == "AWS::KMS::Key" for h in holders):
        # list_keys, not describe_key: moto's server fails DescribeKey on keys its CloudFormation created.
        for page in session.client("kms").get_paginator("list_keys").paginate():
            key_arns.update({key["KeyId"]: key["KeyArn"] for key in page["Keys"]})
    s3, logs = session.client("s3"), session.client("logs")
    existing = []
    for item in holders:
        if item.resource_type == "AWS::S3::Bucket":
            try:
                s3.head_bucket(Bucket=item.physical_id)
            except ClientError as error:
                if error.response["Error"]["Code"] in ("404", "NoSuchBucket"):
                    continue
                raise
        elif item.resource_type == "AWS::KMS::Key":
            # CloudFormation schedules the deletion of a key it deletes: AWS lists it for 7 to 30 days more.
            if item.physical_id not in key_arns or (not item.retained and _pending_deletion(session, item.physical_id)):
                continue
        elif item.resource_type == "AWS::Logs::LogGroup":
            groups = logs.describe_log_groups(logGroupNamePrefix=item.physical_id)["logGroups"]
            if not any(group["logGroupName"] == item.physical_id for group in groups):
                continue
        existing.append(item)
    return existing, key_arns


def _pending_deletion(session: boto3.Session, key_id: str) -> bool:
    try:
        state = session.client("kms").describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]
    except ClientError:  # moto's server fails DescribeKey on keys its CloudFormation created; it lists only live keys
        return False
    return bool(state == "PendingDeletion")


def report(name: str, region: str | None, holders: list[Holder], existing: list[Holder], untouched: list[str],
           key_arns: Mapping[str, str], context: Mapping[str, str], profile: str | None,
           inference: Inference) -> str:
    """The text printed after the stack is gone: what was kept, how to reuse it, how to delete it by hand.

    Args:
        name: the stack name.
        region: the stack's region.
        holders: the stack's buckets, keys and log groups, read before it was destroyed.
        existing: those of them that still exist.
        untouched: what the stack used without owning it (given with dataBucketName / dataKeyArn).
        key_arns: ARNs of the existing KMS keys by key id.
        context: the `-c` pairs the stack was destroyed with.
        profile: the AWS profile, if one was given.
        inference: the stack's SageMaker endpoints and models that were not deleted (no deleteEndpoints=true).
    """
    return "\n".join([_report(name, region, holders, existing, untouched, key_arns, context, profile),
                      *_inference_report(inference, profile)])


def _inference_report(inference: Inference, profile: str | None) -> list[str]:
    if not inference:
        return []
    return [f"Not deleted (no -c {DELETE_ENDPOINTS}=true): the stack's SageMaker endpoints and models above; an "
            "endpoint bills per hour until it is deleted. To delete them by hand:",
            *(_by_hand(code, profile) for code in inference.deletion_code())]


def _by_hand(code: str, profile: str | None) -> str:
    """A command line that runs `code` (Python, with boto3 imported) with the profile's credentials."""
    env = f"AWS_PROFILE={profile} " if profile else ""
    return f'  {env}.venv/bin/python -c "import boto3; {code}"'


def _report(name: str, region: str | None, holders: list[Holder], existing: list[Holder], untouched: list[str],
            key_arns: Mapping[str, str], context: Mapping[str, str], profile: str | None) -> str:
    # Buckets first, the data bucket leading; then keys and log groups.
    existing = sorted(existing, key=lambda h: (h.resource_type != "AWS::S3::Bucket", h.purpose != "data",
                                               h.resource_type))
    kept = [h for h in existing if h.retained]
    left = [h for h in existing if not h.retained]
    gone = [h for h in holders if h.retained and h not in existing]
    lines = [f"Stack {name} ({region}) is destroyed."]
    if untouched:
        lines.append("Not created by the stack, so untouched: " + ", ".join(untouched))
    if gone:
        lines.append("Retained by the stack but gone now: " + ", ".join(h.describe(key_arns) for h in gone))
    if kept:
        lines.append("Kept (not deleted):")
        lines += [f"  {h.describe(key_arns)}" for h in kept]
    if left:
        # On AWS a non-empty bucket fails the stack's deletion; moto's server skips it silently (and never runs
        # the auto-delete-objects function that would have emptied it).
        lines.append("Not deleted although the stack deletes them (not empty?):")
        lines += [f"  {h.describe(key_arns)}" for h in left]
    if not existing:
        if holders and not gone:
            lines.append("Nothing was kept: the stack was deployed with destroyData=true, so its buckets and key were "
                         "deleted with it (a deleted KMS key stays pending deletion for 7 to 30 days).")
        elif not holders:
            lines.append("Nothing was kept: the stack owned no bucket, key or log group.")
        return "\n".join(lines)
    data = next((h.physical_id for h in kept if h.resource_type == "AWS::S3::Bucket" and h.purpose == "data"), "")
    key = next((key_arns[h.physical_id] for h in kept if h.resource_type == "AWS::KMS::Key"), "")
    if data and key:
        args = [f"--profile {profile}"] if profile else []
        args += [f"-c stackName={context['stackName']}"] if "stackName" in context else []
        args += [f"-c dataBucketName={data}", f"-c dataKeyArn={key}"]
        lines += ["Reuse them (the data stays readable only with this key):",
                  f'  make deploy CDK_ARGS="{" ".join(args)}"']
    delete = {
        "AWS::S3::Bucket": "b = boto3.resource('s3').Bucket('{0}'); b.object_versions.delete(); b.delete()",
        "AWS::KMS::Key": "boto3.client('kms').schedule_key_deletion(KeyId='{0}', PendingWindowInDays=7)",
        "AWS::Logs::LogGroup": "boto3.client('logs').delete_log_group(logGroupName='{0}')",
    }
    lines.append("To delete them by hand (irreversible: the data, and every version of it, is lost):")
    for h in existing:
        lines.append(_by_hand(delete[h.resource_type].format(key_arns.get(h.physical_id, h.physical_id)), profile))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Destroy the stack named by the context and print what was kept.

    Args:
        argv: the command line without the program name; None reads sys.argv.

    Returns:
        The exit status.
    """
    context, profile = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        name = stack_name(context)
        session = boto3.Session(profile_name=profile)
        if not session.region_name:
            raise TeardownError("no AWS region is configured: set AWS_REGION (or a region in your profile)")
        holders, untouched = find_holders(session, name)
        delete = delete_endpoints_asked(context)
        inference = find_inference(session, name)
        if inference:
            print(f"SageMaker endpoints and models of stack {name} (created by the launcher, not by the stack):",
                  *inference.describe(), sep="\n", flush=True)
        else:
            print(f"Stack {name} has no SageMaker endpoint or model.", flush=True)
        if inference and delete:
            deleted = delete_inference(session, inference)
            print(f"Deleted ({DELETE_ENDPOINTS}=true):", *deleted, sep="\n", flush=True)
            inference = Inference()
        elif inference:
            print(f"Not deleting them (endpoints keep billing): pass -c {DELETE_ENDPOINTS}=true to delete them with "
                  "the stack; the report at the end says how to delete them by hand.", flush=True)
        command = ["npx", "cdk", "destroy", "--force", *(["--profile", profile] if profile else [])]
        if os.environ.get("MONAI_DICOM_CDK_OUTPUT"):  # the emulator's own cloud assembly folder (demo/emulator.py)
            command += ["--output", os.environ["MONAI_DICOM_CDK_OUTPUT"]]
        # `cdk destroy` deletes by stack name, but synthesizes the app first: the notebook's clone settings must not
        # stop it where this checkout has no usable origin (they are not used).
        synth_only = {"repoUrl": "https://destroy.invalid/unused.git", "repoRef": "unused"}
        stack_context = {key: value for key, value in context.items() if key != DELETE_ENDPOINTS}
        command += [arg for key, value in {**synth_only, **stack_context}.items() for arg in ("-c", f"{key}={value}")]
        print(f"Destroying stack {name} in {session.region_name}: {' '.join(command)}", flush=True)
        status = subprocess.run(command, cwd=ROOT, check=False).returncode
        if status != 0:
            raise TeardownError(f"`{' '.join(command)}` failed with exit status {status} (its output is above)")
        existing, key_arns = still_there(session, holders)
    except TeardownError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        print(f"error: AWS call failed: {error}", file=sys.stderr)
        return 1
    print(report(name, session.region_name, holders, existing, untouched, key_arns, stack_context, profile,
                 inference))
    return 0


if __name__ == "__main__":
    sys.exit(main())

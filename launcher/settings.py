"""The stack's values the notebook works with, read once into a frozen dataclass.

    settings = load_settings()                      # on the notebook instance: the lifecycle script's values file
    settings = load_settings("MonaiDicomSageMaker")  # elsewhere: the stack's CloudFormation outputs

On the notebook instance the lifecycle script writes VALUES_FILE on every start (infra/lifecycle/render.py says how).
Anywhere else (a laptop with credentials, CI) the same values come from the stack's outputs (infra/stack.py), by stack
name. Which values there are, their keys and their outputs: STACK_VALUES (launcher/stack_values.py). This is the
launcher's only configuration edge: the modules below take a Settings and never read files, outputs or the
environment themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from launcher.stack_values import OUTPUT_OF, STACK_VALUES

# Written by infra/lifecycle/on_start.sh (render.VALUES_FILE); duplicated because the launcher never imports infra/.
VALUES_FILE = Path("/home/ec2-user/SageMaker/.monai-dicom/stack.json")
DEFAULT_STACK_NAME = "MonaiDicomSageMaker"  # cdk.json's stackName default
# Which runner start_training uses when the notebook does not pass one: "sagemaker" (a real job), or a runner a later
# module registers (the local runner of `make demo`). Read here so that notebook cells stay the same everywhere.
RUNNER_VARIABLE = "MONAI_DICOM_RUNNER"
DEFAULT_RUNNER = "sagemaker"


class SettingsError(ValueError):
    """A stack value is missing or unusable; the message names it, where it was looked for, and what to do."""


@dataclass(frozen=True)
class Settings:
    """The deployed stack's resources, as the launcher uses them.

    Attributes:
        stack_name: the CloudFormation stack; job names and tags are derived from it.
        region: where the stack, its bucket and its jobs live.
        bucket: the data bucket (datasets/, code/, jobs/, checkpoints/).
        data_key_arn: the KMS key of the bucket; also encrypts job volumes, outputs and staged code.
        training_role_arn: the execution role of training jobs.
        training_image_uri: the training image (the SageMaker PyTorch container with MONAI and pydicom).
        notebook_role_arn: the notebook instance's role ("" when unknown).
        model_role_arn: the execution role of the trained model: transform jobs and endpoints ("" when unknown).
        subnets: private subnets for jobs; empty when the stack has no VPC.
        security_group_ids: the jobs' security group(s); empty when the stack has no VPC.
        image_variant: "cpu" or "gpu" when the stack says so; "" lets the launcher read it from the image tag.
        runner: which runner start_training uses by default (RUNNER_VARIABLE).
        repo_url, repo_ref, deployed_commit: what the notebook cloned, and the commit the stack was deployed from.
        source: where these values were read, for messages.
        log_retention_days: how long the log group of an endpoint the launcher creates keeps events (the stack's
            logRetentionDays).
    """

    stack_name: str
    region: str
    bucket: str
    data_key_arn: str
    training_role_arn: str
    training_image_uri: str
    notebook_role_arn: str = ""
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    image_variant: str = ""
    runner: str = DEFAULT_RUNNER
    repo_url: str = ""
    repo_ref: str = ""
    deployed_commit: str = ""
    source: str = ""
    model_role_arn: str = ""
    log_retention_days: int = 365

    def __post_init__(self) -> None:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise SettingsError(
                f"{self.source or 'settings'}: subnets {list(self.subnets)} and security_group_ids "
                f"{list(self.security_group_ids)} must both be given (a stack with a VPC) or both be empty"
            )
        if self.image_variant not in ("", "cpu", "gpu"):
            raise SettingsError(f"{self.source or 'settings'}: image variant {self.image_variant!r} is not cpu or gpu")

    def boto_session(self) -> boto3.Session:
        """A boto3 session in the stack's region (credentials from the environment or the instance's role).

        One per Settings: a session loads each service's API model once (the SageMaker SDK makes a dozen clients).
        """
        return self._session

    @cached_property
    def _session(self) -> boto3.Session:
        return boto3.Session(region_name=self.region)


def load_settings(
    stack_name: str | None = None,
    *,
    values_file: str | os.PathLike[str] | None = None,
    region: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the stack's values: from the notebook's values file, or from the stack's CloudFormation outputs.

    With no arguments, the values file is read when it exists (on the notebook instance), else the outputs of the
    stack named DEFAULT_STACK_NAME.

    Args:
        stack_name: read this stack's CloudFormation outputs (needs cloudformation:DescribeStacks).
        values_file: read this values file instead of VALUES_FILE.
        region: the stack's region for CloudFormation; default: the session's (AWS_REGION, the profile).
        environ: where RUNNER_VARIABLE is read; default os.environ.

    Raises:
        SettingsError: a value is missing or empty, the file is unreadable, or the stack does not exist; the message
            names the value and the file or stack it was looked for in.
    """
    env = os.environ if environ is None else environ
    runner = env.get(RUNNER_VARIABLE, "").strip() or DEFAULT_RUNNER
    if values_file is not None:
        return _from_values_file(Path(values_file), runner=runner)
    if stack_name is not None:
        return _from_stack_outputs(stack_name, region=region, runner=runner)
    if VALUES_FILE.is_file():
        return _from_values_file(VALUES_FILE, runner=runner)
    try:
        return _from_stack_outputs(DEFAULT_STACK_NAME, region=region, runner=runner)
    except SettingsError as error:
        raise SettingsError(f"{error} (there is no values file {VALUES_FILE} either: this is not the stack's notebook "
                            "instance)") from None


def _from_values_file(path: Path, *, runner: str) -> Settings:
    where = f"values file {path}"
    remedy = ("the notebook's lifecycle script writes it on every start: restart the notebook instance, or pass "
              "stack_name=... to read the stack's CloudFormation outputs instead")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{where} does not exist; {remedy}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{where} is not readable as JSON ({exc}); {remedy}") from None
    if not isinstance(document, dict):
        raise SettingsError(f"{where} must hold one JSON object of stack values; {remedy}")
    return _build(document.get, where=where, remedy=remedy, runner=runner, name_of=lambda key: key)


def _from_stack_outputs(stack_name: str, *, region: str | None, runner: str) -> Settings:
    session = boto3.Session(region_name=region) if region else boto3.Session()
    where = f"the outputs of CloudFormation stack {stack_name!r} in {session.region_name or '(no region set)'}"
    remedy = "deploy the stack (make deploy) or update it to this version of the repository"
    if not session.region_name:
        raise SettingsError(f"no AWS region is set to find CloudFormation stack {stack_name!r}: pass region=..., or "
                            "set AWS_REGION")
    try:
        stacks = session.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if "does not exist" in message:
            raise SettingsError(f"CloudFormation stack {stack_name!r} does not exist in {session.region_name}: "
                                "deploy it (make deploy), or pass the stack_name and region it was deployed "
                                "with") from None
        raise SettingsError(f"cannot read {where}: {message}") from None
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stacks[0].get("Outputs", [])}

    def get(key: str) -> Any:
        if key == "stack_name":
            return stacks[0].get("StackName", stack_name)
        return outputs.get(OUTPUT_OF[key]) if key in OUTPUT_OF else None

    return _build(get, where=where, remedy=remedy, runner=runner,
                  name_of=lambda key: f"output {OUTPUT_OF[key]}" if key in OUTPUT_OF else key)


def _build(get: Callable[[str], Any], *, where: str, remedy: str, runner: str,
           name_of: Callable[[str], str]) -> Settings:
    values: dict[str, Any] = {}
    for value in STACK_VALUES:
        found = get(value.key)
        if value.required:
            if not isinstance(found, str) or not found.strip():
                how = "is empty" if isinstance(found, str) else "is missing" if found is None else "is not a string"
                raise SettingsError(f"stack value {name_of(value.key)} ({value.key}) {how} in {where}; {remedy}")
            values[value.key] = found.strip()
        elif value.listed:
            values[value.key] = _as_list(found, name=name_of(value.key), where=where)
        elif found is not None:
            values[value.key] = str(found).strip()
        if value.default is not None and not values.get(value.key):  # left out, or empty: a stack from before it
            values[value.key] = value.default
    # The stack's output says "unknown" for an image given by URI (an output cannot be empty).
    variant = values.pop("training_image_variant", "").lower().replace("unknown", "")
    days = _days(values.pop("log_retention_days"), where)
    return Settings(**values, image_variant=variant, log_retention_days=days, runner=runner, source=where)


def _days(value: str, where: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 3653:
        raise SettingsError(f"stack value LogRetentionDays (log_retention_days) in {where} is {value!r}, not a number "
                            "of days from 1 to 3653; redeploy the stack (make deploy) to write it again")
    return int(value)


def _as_list(value: Any, *, name: str, where: str) -> tuple[str, ...]:
    """A list value: a JSON list (values file) or a comma-joined string (CloudFormation output)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise SettingsError(f"stack value {name} in {where} must be a list of IDs; got {value!r}")

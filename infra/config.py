"""Every setting of the CDK app, read once from CDK context into frozen dataclasses.

This is the only module that reads context, by one rule: a setting given with `-c key=value`, else cdk.json's context,
else its default in SETTINGS. The CDK CLI (and build_app, for tests) merges the first two into the app's context,
which InfraConfig.from_context reads; commands that run beside the app (`make destroy`) read a setting with
context_value. cdk.json repeats a few of SETTINGS' defaults, where users change them (a test holds them equal).
Values given on the command line arrive as strings, so booleans and numbers are parsed here, explicitly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.lifecycle.render import validate_repo_url

# Context key -> (default, meaning). The README's settings table is written from this dict (tests hold them equal).
SETTINGS: dict[str, tuple[Any, str]] = {
    "stackName": ("MonaiDicomSageMaker", "Name of the CloudFormation stack; resource names are derived from it."),
    "destroyData": (False, "true: a later `cdk destroy` also deletes the data bucket, its log bucket and the KMS key."),
    "dataBucketName": ("", "Use this existing bucket (e.g. one a previous deployment kept) instead of creating one."),
    "dataKeyArn": ("", "KMS key of that existing bucket (the key a previous deployment kept); encrypts everything."),
    "noncurrentVersionExpiryDays": (90, "Days after which overwritten or deleted object versions are expired."),
    "trainingImageUri": ("", "Use this training image and build nothing (CI-built images, the local emulator)."),
    "imageVariant": ("cpu", "Training image built by `cdk deploy`: `cpu` or `gpu` (CUDA) base container."),
    "trainingBaseDigest": ("", "Build on this digest (`sha256:...`) of the base container's tag, not the tag itself."),
    "notebookInstanceType": ("ml.t2.medium", "Instance type of the notebook (it only orchestrates; jobs train)."),
    "notebookVolumeGb": (100, "Size of the notebook's ML storage volume in GB (/home/ec2-user/SageMaker)."),
    "notebookRootAccess": (False, "true lets notebook users become root (off: least privilege)."),
    "notebookIdleStopMinutes": (60, "Stop the notebook after this many idle minutes; 0 never stops it."),
    "repoUrl": ("", "HTTPS URL the notebook clones; default: this checkout's `origin` remote."),
    "repoRef": ("", "Commit, branch or tag the notebook checks out; default: the commit being deployed."),
    "vpc": (False, "true: a VPC with private subnets, endpoints and flow logs; no direct internet access."),
    "logRetentionDays": (365, "Days SageMaker's log groups (jobs, transforms, notebook) keep events, encrypted with "
                              "the stack key; a CloudWatch Logs value."),
}
# The retention periods CloudWatch Logs accepts (PutRetentionPolicy), in days.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288,
                      3653)

CDK_JSON = Path(__file__).resolve().parents[1] / "cdk.json"  # its "context": feature flags, and defaults users edit

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}$")
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,99}$")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")  # an image digest (trainingBaseDigest; constructs/training_image.py)


def cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """cdk.json's context: the project's defaults of the settings, and CDK's feature flags."""
    return dict(json.loads(path.read_text())["context"])


def context_value(key: str, given: Mapping[str, Any]) -> Any:
    """A setting as the CDK app sees it: `-c key=value` (given), else cdk.json's context, else SETTINGS' default.

    The app gets the first two merged from the CLI (or from build_app); commands that run beside the app (make
    destroy) use this, so that they name the same stack.
    """
    for source in (given, cdk_json_context()):
        if source.get(key) not in (None, ""):
            return source[key]
    return SETTINGS[key][0]


class ConfigError(ValueError):
    """A context setting has a value the app cannot use; the message names the setting and what is allowed."""


def parse_bool(key: str, value: Any) -> bool:
    """Parse a boolean setting given as a JSON boolean (cdk.json) or a string (`-c key=true`).

    Args:
        key: the setting's name, for the error message.
        value: the raw context value.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"context setting {key}={value!r} is not a boolean: use -c {key}=true or -c {key}=false")


def parse_int(key: str, value: Any, *, minimum: int, maximum: int) -> int:
    """Parse an integer setting and check its range.

    Args:
        key: the setting's name, for the error message.
        value: the raw context value.
        minimum: smallest allowed value.
        maximum: largest allowed value.
    """
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"context setting {key}={value!r} is not a whole number") from None
    if not minimum <= number <= maximum:
        raise ConfigError(f"context setting {key}={number} is out of range: use {minimum} to {maximum}")
    return number


def _check(key: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    if value and not pattern.match(value):
        raise ConfigError(f"context setting {key}={value!r} is not {what}")
    return value


@dataclass(frozen=True)
class StorageConfig:
    """The data bucket, its log bucket and the KMS key."""

    destroy_data: bool  # False keeps bucket, log bucket and key on `cdk destroy`: data is never lost by accident
    existing_bucket_name: str  # "" creates a bucket; a name reuses a kept bucket and creates no log bucket
    existing_key_arn: str  # "" creates a key; an ARN reuses the kept key (needed to read a kept bucket)
    noncurrent_version_expiry_days: int  # versioning protects against overwrites; old versions still cost money
    log_retention_days: int  # SageMaker's log groups: how long job, transform and notebook logs are kept


@dataclass(frozen=True)
class ImageConfig:
    """The training image."""

    image_uri: str  # "" builds training/ with `cdk deploy`; a URI skips the build (and needs no Docker)
    variant: str  # "cpu" or "gpu": which SageMaker PyTorch training container the image extends
    base_digest: str  # "" builds on the tag as it is that day; "sha256:..." on that exact image of it, every time


@dataclass(frozen=True)
class NotebookConfig:
    """The notebook instance and what its lifecycle scripts clone."""

    instance_type: str  # ml.t2.medium: the notebook only prepares data and launches jobs; jobs do the training
    volume_gb: int  # 100 GB: room for a DICOM dataset and its cache next to the repository
    root_access: bool  # off: users install into conda environments, not the system
    idle_stop_minutes: int  # 60: a forgotten notebook stops costing money within the hour
    repo_url: str  # HTTPS, cloned without credentials
    repo_ref: str  # the deployed commit by default, so notebook and stack match
    deployed_commit: str  # the commit being synthesized ("" when unknown): the notebook reports when it is behind


@dataclass(frozen=True)
class InfraConfig:
    """All settings of one deployment."""

    stack_name: str
    storage: StorageConfig
    image: ImageConfig
    notebook: NotebookConfig
    vpc: bool  # off: no NAT gateway or endpoints to pay for while idle; on: no direct internet access

    @classmethod
    def from_context(cls, get: Callable[[str], Any], *, origin_url: str = "", head_commit: str = "") -> InfraConfig:
        """Build the configuration from CDK context.

        Args:
            get: looks a context key up (`app.node.try_get_context`); None means "not set".
            origin_url: this checkout's `origin` remote, the default of repoUrl.
            head_commit: the commit being deployed, the default of repoRef.
        """

        def value(key: str) -> Any:
            raw = get(key)
            return SETTINGS[key][0] if raw is None else raw

        variant = str(value("imageVariant")).strip().lower()
        if variant not in ("cpu", "gpu"):
            raise ConfigError(f"context setting imageVariant={variant!r} is not allowed: use cpu or gpu")
        bucket = _check("dataBucketName", str(value("dataBucketName")).strip(), _BUCKET_NAME, "a valid S3 bucket name")
        key_arn = _check("dataKeyArn", str(value("dataKeyArn")).strip(), _KMS_KEY_ARN, "a KMS key ARN")
        if key_arn and not bucket:
            raise ConfigError("context setting dataKeyArn is set without dataBucketName: give both, or neither")
        image_uri = str(value("trainingImageUri")).strip()
        digest = _check("trainingBaseDigest", str(value("trainingBaseDigest")).strip(), DIGEST,
                        "an image digest: give sha256: and 64 lowercase hex digits, the digest of the base container's "
                        "tag (README, 'The training image', says how to look one up), or leave it unset")
        if image_uri and digest:
            raise ConfigError("context setting trainingBaseDigest is set with trainingImageUri, which builds nothing: "
                              "give one of them")
        return cls(
            stack_name=_check("stackName", str(value("stackName")).strip(), _STACK_NAME,
                              "a CloudFormation stack name (a letter, then letters, digits and hyphens)"),
            storage=StorageConfig(
                destroy_data=parse_bool("destroyData", value("destroyData")),
                existing_bucket_name=bucket,
                existing_key_arn=key_arn,
                noncurrent_version_expiry_days=parse_int(
                    "noncurrentVersionExpiryDays", value("noncurrentVersionExpiryDays"), minimum=1, maximum=3650
                ),
                log_retention_days=_log_retention(value("logRetentionDays")),
            ),
            image=ImageConfig(image_uri=image_uri, variant=variant, base_digest=digest),
            notebook=NotebookConfig(
                instance_type=_check("notebookInstanceType", str(value("notebookInstanceType")).strip(),
                                     _INSTANCE_TYPE, "a SageMaker instance type such as ml.t3.medium"),
                volume_gb=parse_int("notebookVolumeGb", value("notebookVolumeGb"), minimum=5, maximum=16384),
                root_access=parse_bool("notebookRootAccess", value("notebookRootAccess")),
                idle_stop_minutes=parse_int("notebookIdleStopMinutes", value("notebookIdleStopMinutes"),
                                            minimum=0, maximum=10080),
                repo_url=_repo_url(str(value("repoUrl")).strip(), origin_url),
                repo_ref=_repo_ref(str(value("repoRef")).strip(), head_commit),
                deployed_commit=head_commit,
            ),
            vpc=parse_bool("vpc", value("vpc")),
        )

    @classmethod
    def from_mapping(cls, context: Mapping[str, Any], *, origin_url: str = "", head_commit: str = "") -> InfraConfig:
        """Build the configuration from a plain mapping of context keys (tests, scripts)."""
        unknown = set(context) - set(SETTINGS)
        if unknown:
            raise ConfigError(f"unknown context settings {sorted(unknown)}; known: {sorted(SETTINGS)}")
        return cls.from_context(context.get, origin_url=origin_url, head_commit=head_commit)


def _log_retention(value: Any) -> int:
    days = parse_int("logRetentionDays", value, minimum=1, maximum=LOG_RETENTION_DAYS[-1])
    if days not in LOG_RETENTION_DAYS:
        raise ConfigError(f"context setting logRetentionDays={days} is not a period CloudWatch Logs keeps: use one "
                          f"of {', '.join(map(str, LOG_RETENTION_DAYS))}")
    return days


def _repo_url(given: str, origin_url: str) -> str:
    url = given or origin_url
    if not url:
        raise ConfigError("context setting repoUrl is not set and this checkout has no `origin` remote: deploy with "
                          "-c repoUrl=https://HOST/ORG/REPO.git (the URL the notebook clones)")
    try:
        validate_repo_url(url)
    except ValueError as error:
        source = "repoUrl" if given else "repoUrl (default: this checkout's origin remote)"
        raise ConfigError(f"context setting {source}={url!r}: {error}") from None
    return url


def _repo_ref(given: str, head_commit: str) -> str:
    ref = given or head_commit
    if not ref:
        raise ConfigError("context setting repoRef is not set and the commit being deployed is unknown (not a git "
                          "checkout?): deploy with -c repoRef=BRANCH_TAG_OR_COMMIT")
    return ref

"""A training job of this stack: its name, where it writes, and how jobs are named and tagged.

    job = attach(settings, "MonaiDicomSageMaker-3f9a-20261126120000")   # a handle for an earlier job

Every job of the stack is tagged STACK_TAG=<stack name> (and DATASET_TAG=<dataset>) and named
`<stack>-<4 hex>-<timestamp>` (the SDK appends the timestamp), so that list_jobs finds them by name and tags.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import boto3

from launcher.job_contract import MODEL_ARCHIVE, OUTPUT_ARCHIVE
from launcher.settings import Settings

# Key prefixes of the data bucket (infra/constructs/storage.py): the training role may read code/ and datasets/,
# write jobs/ and read and write checkpoints/, nothing else.
CODE_PREFIX = "code/"
JOBS_PREFIX = "jobs/"
CHECKPOINTS_PREFIX = "checkpoints/"
STACK_TAG = "monai-dicom:stack"
DATASET_TAG = "monai-dicom:dataset"
RUNNER_TAG = "monai-dicom:runner"
MAX_JOB_NAME = 63  # SageMaker's limit
SDK_SUFFIX = len("-YYYYmmddHHMMSS")  # what ModelTrainer appends to the base name
TOKEN_HEX = 4  # two launches in the same second still get different names
MAX_PREFIX = MAX_JOB_NAME - SDK_SUFFIX - 1 - TOKEN_HEX
_NOT_NAME = re.compile(r"[^A-Za-z0-9-]+")


def job_name_prefix(stack_name: str) -> str:
    """The prefix of the stack's job names: the stack name in the characters job names allow, shortened.

    Args:
        stack_name: the CloudFormation stack.
    """
    prefix = _NOT_NAME.sub("-", stack_name).strip("-")[:MAX_PREFIX].strip("-")
    return prefix or "monai-dicom"


def new_base_job_name(stack_name: str) -> str:
    """A base job name no other launch uses: `<prefix>-<4 hex>`; ModelTrainer appends `-<timestamp>`.

    Args:
        stack_name: the CloudFormation stack.
    """
    return f"{job_name_prefix(stack_name)}-{secrets.token_hex(TOKEN_HEX // 2)}"


@dataclass(frozen=True)
class TrainingJob:
    """A started training job: what follow, stop_training and collect need.

    Attributes:
        name: the SageMaker training job name.
        region: its region.
        bucket: the data bucket it writes to.
        stack_name: the stack it belongs to.
        dataset: the dataset it trains on ("" when unknown).
        checkpoint_uri: its checkpoint location (managed spot), else None.
        runner: the runner that started it ("sagemaker", ...).
    """

    name: str
    region: str
    bucket: str
    stack_name: str
    dataset: str = ""
    checkpoint_uri: str | None = None
    runner: str = "sagemaker"

    @property
    def output_uri(self) -> str:
        """Where SageMaker puts the job's archives: `s3://<bucket>/jobs/<name>/output/`."""
        return f"s3://{self.bucket}/{JOBS_PREFIX}{self.name}/output/"

    @property
    def model_uri(self) -> str:
        """The model archive (the MONAI bundle)."""
        return f"{self.output_uri}{MODEL_ARCHIVE}"

    @property
    def output_data_uri(self) -> str:
        """The output-data archive (metrics.json and figures)."""
        return f"{self.output_uri}{OUTPUT_ARCHIVE}"

    def boto_session(self) -> boto3.Session:
        """A boto3 session in the job's region."""
        return boto3.Session(region_name=self.region)


def attach(settings: Settings, name: str) -> TrainingJob:
    """A handle for an existing job of the stack (one started earlier, or in another notebook session).

    Args:
        settings: the stack's values.
        name: the training job's name (see list_jobs).

    Raises:
        ValueError: the job is not tagged as one of this stack's jobs.
        botocore.exceptions.ClientError: the job does not exist (ValidationException).
    """
    sagemaker = settings.boto_session().client("sagemaker")
    described = sagemaker.describe_training_job(TrainingJobName=name)
    tags = job_tags(sagemaker, described["TrainingJobArn"])
    if tags.get(STACK_TAG) != settings.stack_name:
        raise ValueError(f"training job {name} is not a job of stack {settings.stack_name} (its {STACK_TAG} tag is "
                         f"{tags.get(STACK_TAG)!r}); list this stack's jobs with list_jobs(settings)")
    return TrainingJob(
        name=name, region=settings.region, bucket=settings.bucket, stack_name=settings.stack_name,
        dataset=tags.get(DATASET_TAG, ""), checkpoint_uri=(described.get("CheckpointConfig") or {}).get("S3Uri"),
        runner=tags.get(RUNNER_TAG, "sagemaker"),
    )


def job_tags(sagemaker: Any, arn: str) -> dict[str, str]:
    """A training job's tags as a dict.

    Args:
        sagemaker: a boto3 SageMaker client.
        arn: the job's ARN.
    """
    tags: dict[str, str] = {}
    paginator = sagemaker.get_paginator("list_tags")
    for page in paginator.paginate(ResourceArn=arn):
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
    return tags

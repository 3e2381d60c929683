"""The launcher against a local AWS emulator (moto's server over HTTP, from demo/emulator.py), one per test module.

The emulator reaches boto3 and the SageMaker SDK only through their own environment variables (AWS_ENDPOINT_URL,
dummy credentials, SAGEMAKER_VALIDATE_ROLE=false because moto lacks iam:SimulatePrincipalPolicy, an SDK config file
that opts out of telemetry and keeps a user's SDK defaults out). The stack's resources (KMS key, versioned bucket,
roles, a VPC) are created with boto3; what the launcher sent is read back from moto's request recorder, because
moto's DescribeTrainingJob rewrites parts of a job (FACTS.md).

Module scope: moto's state is global to the process, and pytest-xdist's `--dist loadfile` runs a module's tests
together, so no other module's emulator can run (and reset moto) while one of these is alive.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from demo.emulator import Emulator, emulator_env, start_emulator
from launcher.settings import RUNNER_VARIABLE, Settings

STACK_NAME = "LauncherTest"
BUCKET = "launcher-test-data"
# The SageMaker PyTorch container's CPU tag: image_variant reads "cpu" from it.
CPU_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/monai-training:2.13-cpu-amzn2023-sagemaker"
SDK_CONFIG = "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n"
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


@dataclass(frozen=True)
class Recorded:
    """One request moto received while recording."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query, keep_blank_values=True)

    @property
    def target(self) -> str:
        """X-Amz-Target of a JSON API call, e.g. "SageMaker.CreateTrainingJob"."""
        return next((v for k, v in self.headers.items() if k.lower() == "x-amz-target"), "")

    def json(self) -> Any:
        return json.loads(self.body)


class Recording:
    """moto's request recorder: what boto3 and the SDK sent over HTTP, request bodies included."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def _post(self, action: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def start(self) -> None:
        self._post("reset-recording")
        self._post("start-recording")

    def stop(self) -> None:
        self._post("stop-recording")
        self._post("reset-recording")

    def requests(self) -> list[Recorded]:
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/recorder/download-recording", timeout=10) as response:
            lines = response.read().decode().splitlines()
        recorded = []
        for line in lines:
            entry = json.loads(line)
            body = entry.get("body") or ""
            raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
            recorded.append(Recorded(entry["method"], entry["url"], dict(entry["headers"]), raw))
        return recorded

    def calls(self, operation: str) -> list[dict[str, Any]]:
        """The JSON bodies of the recorded SageMaker calls of one operation, e.g. "CreateTrainingJob"."""
        return [r.json() for r in self.requests() if r.target == f"SageMaker.{operation}"]

    def s3_writes(self, bucket: str, prefix: str) -> list[Recorded]:
        """PutObject, UploadPart and CreateMultipartUpload requests for keys under `prefix` of `bucket`."""
        return [r for r in self.requests() if r.path.startswith(f"/{bucket}/{prefix}")
                and (r.method == "PUT" or (r.method == "POST" and "uploads" in r.query))]


@dataclass(frozen=True)
class Stack:
    """The stack's resources in the emulator, and Settings for them without and with a VPC."""

    settings: Settings
    vpc_settings: Settings


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """A fresh emulator for the module; boto3 and the SDK reach it through the environment only."""
    sdk_config = tmp_path_factory.mktemp("sagemaker-config") / "config.yaml"
    sdk_config.write_text(SDK_CONFIG)
    with start_emulator() as emulator, pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            patch.delenv(key)
        for key, value in emulator_env(emulator).items():
            if key.startswith("AWS_"):
                patch.setenv(key, value)
        patch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
        patch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(sdk_config))
        patch.setenv("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", str(sdk_config))
        patch.delenv(RUNNER_VARIABLE, raising=False)
        yield emulator


@pytest.fixture(scope="module")
def stack(emulator: Emulator) -> Stack:
    """The stack's resources, created with boto3: KMS key, versioned SSE-KMS bucket, roles, a VPC."""
    session = boto3.Session()
    key_arn = session.client("kms").create_key(Description="launcher test")["KeyMetadata"]["Arn"]
    s3 = session.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
        "BucketKeyEnabled": True}]})
    iam = session.client("iam")
    training_role = iam.create_role(RoleName="LauncherTestTraining", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    notebook_role = iam.create_role(RoleName="LauncherTestNotebook", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    model_role = iam.create_role(RoleName="LauncherTestModel", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    ec2 = session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = tuple(ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2))
    group = ec2.create_security_group(GroupName="jobs", Description="training jobs", VpcId=vpc)["GroupId"]
    settings = Settings(
        stack_name=STACK_NAME, region=session.region_name, bucket=BUCKET, data_key_arn=key_arn,
        training_role_arn=training_role, training_image_uri=CPU_IMAGE, notebook_role_arn=notebook_role,
        source="test fixture", model_role_arn=model_role,
    )
    vpc_settings = replace(settings, subnets=subnets, security_group_ids=(group,))
    return Stack(settings=settings, vpc_settings=vpc_settings)


@pytest.fixture
def recording(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recording]:
    """Record every request the test makes.

    moto writes its recording to the file MOTO_RECORDER_FILEPATH named when moto was imported, by default
    `moto_recording` in the working directory: the test runs in its temporary directory so nothing lands in the
    repository.
    """
    monkeypatch.chdir(tmp_path)
    recording = Recording(emulator.endpoint)
    recording.start()
    try:
        yield recording
    finally:
        recording.stop()


@pytest.fixture(scope="session")
def dicom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real DICOM dataset with labels.csv (the job's synthetic generator; 8 images of 64x64)."""
    from training.synthetic import generate

    folder = tmp_path_factory.mktemp("dicom") / "synthetic"
    generate(folder, count=8, size=64)
    return folder

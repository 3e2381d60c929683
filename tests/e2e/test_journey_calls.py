"""The recording behind the journey's IAM check (tests/e2e/journey_calls.py), on real requests: boto3 against the
emulator with recording on, each request mapped to the IAM call it makes; and a client made by a local stand-in of
SageMaker marks its requests (tests/e2e/stand_ins/sitecustomize.py), in a process of its own as the kernel is."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from botocore.exceptions import ClientError

from demo.emulator import ROOT, client, emulator_env, start_emulator
from tests.e2e.journey_calls import STAND_IN_HEADER, to_calls

pytestmark = pytest.mark.filterwarnings(r"ignore:Tried to parse:UserWarning:moto\.")

BUCKET = "journey-calls-bucket"
S3 = f"arn:aws:s3:::{BUCKET}"
LOGS = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/TrainingJobs"
STAND_IN = f"""
import boto3
source = "def make():\\n    return boto3.client('s3')\\n"
scope = {{"boto3": boto3}}
exec(compile(source, {str(ROOT / 'launcher' / 'local' / 'runner.py')!r}, "exec"), scope)
scope["make"]().list_objects_v2(Bucket={BUCKET!r}, Prefix="datasets/")  # as the local runner
boto3.client("s3").list_objects_v2(Bucket={BUCKET!r}, Prefix="code/")  # as the notebook
"""


def _quietly(call: Any, **kwargs: Any) -> None:
    try:
        call(**kwargs)
    except ClientError:
        pass  # the request was made, and recorded: that is what counts here


def test_recorded_requests_map_to_the_iam_calls_they_make() -> None:
    recording: list[dict[str, Any]] = []
    with start_emulator(recording=recording) as emulator:
        env = emulator_env(emulator)
        s3, logs, sagemaker = (client(env, service) for service in ("s3", "logs", "sagemaker"))
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="datasets/a b.dcm", Body=b"x", ServerSideEncryption="aws:kms",
                      SSEKMSKeyId="arn:aws:kms:us-east-1:123456789012:key/k")
        s3.head_object(Bucket=BUCKET, Key="datasets/a b.dcm")
        s3.get_object(Bucket=BUCKET, Key="datasets/a b.dcm")
        s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/")
        s3.head_bucket(Bucket=BUCKET)
        s3.copy_object(Bucket=BUCKET, Key="jobs/b.dcm", CopySource={"Bucket": BUCKET, "Key": "datasets/a b.dcm"})
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "jobs/b.dcm"},
                                                             {"Key": "jobs/c.dcm", "VersionId": "v1"}]})
        s3.delete_object(Bucket=BUCKET, Key="datasets/a b.dcm")
        s3.list_buckets()
        logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
        logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="job/algo-1")
        logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs")
        _quietly(sagemaker.describe_training_job, TrainingJobName="Job-1")
        sagemaker.list_training_jobs()
        kernel_env = {**env, "PYTHONPATH": str(ROOT / "tests" / "e2e" / "stand_ins")}
        subprocess.run([sys.executable, "-c", STAND_IN], env=kernel_env, cwd=ROOT, check=True, timeout=60)
    calls = [(call.action, call.resource, dict(call.context)) for request in recording for call in to_calls(request)]
    tls = {"aws:SecureTransport": "true"}
    assert calls[:-2] == [
        ("s3:CreateBucket", S3, tls),
        ("s3:PutObject", f"{S3}/datasets/a b.dcm", {
            **tls, "s3:x-amz-server-side-encryption": "aws:kms",
            "s3:x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:us-east-1:123456789012:key/k"}),
        ("s3:GetObject", f"{S3}/datasets/a b.dcm", tls),
        ("s3:GetObject", f"{S3}/datasets/a b.dcm", tls),
        ("s3:ListBucket", S3, {**tls, "s3:prefix": "datasets/"}),
        ("s3:ListBucket", S3, {**tls, "s3:prefix": ""}),  # HeadBucket
        ("s3:PutObject", f"{S3}/jobs/b.dcm", tls),
        ("s3:GetObject", f"{S3}/datasets/a b.dcm", tls),  # the copy's source
        ("s3:DeleteObject", f"{S3}/jobs/b.dcm", tls),
        ("s3:DeleteObjectVersion", f"{S3}/jobs/c.dcm", tls),
        ("s3:DeleteObject", f"{S3}/datasets/a b.dcm", tls),
        ("s3:ListAllMyBuckets", "*", tls),
        ("logs:CreateLogGroup", f"{LOGS}:*", {}),
        ("logs:CreateLogStream", f"{LOGS}:log-stream:job/algo-1", {}),
        ("logs:DescribeLogStreams", f"{LOGS}:*", {}),
        ("sagemaker:DescribeTrainingJob", "arn:aws:sagemaker:us-east-1:123456789012:training-job/job-1", {}),
        ("sagemaker:ListTrainingJobs", "*", {}),
    ]
    runner, notebook = recording[-2:]
    assert (runner["headers"].get(STAND_IN_HEADER), runner["query"].count("datasets")) == ("TrainingRole", 1)
    assert (notebook["headers"].get(STAND_IN_HEADER), notebook["query"].count("code")) == (None, 1)

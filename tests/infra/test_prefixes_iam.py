"""Each execution role lists, reads and writes only its own prefixes of the data bucket (issue 18 item 3), as decided
by a real IAM evaluator (tests/infra/iam.py) on the synthesized policies, both network variants.

The bucket's keys name datasets and jobs; a served model, which sees whatever it is sent, has no business listing
them, nor the training role beyond what a job reads. SageMaker lists a channel's prefix (s3:prefix in the request),
the checkpoint prefix on start, and a transform's input prefix.
"""

from __future__ import annotations

import pytest

from tests.infra.iam import ACCOUNT, Call, decide, resolve, role_policies

# (role, action, object key or listed prefix, expected)
EXPECTED = [
    ("ModelRole", "s3:ListBucket", "inference/run-1/input/", "Allowed"),  # the transform's input
    ("ModelRole", "s3:ListBucket", "jobs/job-1/output/", "Allowed"),
    ("ModelRole", "s3:ListBucket", "", "ImplicitlyDenied"),  # the whole bucket
    ("ModelRole", "s3:ListBucket", "datasets/", "ImplicitlyDenied"),
    ("ModelRole", "s3:ListBucket", "secrets/", "ImplicitlyDenied"),
    ("ModelRole", "s3:ListBucketVersions", "inference/", "ImplicitlyDenied"),
    ("ModelRole", "s3:GetObject", "jobs/job-1/output/model.tar.gz", "Allowed"),
    ("ModelRole", "s3:GetObject", "inference/run-1/input/a.dcm", "Allowed"),
    ("ModelRole", "s3:PutObject", "inference/run-1/output/a.dcm.out", "Allowed"),
    ("ModelRole", "s3:PutObject", "jobs/job-1/output/model.tar.gz", "ImplicitlyDenied"),  # it never changes a model
    ("ModelRole", "s3:GetObject", "datasets/demo/a.dcm", "ImplicitlyDenied"),
    ("ModelRole", "s3:GetObject", "secrets/pseudonym-key", "ImplicitlyDenied"),
    ("ModelRole", "s3:GetObjectVersion", "jobs/job-1/output/model.tar.gz", "ImplicitlyDenied"),
    ("TrainingRole", "s3:ListBucket", "datasets/demo/", "Allowed"),
    ("TrainingRole", "s3:ListBucket", "code/job-1/", "Allowed"),
    ("TrainingRole", "s3:ListBucket", "checkpoints/job-1/", "Allowed"),
    ("TrainingRole", "s3:ListBucket", "secrets/pseudonym-key", "Allowed"),  # the key's channel
    ("TrainingRole", "s3:ListBucket", "", "ImplicitlyDenied"),
    ("TrainingRole", "s3:ListBucket", "inference/", "ImplicitlyDenied"),
    ("TrainingRole", "s3:GetObject", "datasets/demo/a.dcm", "Allowed"),
    ("TrainingRole", "s3:GetObject", "secrets/pseudonym-key", "Allowed"),
    ("TrainingRole", "s3:PutObject", "secrets/pseudonym-key", "ImplicitlyDenied"),
    ("TrainingRole", "s3:PutObject", "datasets/demo/a.dcm", "ImplicitlyDenied"),
    ("TrainingRole", "s3:PutObject", "checkpoints/job-1/epoch-0001.pt", "Allowed"),
    ("TrainingRole", "s3:PutObject", "jobs/job-1/output/model.tar.gz", "Allowed"),
    ("TrainingRole", "s3:GetObject", "inference/run-1/output/a.dcm.out", "ImplicitlyDenied"),
    ("NotebookRole", "s3:ListBucket", "", "Allowed"),  # it manages the bucket's content
]


@pytest.mark.parametrize("variant", ["default", "vpc"])
def test_each_execution_role_lists_and_reads_only_its_prefixes(synth, variant: str) -> None:
    doc = synth.get(variant).doc
    [bucket] = [resolve(doc, {"Fn::GetAtt": [k, "Arn"]}) for k, v in doc["Resources"].items()
                if v["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in v["Properties"]]
    for role in ("ModelRole", "TrainingRole", "NotebookRole"):
        cases = [(action, key, expected) for r, action, key, expected in EXPECTED if r == role]
        calls = [Call(action, bucket, {"s3:prefix": key} if key else {}) if action.startswith("s3:ListBucket")
                 else Call(action, f"{bucket}/{key}") for action, key, _ in cases]
        decisions = decide(role_policies(doc, role), calls, principal=f"arn:aws:iam::{ACCOUNT}:role/{role}")
        for call, decision in zip(calls, decisions, strict=True):
            print(f"{variant:8} {role:13} {decision:17} {call}")  # the table, with -s
        assert decisions == [expected for _, _, expected in cases], role

"""The training and notebook roles: trust, no managed FullAccess, the SDK's role check, and what each role may do, as
decided by a real IAM evaluator (tests/infra/iam.py) on the synthesized template's policies."""

from __future__ import annotations

import pytest

from infra.constructs.roles import SDK_TRAINING_ROLE_ACTIONS
from tests.infra.iam import ACCOUNT, REGION, Call, arn_of, expect, role_id, role_policies

S3 = {"aws:SecureTransport": "true"}
ISOLATED = {"sagemaker:NetworkIsolation": "true"}
JOB = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/monaidicomsagemaker-a1b2-20261206000000"
TRAINING_LOGS = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs"
STREAM = f"{TRAINING_LOGS}:log-stream:MonaiDicomSageMaker-a1b2-20261206000000/algo-1-1796597314"


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def default(synth):
    s = synth.get("default")
    ids = {
        "training": role_id(s.doc, "TrainingRole"),
        "notebook": role_id(s.doc, "NotebookRole"),
        "bucket": next(k for k, v in s.resources("AWS::S3::Bucket").items()
                       if "LoggingConfiguration" in v["Properties"]),
        "key": next(iter(s.resources("AWS::KMS::Key"))),
    }
    return s, ids


@pytest.mark.parametrize("role", ["training", "notebook"])
def test_roles_trust_only_sagemaker_of_this_account(default, role):
    s, ids = default
    trust = s.doc["Resources"][ids[role]]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [{
        "Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
        "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
    }]


def test_no_role_has_managed_or_full_access_policies(default):
    s, _ = default
    for resource in s.resources("AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in resource["Properties"]
    for policy in s.resources("AWS::IAM::Policy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert not any(a == "*" or str(a).endswith(":*") for a in _as_list(st["Action"])), st


def test_training_role_reads_data_and_code_writes_outputs_and_checkpoints(default):
    s, ids = default
    bucket = arn_of(s.doc, ids["bucket"])
    cases = []
    for prefix in ("datasets/demo/train", "code/job/input/code"):
        cases += [(Call("s3:GetObject", f"{bucket}/{prefix}/a.dcm", S3), True),
                  (Call("s3:PutObject", f"{bucket}/{prefix}/a.dcm", S3), False)]
    for prefix in ("jobs/job/output", "checkpoints/job"):
        cases += [(Call("s3:PutObject", f"{bucket}/{prefix}/model.tar.gz", S3), True),
                  (Call("s3:GetObject", f"{bucket}/{prefix}/model.tar.gz", S3), True)]
    cases += [(Call("s3:ListBucket", bucket, {**S3, "s3:prefix": "datasets/demo/train/"}), True)]
    # Nothing outside those prefixes.
    cases += [(Call("s3:GetObject", f"{bucket}/other/a.dcm", S3), False),
              (Call("s3:PutObject", f"{bucket}/a.dcm", S3), False)]
    expect(s.doc, "TrainingRole", cases)


def test_training_role_uses_key_pulls_image_and_writes_logs(default):
    s, ids = default
    key = arn_of(s.doc, ids["key"])
    via_s3 = {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}
    repository = (f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/"
                  f"cdk-hnb659fds-container-assets-{ACCOUNT}-{REGION}")
    expect(s.doc, "TrainingRole", [
        *[(Call(action, key, via_s3), True) for action in ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey")],
        (Call("kms:CreateGrant", key, {"kms:GrantIsForAWSResource": "true"}), True),  # the job's volume
        (Call("kms:CreateGrant", key, {"kms:GrantIsForAWSResource": "false"}), False),
        (Call("kms:CreateGrant", key), False),
        (Call("logs:CreateLogGroup", f"{TRAINING_LOGS}:*"), True),
        (Call("logs:CreateLogStream", STREAM), True),
        (Call("logs:PutLogEvents", STREAM), True),
        (Call("ecr:BatchGetImage", repository), True),
        (Call("ecr:BatchGetImage", f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/another"), False),
    ])


def test_training_role_satisfies_the_installed_sdks_role_check(default):
    """ModelTrainer simulates these actions (without resources or context) on the role and refuses to launch
    otherwise."""
    from sagemaker.core.helper import iam_role_resolver

    required = iam_role_resolver._get_smoke_test_actions("training")
    assert set(required) == set(SDK_TRAINING_ROLE_ACTIONS), "the SDK changed what it checks: update roles.py"
    s, _ = default
    expect(s.doc, "TrainingRole", [(Call(action, "*"), True) for action in required])
    assert iam_role_resolver._expected_trust_services("training") == {"sagemaker.amazonaws.com"}


def test_notebook_role_runs_follows_and_stops_training_jobs(default):
    s, ids = default
    bucket, key, training = (arn_of(s.doc, ids[k]) for k in ("bucket", "key", "training"))
    expect(s.doc, "NotebookRole", [
        # as the launcher sends it: isolated, the stack key on volume and output (test_isolation_iam: the rest)
        (Call("sagemaker:CreateTrainingJob", JOB,
              {**ISOLATED, "sagemaker:VolumeKmsKeyArn": key, "sagemaker:OutputKmsKeyArn": key}), True),
        (Call("sagemaker:DescribeTrainingJob", JOB), True),
        (Call("sagemaker:StopTrainingJob", JOB), True),
        (Call("sagemaker:ListTrainingJobs", "*"), True),
        (Call("logs:GetLogEvents", STREAM), True),
        (Call("logs:DescribeLogStreams", f"{TRAINING_LOGS}:*"), True),
        (Call("iam:SimulatePrincipalPolicy", training), True),
        (Call("iam:GetRole", training), True),
        (Call("s3:GetObject", f"{bucket}/datasets/demo/a.dcm", S3), True),
        (Call("s3:PutObject", f"{bucket}/datasets/demo/a.dcm", S3), True),
        (Call("kms:GenerateDataKey", key, {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}), True),
    ])


def test_notebook_role_passes_only_the_training_and_model_roles_only_to_sagemaker(default):
    s, ids = default
    to_sagemaker = {"iam:PassedToService": "sagemaker.amazonaws.com"}
    training, model = arn_of(s.doc, ids["training"]), arn_of(s.doc, role_id(s.doc, "ModelRole"))
    expect(s.doc, "NotebookRole", [
        (Call("iam:PassRole", training, to_sagemaker), True),
        (Call("iam:PassRole", model, to_sagemaker), True),
        (Call("iam:PassRole", training, {"iam:PassedToService": "ec2.amazonaws.com"}), False),
        (Call("iam:PassRole", model), False),  # a request that names no service
        (Call("iam:PassRole", arn_of(s.doc, ids["notebook"]), to_sagemaker), False),
        (Call("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/SomeAdminRole", to_sagemaker), False),
    ])


def test_wildcard_resources_are_only_those_without_resource_level_permissions(default):
    s, _ = default
    star_actions = {a for role in ("TrainingRole", "NotebookRole") for policy in role_policies(s.doc, role)
                    for st in policy["Statement"] if "*" in _as_list(st["Resource"]) for a in _as_list(st["Action"])}
    assert star_actions == {*SDK_TRAINING_ROLE_ACTIONS, "sagemaker:ListTrainingJobs"}

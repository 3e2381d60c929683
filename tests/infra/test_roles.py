"""The training and notebook roles: trust, every statement, no managed FullAccess, the SDK's role check."""

from __future__ import annotations

import pytest

from infra.constructs.roles import SDK_TRAINING_ROLE_ACTIONS
from tests.infra.policy import allows, as_list, role_id, role_statements


def _arn(logical_id: str) -> dict:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def _join(*parts) -> dict:
    return {"Fn::Join": ["", list(parts)]}


def _regional(service: str, rest: str) -> dict:
    return _join("arn:", {"Ref": "AWS::Partition"}, f":{service}:", {"Ref": "AWS::Region"}, ":",
                 {"Ref": "AWS::AccountId"}, rest)


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
            assert not any(a == "*" or a.endswith(":*") for a in as_list(st["Action"])), st


def test_training_role_reads_data_and_code_writes_outputs_and_checkpoints(default):
    s, ids = default
    statements = role_statements(s.doc, ids["training"])
    bucket = _arn(ids["bucket"])
    for prefix in ("datasets", "code"):
        assert allows(statements, "s3:GetObject", resource=_join(bucket, f"/{prefix}/*"))
        assert not allows(statements, "s3:PutObject", resource=_join(bucket, f"/{prefix}/*"))
    for prefix in ("jobs", "checkpoints"):
        assert allows(statements, "s3:PutObject", resource=_join(bucket, f"/{prefix}/*"))
        assert allows(statements, "s3:GetObject", resource=_join(bucket, f"/{prefix}/*"))
    assert allows(statements, "s3:ListBucket", resource=bucket)
    # Nothing outside those prefixes.
    s3_resources = [r for st in statements if any(a.startswith("s3:") for a in as_list(st["Action"]))
                    for r in as_list(st["Resource"])]
    assert _join(bucket, "/*") not in s3_resources


def test_training_role_uses_key_pulls_image_and_writes_logs(default):
    s, ids = default
    statements = role_statements(s.doc, ids["training"])
    key = _arn(ids["key"])
    for action in ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"):
        assert allows(statements, action, resource=key)
    grant = [st for st in statements if st["Action"] == "kms:CreateGrant"]
    assert grant == [{"Action": "kms:CreateGrant", "Effect": "Allow", "Resource": key,
                      "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}}]
    logs = _regional("logs", ":log-group:/aws/sagemaker/TrainingJobs:*")
    for action in ("logs:CreateLogStream", "logs:PutLogEvents", "logs:CreateLogGroup"):
        assert allows(statements, action, resource=logs)
    assert allows(statements, "ecr:BatchGetImage", resource=_join(
        "arn:", {"Ref": "AWS::Partition"}, ":ecr:", {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
        ":repository/", {"Fn::Sub": "cdk-hnb659fds-container-assets-${AWS::AccountId}-${AWS::Region}"}))


def test_training_role_satisfies_the_installed_sdks_role_check(default):
    """ModelTrainer simulates these actions (without resources) on the role and refuses to launch otherwise."""
    from sagemaker.core.helper import iam_role_resolver

    required = iam_role_resolver._get_smoke_test_actions("training")
    assert set(required) == set(SDK_TRAINING_ROLE_ACTIONS), "the SDK changed what it checks: update roles.py"
    s, ids = default
    statements = role_statements(s.doc, ids["training"])
    missing = [a for a in required if not allows(statements, a, resource="*", unconditional=True)]
    assert not missing
    assert iam_role_resolver._expected_trust_services("training") == {"sagemaker.amazonaws.com"}


def test_notebook_role_runs_follows_and_stops_training_jobs(default):
    s, ids = default
    statements = role_statements(s.doc, ids["notebook"])
    jobs = _regional("sagemaker", ":training-job/*")
    for action in ("sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob"):
        assert allows(statements, action, resource=jobs)
    assert allows(statements, "sagemaker:ListTrainingJobs")
    for action in ("logs:GetLogEvents", "logs:DescribeLogStreams"):
        assert allows(statements, action, resource=_regional("logs", ":log-group:/aws/sagemaker/TrainingJobs:*"))
    for action in ("iam:SimulatePrincipalPolicy", "iam:GetRole"):
        assert allows(statements, action, resource=_arn(ids["training"]))
    bucket = _arn(ids["bucket"])
    for action in ("s3:GetObject", "s3:PutObject"):
        assert allows(statements, action, resource=_join(bucket, "/*"))
    assert allows(statements, "kms:GenerateDataKey", resource=_arn(ids["key"]))


def test_notebook_role_passes_only_the_training_and_model_roles_only_to_sagemaker(default):
    s, ids = default
    statements = role_statements(s.doc, ids["notebook"])
    passes = [st for st in statements if "iam:PassRole" in as_list(st["Action"])]
    assert len(passes) == 1  # CDK merges the two grants into one statement
    only = dict(passes[0])  # a copy: the template is shared by the session
    assert sorted(as_list(only.pop("Resource")), key=str) == sorted(
        [_arn(ids["training"]), _arn(role_id(s.doc, "ModelRole"))], key=str)
    assert only == {"Action": "iam:PassRole", "Effect": "Allow",
                    "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}}


def test_wildcard_resources_are_only_those_without_resource_level_permissions(default):
    s, ids = default
    star_actions = {a for role in ("training", "notebook") for st in role_statements(s.doc, ids[role])
                    if "*" in as_list(st["Resource"]) for a in as_list(st["Action"])}
    assert star_actions == {*SDK_TRAINING_ROLE_ACTIONS, "sagemaker:ListTrainingJobs"}

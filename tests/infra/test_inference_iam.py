"""IAM for using a trained model (launcher/inference.py): a model role of its own (model artifacts and inference/,
no dataset), and the notebook role creates, invokes and deletes models, transform jobs and endpoints of this account
and region, and passes the model role to SageMaker only.
"""

from __future__ import annotations

import pytest

from infra.constructs.roles import INFERENCE_ACTIONS
from tests.infra.policy import allows, as_list, role_id, role_statements


def _join(*parts) -> dict:
    return {"Fn::Join": ["", list(parts)]}


def _regional(service: str, rest: str) -> dict:
    return _join("arn:", {"Ref": "AWS::Partition"}, f":{service}:", {"Ref": "AWS::Region"}, ":",
                 {"Ref": "AWS::AccountId"}, rest)


@pytest.fixture(scope="module", params=["default", "vpc"])
def roles(synth, request):
    s = synth.get(request.param)
    bucket = next(k for k, v in s.resources("AWS::S3::Bucket").items() if "LoggingConfiguration" in v["Properties"])
    model, notebook = role_id(s.doc, "ModelRole"), role_id(s.doc, "NotebookRole")
    return s, role_statements(s.doc, model), role_statements(s.doc, notebook), model, bucket


def _objects(bucket: str, prefix: str) -> dict:
    return _join({"Fn::GetAtt": [bucket, "Arn"]}, f"/{prefix}")


def test_the_model_role_reads_model_artifacts_and_transform_input_and_writes_its_output(roles):
    _, model, _, _, bucket = roles
    assert allows(model, "s3:GetObject", resource=_objects(bucket, "jobs/*"))
    assert allows(model, "s3:GetObject", resource=_objects(bucket, "inference/*"))
    assert allows(model, "s3:PutObject", resource=_objects(bucket, "inference/*"))
    assert not allows(model, "s3:PutObject", resource=_objects(bucket, "jobs/*"))  # it never changes a model
    for prefix in ("datasets/*", "checkpoints/*", "code/*", "*"):
        assert not allows(model, "s3:GetObject", resource=_objects(bucket, prefix)), prefix  # no patient data


def test_the_training_role_has_nothing_of_inference(synth):
    s = synth.get("default")
    bucket = next(k for k, v in s.resources("AWS::S3::Bucket").items() if "LoggingConfiguration" in v["Properties"])
    training = role_statements(s.doc, role_id(s.doc, "TrainingRole"))
    assert not allows(training, "s3:GetObject", resource=_objects(bucket, "inference/*"))
    assert not allows(training, "logs:PutLogEvents",
                      resource=_regional("logs", ":log-group:/aws/sagemaker/TransformJobs:*"))


def test_the_model_role_pulls_the_image_and_logs_transform_jobs_and_endpoints(roles):
    _, model, _, _, _ = roles
    assert allows(model, "ecr:GetAuthorizationToken")
    assert allows(model, "cloudwatch:PutMetricData")
    for group in ("/aws/sagemaker/TransformJobs:*", "/aws/sagemaker/Endpoints/*:*"):
        arn = _regional("logs", f":log-group:{group}")
        for action in ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"):
            assert allows(model, action, resource=arn), (action, group)


@pytest.mark.parametrize(("action", "kind"), [
    ("sagemaker:CreateModel", "model"), ("sagemaker:DeleteModel", "model"),
    ("sagemaker:CreateTransformJob", "transform-job"), ("sagemaker:DescribeTransformJob", "transform-job"),
    ("sagemaker:StopTransformJob", "transform-job"),
    ("sagemaker:CreateEndpointConfig", "endpoint-config"), ("sagemaker:DeleteEndpointConfig", "endpoint-config"),
    ("sagemaker:CreateEndpoint", "endpoint"), ("sagemaker:DescribeEndpoint", "endpoint"),
    ("sagemaker:DeleteEndpoint", "endpoint"), ("sagemaker:InvokeEndpoint", "endpoint"),
])
def test_the_notebook_manages_inference_resources_of_this_account_and_region_only(roles, action, kind):
    _, _, notebook, _, _ = roles
    # the create calls are granted alone, with their conditions (test_isolation_iam)
    assert action in INFERENCE_ACTIONS or action.startswith("sagemaker:Create") and action != "sagemaker:CreateEndpoint"
    assert allows(notebook, action, resource=_regional("sagemaker", f":{kind}/*"))
    assert not allows(notebook, action, resource="*")


def test_inference_actions_are_granted_on_sagemaker_arns_only(roles):
    _, _, notebook, _, _ = roles
    for st in notebook:
        if set(as_list(st["Action"])) & set(INFERENCE_ACTIONS):
            assert set(as_list(st["Action"])) == set(INFERENCE_ACTIONS)
            assert len(as_list(st["Resource"])) == 4 and "*" not in as_list(st["Resource"])


def test_the_notebook_passes_the_training_and_model_roles_to_sagemaker_only(roles):
    s, _, notebook, model, _ = roles
    training = role_id(s.doc, "TrainingRole")
    passes = [st for st in notebook if "iam:PassRole" in as_list(st["Action"])]
    assert len(passes) == 1  # CDK merges the two grants into one statement
    only = dict(passes[0])  # a copy: the template is shared by the session
    assert sorted(as_list(only.pop("Resource")), key=str) == sorted(
        [{"Fn::GetAtt": [role, "Arn"]} for role in (training, model)], key=str)
    assert only == {"Action": "iam:PassRole", "Effect": "Allow",
                    "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}}


def test_the_model_role_is_an_output_and_a_value_of_the_notebook(synth):
    s = synth.get("default")
    model = role_id(s.doc, "ModelRole")
    assert s.doc["Outputs"]["ModelRoleArn"]["Value"] == {"Fn::GetAtt": [model, "Arn"]}


def test_the_training_role_reads_the_pseudonym_key_and_the_model_role_does_not(roles):
    s, model, _, _, bucket = roles
    training = role_statements(s.doc, role_id(s.doc, "TrainingRole"))
    assert allows(training, "s3:GetObject", resource=_objects(bucket, "secrets/pseudonym-key"))
    assert not allows(training, "s3:PutObject", resource=_objects(bucket, "secrets/pseudonym-key"))
    assert not allows(model, "s3:GetObject", resource=_objects(bucket, "secrets/pseudonym-key"))

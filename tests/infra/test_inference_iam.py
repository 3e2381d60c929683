"""IAM for using a trained model (launcher/inference.py): the training role doubles as the model's execution role,
and the notebook role creates, invokes and deletes models, transform jobs and endpoints of this account and region.
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
    training, notebook = role_id(s.doc, "TrainingRole"), role_id(s.doc, "NotebookRole")
    return s, role_statements(s.doc, training), role_statements(s.doc, notebook), training, bucket


def _objects(bucket: str, prefix: str) -> dict:
    return _join({"Fn::GetAtt": [bucket, "Arn"]}, f"/{prefix}")


def test_the_model_role_reads_model_artifacts_and_transform_input_and_writes_its_output(roles):
    _, training, _, _, bucket = roles
    assert allows(training, "s3:GetObject", resource=_objects(bucket, "jobs/*"))
    assert allows(training, "s3:GetObject", resource=_objects(bucket, "inference/*"))
    assert allows(training, "s3:PutObject", resource=_objects(bucket, "inference/*"))
    assert not allows(training, "s3:PutObject", resource=_objects(bucket, "datasets/*"))
    assert not allows(training, "s3:PutObject", resource=_objects(bucket, "*"))


def test_the_model_role_pulls_the_image_and_logs_transform_jobs_and_endpoints(roles):
    _, training, _, _, _ = roles
    assert allows(training, "ecr:GetAuthorizationToken")
    assert allows(training, "cloudwatch:PutMetricData")
    for group in ("/aws/sagemaker/TransformJobs:*", "/aws/sagemaker/Endpoints/*:*"):
        arn = _regional("logs", f":log-group:{group}")
        for action in ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"):
            assert allows(training, action, resource=arn), (action, group)


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
    assert action in INFERENCE_ACTIONS
    assert allows(notebook, action, resource=_regional("sagemaker", f":{kind}/*"))
    assert not allows(notebook, action, resource="*")


def test_inference_actions_are_granted_on_sagemaker_arns_only(roles):
    _, _, notebook, _, _ = roles
    for st in notebook:
        if set(as_list(st["Action"])) & set(INFERENCE_ACTIONS):
            assert set(as_list(st["Action"])) == set(INFERENCE_ACTIONS)
            assert len(as_list(st["Resource"])) == 4 and "*" not in as_list(st["Resource"])


def test_the_notebook_passes_the_model_role_to_sagemaker_only(roles):
    _, _, notebook, training, _ = roles
    passes = [st for st in notebook if "iam:PassRole" in as_list(st["Action"])]
    assert passes == [{"Action": "iam:PassRole", "Effect": "Allow", "Resource": {"Fn::GetAtt": [training, "Arn"]},
                       "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}}]

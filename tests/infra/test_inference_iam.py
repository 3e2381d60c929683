"""IAM for using a trained model (launcher/inference.py): a model role of its own (model artifacts and inference/,
no dataset), and the notebook role creates, invokes and deletes models, transform jobs and endpoints of this account
and region, and passes the model role to SageMaker only. Decided by a real IAM evaluator (tests/infra/iam.py) on the
synthesized template's policies, both network variants.
"""

from __future__ import annotations

import pytest

from infra.constructs.roles import INFERENCE_ACTIONS
from tests.infra.iam import ACCOUNT, REGION, Call, arn_of, expect, role_id, stack_key_and_network

S3 = {"aws:SecureTransport": "true"}
KINDS = {"Model": "model", "TransformJob": "transform-job", "EndpointConfig": "endpoint-config",
         "Endpoint": "endpoint"}


def _logs(group: str, stream: str | None = None) -> str:
    arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}"
    return f"{arn}:log-stream:{stream}" if stream else f"{arn}:*"


def _sagemaker(kind: str, name: str, *, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name}"


@pytest.fixture(scope="module", params=["default", "vpc"])
def stack(synth, request):
    s = synth.get(request.param)
    bucket = next(k for k, v in s.resources("AWS::S3::Bucket").items() if "LoggingConfiguration" in v["Properties"])
    return s.doc, arn_of(s.doc, bucket), request.param


def test_the_model_role_reads_model_artifacts_and_transform_input_and_writes_its_output(stack):
    doc, bucket, variant = stack
    expect(doc, "ModelRole", [
        (Call("s3:GetObject", f"{bucket}/jobs/job/output/model.tar.gz", S3), True),
        (Call("s3:GetObject", f"{bucket}/inference/run/input/a.dcm", S3), True),
        (Call("s3:PutObject", f"{bucket}/inference/run/output/a.dcm.out", S3), True),
        (Call("s3:PutObject", f"{bucket}/jobs/job/output/model.tar.gz", S3), False),  # it never changes a model
        # No patient data, no checkpoints, no code, nothing outside its prefixes.
        *[(Call("s3:GetObject", f"{bucket}/{key}", S3), False)
          for key in ("datasets/demo/train/a.dcm", "checkpoints/job/epoch-0001.pt", "code/job/input/code/train.py",
                      "a.dcm")],
    ], label=variant)


def test_the_training_role_has_nothing_of_inference(synth):
    doc = synth.get("default").doc
    bucket = arn_of(doc, next(k for k, v in doc["Resources"].items()
                              if v["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in v["Properties"]))
    expect(doc, "TrainingRole", [
        (Call("s3:GetObject", f"{bucket}/inference/run/input/a.dcm", S3), False),
        (Call("logs:PutLogEvents", _logs("/aws/sagemaker/TransformJobs", "transform/i-0123456789abcdef0")), False),
    ])


def test_the_model_role_pulls_the_image_and_logs_transform_jobs_and_endpoints(stack):
    doc, _, variant = stack
    cases = [(Call("ecr:GetAuthorizationToken", "*"), True), (Call("cloudwatch:PutMetricData", "*"), True)]
    for group, stream in (("/aws/sagemaker/TransformJobs", "transform/i-0123456789abcdef0-1796597314"),
                          ("/aws/sagemaker/Endpoints/MonaiDicomSageMaker-endpoint-1", "AllTraffic/i-0123456789abcdef")):
        cases += [(Call("logs:CreateLogGroup", _logs(group)), True),
                  (Call("logs:CreateLogStream", _logs(group, stream)), True),
                  (Call("logs:PutLogEvents", _logs(group, stream)), True)]
    cases += [(Call("logs:PutLogEvents", _logs("/aws/sagemaker/TrainingJobs", "job/algo-1-1796597314")), False)]
    expect(doc, "ModelRole", cases, label=variant)


def test_the_notebook_manages_inference_resources_of_this_account_and_region_only(stack):
    doc, _, variant = stack
    # The create calls are granted alone, with conditions (test_isolation_iam): here, each as the launcher sends it.
    key, subnets, groups = stack_key_and_network(doc)
    vpc = {"sagemaker:VpcSubnets": subnets, "sagemaker:VpcSecurityGroupIds": groups} if subnets else {}
    launcher_sends = {
        "sagemaker:CreateModel": {"sagemaker:NetworkIsolation": "true", **vpc},
        "sagemaker:CreateTransformJob": {"sagemaker:VolumeKmsKeyArn": key, "sagemaker:OutputKmsKeyArn": key},
        "sagemaker:CreateEndpointConfig": {"sagemaker:VolumeKmsKeyArn": key},
    }
    cases = []
    for action in [*INFERENCE_ACTIONS, *launcher_sends]:
        noun = action.split(":", 1)[1].removeprefix("Create").removeprefix("Describe").removeprefix(
            "Delete").removeprefix("Stop").removeprefix("Invoke")
        kind = KINDS[noun]
        context = launcher_sends.get(action, {})
        cases += [(Call(action, _sagemaker(kind, "monaidicomsagemaker-x"), context), True),
                  (Call(action, _sagemaker(kind, "monaidicomsagemaker-x", region="us-west-2"), context), False),
                  (Call(action, _sagemaker(kind, "monaidicomsagemaker-x", account="210987654321"), context), False)]
    expect(doc, "NotebookRole", cases, label=variant)


def test_the_notebook_passes_the_training_and_model_roles_to_sagemaker_only(stack):
    doc, _, variant = stack
    to_sagemaker = {"iam:PassedToService": "sagemaker.amazonaws.com"}
    model, training = (arn_of(doc, role_id(doc, r)) for r in ("ModelRole", "TrainingRole"))
    expect(doc, "NotebookRole", [
        (Call("iam:PassRole", model, to_sagemaker), True),
        (Call("iam:PassRole", training, to_sagemaker), True),
        (Call("iam:PassRole", model, {"iam:PassedToService": "lambda.amazonaws.com"}), False),
        (Call("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/SomeAdminRole", to_sagemaker), False),
    ], label=variant)


def test_the_model_role_is_an_output_and_a_value_of_the_notebook(synth):
    doc = synth.get("default").doc
    model = role_id(doc, "ModelRole")
    assert doc["Outputs"]["ModelRoleArn"]["Value"] == {"Fn::GetAtt": [model, "Arn"]}


def test_the_training_role_reads_the_pseudonym_key_and_the_model_role_does_not(stack):
    doc, bucket, variant = stack
    key = f"{bucket}/secrets/pseudonym-key"
    expect(doc, "TrainingRole", [(Call("s3:GetObject", key, S3), True), (Call("s3:PutObject", key, S3), False)],
           label=variant)
    expect(doc, "ModelRole", [(Call("s3:GetObject", key, S3), False)], label=variant)

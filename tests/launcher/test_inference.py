"""launcher/inference.py against the emulator: what CreateModel, CreateTransformJob, CreateEndpointConfig and
CreateEndpoint carry (image, role, model data, KMS keys, network isolation, VPC), read from the requests themselves.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from launcher import inference
from tests.launcher.conftest import BUCKET

MODEL_DATA = f"s3://{BUCKET}/jobs/job-1/output/model.tar.gz"


@pytest.mark.parametrize("vpc", [False, True])
def test_create_model_runs_the_stack_image_isolated_with_the_model_role(stack, recording, vpc):
    settings = stack.vpc_settings if vpc else stack.settings
    name = inference.create_model(settings, MODEL_DATA, name=f"model-vpc-{vpc}")
    (call,) = recording.calls("CreateModel")
    assert call["ModelName"] == name
    assert call["PrimaryContainer"] == {"Image": settings.training_image_uri, "ModelDataUrl": MODEL_DATA,
                                        "Mode": "SingleModel"}
    assert call["ExecutionRoleArn"] == settings.training_role_arn
    assert call["EnableNetworkIsolation"] is True
    if vpc:
        assert call["VpcConfig"] == {"Subnets": list(settings.subnets),
                                     "SecurityGroupIds": list(settings.security_group_ids)}
    else:
        assert "VpcConfig" not in call


def test_a_model_needs_a_model_tar_gz():
    with pytest.raises(ValueError, match="model.tar.gz"):
        inference.create_model(None, "s3://bucket/jobs/job-1/output/")  # type: ignore[arg-type]


def test_a_transform_reads_and_writes_the_inference_prefix_encrypted_with_the_stack_key(stack, recording):
    settings = stack.settings
    model = inference.create_model(settings, MODEL_DATA, name="model-transform")
    source = inference.inference_uri(settings, "scan-1", "input")
    job = inference.start_transform(settings, model, source, content_type=inference.ZIP, name="transform-1")
    (call,) = recording.calls("CreateTransformJob")
    assert call["TransformJobName"] == job and call["ModelName"] == model
    assert call["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix", "S3Uri": source}
    assert call["TransformInput"]["ContentType"] == "application/zip"
    assert call["TransformInput"]["SplitType"] == "None" and call["BatchStrategy"] == "SingleRecord"
    assert call["TransformOutput"] == {"S3OutputPath": f"s3://{BUCKET}/inference/scan-1/output/",
                                       "Accept": "application/json", "AssembleWith": "None",
                                       "KmsKeyId": settings.data_key_arn}
    assert call["TransformResources"]["VolumeKmsKeyId"] == settings.data_key_arn
    described = inference.wait_for_transform(settings, job, poll_s=0, sleep=lambda _: None)
    assert described["TransformJobStatus"] == "Completed"


@pytest.mark.parametrize("uri", [f"s3://{BUCKET}/datasets/x/", "s3://another-bucket/inference/x/input/"])
def test_a_transform_outside_the_inference_prefix_is_refused_before_any_call(stack, recording, uri):
    with pytest.raises(ValueError, match="inference/"):
        inference.start_transform(stack.settings, "model", uri)
    assert recording.calls("CreateTransformJob") == []


def _canned_answer(endpoint: str, region: str, answer: dict) -> None:
    """moto answers InvokeEndpoint from a queue the test fills (its sagemaker-runtime has no model to run)."""
    results = {"account_id": "123456789012", "region": region, "results": [
        {"Body": json.dumps(answer), "ContentType": "application/json", "InvokedProductionVariant": "AllTraffic",
         "CustomAttributes": ""}]}
    request = urllib.request.Request(f"{endpoint}/moto-api/static/sagemaker/endpoint-results",
                                     data=json.dumps(results).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def test_an_endpoint_is_created_encrypted_invoked_and_deleted(emulator, stack, recording):
    settings = stack.vpc_settings
    answer = {"predictions": [{"file": "body", "SOPInstanceUID": "1.2.3", "label": "normal",
                               "probabilities": {"abnormal": 0.1, "normal": 0.9}}]}
    _canned_answer(emulator.endpoint, settings.region, answer)
    model = inference.create_model(settings, MODEL_DATA, name="model-endpoint")
    with inference.endpoint(settings, model, instance_type="ml.m5.large", poll_s=1) as name:
        assert inference.invoke_endpoint(settings, name, b"DICM") == answer
    inference.delete_model(settings, model)
    (config,) = recording.calls("CreateEndpointConfig")
    assert config["EndpointConfigName"] == name
    assert config["KmsKeyId"] == settings.data_key_arn
    assert config["ProductionVariants"] == [{"VariantName": "AllTraffic", "ModelName": model,
                                             "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}]
    (created,) = recording.calls("CreateEndpoint")
    assert created == {"EndpointName": name, "EndpointConfigName": name}
    invoked = [r for r in recording.requests() if r.path.endswith(f"/endpoints/{name}/invocations")]
    assert len(invoked) == 1 and invoked[0].body == b"DICM"
    assert {k.lower(): v for k, v in invoked[0].headers.items()}["content-type"] == "application/dicom"
    assert recording.calls("DeleteEndpoint") == [{"EndpointName": name}]
    assert recording.calls("DeleteEndpointConfig") == [{"EndpointConfigName": name}]
    assert recording.calls("DeleteModel") == [{"ModelName": model}]
    assert json.dumps(recording.calls("CreateModel")[0]["VpcConfig"])

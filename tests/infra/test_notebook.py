"""The notebook instance and its lifecycle configuration, in the default and the VPC variant."""

from __future__ import annotations

import pytest

from tests.infra.conftest import REPO
from tests.infra.iam import ACCOUNT, REGION, Call, expect, role_id


def _one(s, kind: str) -> tuple[str, dict]:
    [(logical_id, resource)] = s.resources(kind).items()
    return logical_id, resource["Properties"]


@pytest.mark.parametrize("variant", ["default", "vpc"])
def test_notebook_is_al2023_t2_medium_100gb_on_the_stack_key_with_imdsv2_and_no_root(synth, variant):
    s = synth.get(variant)
    _, props = _one(s, "AWS::SageMaker::NotebookInstance")
    key = next(iter(s.resources("AWS::KMS::Key")))
    assert props["InstanceType"] == "ml.t2.medium"
    assert props["VolumeSizeInGB"] == 100
    assert props["PlatformIdentifier"] == "notebook-al2023-v1"
    assert props["KmsKeyId"] == {"Ref": key}
    assert props["RootAccess"] == "Disabled"
    assert props["InstanceMetadataServiceConfiguration"] == {"MinimumInstanceMetadataServiceVersion": "2"}
    assert props["RoleArn"] == {"Fn::GetAtt": [role_id(s.doc, "NotebookRole"), "Arn"]}


def test_lifecycle_config_is_named_after_the_stack_and_really_attached(synth):
    s = synth.get("default")
    config_id, config = _one(s, "AWS::SageMaker::NotebookInstanceLifecycleConfig")
    _, props = _one(s, "AWS::SageMaker::NotebookInstance")
    assert config["NotebookInstanceLifecycleConfigName"] == "MonaiDicomSageMaker-lifecycle"
    assert props["NotebookInstanceName"] == "MonaiDicomSageMaker-notebook"
    assert props["LifecycleConfigName"] == {"Fn::GetAtt": [config_id, "NotebookInstanceLifecycleConfigName"]}


def _script(s, hook: str) -> str:
    """The hook's script as text, with CloudFormation references shown as <Ref ...>."""
    _, config = _one(s, "AWS::SageMaker::NotebookInstanceLifecycleConfig")
    [content] = [h["Content"] for h in config[hook]]
    body = content["Fn::Base64"]
    if isinstance(body, str):
        return body
    return "".join(p if isinstance(p, str) else f"<{p}>" for p in body["Fn::Join"][1])


def test_on_create_clones_the_configured_repository_at_its_ref(synth):
    script = _script(synth.get("default"), "OnCreate")
    assert f"'{REPO['repoUrl']}'" in script and f"'{REPO['repoRef']}'" in script
    assert "@@" not in script and script.startswith("#!/bin/bash")


def test_on_start_carries_every_stack_value(synth):
    s = synth.get("default")
    script = _script(s, "OnStart")
    bucket = next(k for k, v in s.resources("AWS::S3::Bucket").items() if "LoggingConfiguration" in v["Properties"])
    for ref in (f"{{'Ref': '{bucket}'}}", f"'{role_id(s.doc, 'TrainingRole')}', 'Arn'", "'AWS::Region'"):
        assert ref in script, ref
    assert "@@" not in script


def test_default_notebook_has_direct_internet_and_vpc_variant_none(synth):
    _, default = _one(synth.get("default"), "AWS::SageMaker::NotebookInstance")
    assert default["DirectInternetAccess"] == "Enabled" and "SubnetId" not in default
    vpc = synth.get("vpc")
    _, props = _one(vpc, "AWS::SageMaker::NotebookInstance")
    assert props["DirectInternetAccess"] == "Disabled"
    private = [k for k, v in vpc.resources("AWS::EC2::Subnet").items() if "private" in k.lower()]
    assert props["SubnetId"] in [{"Ref": k} for k in private]
    sg = next(k for k in vpc.resources("AWS::EC2::SecurityGroup") if "Workloads" in k)
    assert props["SecurityGroupIds"] == [{"Fn::GetAtt": [sg, "GroupId"]}]


def test_notebook_may_write_its_logs_and_stop_only_itself(synth):
    instances = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:notebook-instance"
    logs = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/NotebookInstances"
    expect(synth.get("default").doc, "NotebookRole", [
        (Call("sagemaker:StopNotebookInstance", f"{instances}/monaidicomsagemaker-notebook"), True),
        (Call("sagemaker:StopNotebookInstance", f"{instances}/another-notebook"), False),
        (Call("logs:PutLogEvents", f"{logs}:log-stream:MonaiDicomSageMaker-notebook/LifecycleConfigOnStart"), True),
    ])


def test_outputs_name_the_notebook_and_its_console_url(synth):
    outputs = synth.get("default").doc["Outputs"]
    assert "NotebookName" in outputs
    url = str(outputs["NotebookUrl"]["Value"])
    assert "console.aws.amazon.com/sagemaker" in url
    assert "notebook-instances/openNotebook/MonaiDicomSageMaker-notebook" in url

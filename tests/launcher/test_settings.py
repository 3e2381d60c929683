"""Settings from the notebook's values file and from the stack's CloudFormation outputs (a stack in the emulator)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest

from demo.emulator import Emulator
from infra.config import SETTINGS
from infra.lifecycle import render
from launcher.settings import (
    DEFAULT_RUNNER,
    RUNNER_VARIABLE,
    VALUES_FILE,
    Settings,
    SettingsError,
    load_settings,
)
from launcher.stack_values import OUTPUT_OF, STACK_VALUES

# moto creates the stacks below although it models no WaitConditionHandle (the template needs one resource).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS.*WaitConditionHandle:UserWarning")

VALUES: dict[str, Any] = {
    "stack_name": "MonaiDicomSageMaker",
    "region": "eu-west-1",
    "bucket": "monai-dicom-data",
    "data_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/0b1f6a52-3f5e-4a5c-9a8e-4f2c2b7c1d11",
    "training_role_arn": "arn:aws:iam::123456789012:role/Training",
    "model_role_arn": "arn:aws:iam::123456789012:role/Model",
    "notebook_role_arn": "arn:aws:iam::123456789012:role/Notebook",
    "training_image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/cdk-assets:abc123",
    "training_image_variant": "gpu",
    "subnets": ["subnet-1", "subnet-2"],
    "security_group_ids": ["sg-1"],
    "repo_url": "https://github.com/example-org/monai-dicom-sagemaker.git",
    "repo_ref": "main",
    "deployed_commit": "0123456789abcdef0123456789abcdef01234567",
    "log_retention_days": "731",
}


def write_values(path: Path, values: Mapping[str, object]) -> Path:
    path.write_text(json.dumps(values))
    return path


def test_values_file_is_the_one_the_lifecycle_script_writes() -> None:
    assert str(VALUES_FILE) == render.VALUES_FILE
    required = {value.key for value in STACK_VALUES if value.required}
    assert required <= set(render.STACK_VALUE_KEYS) - set(render.OPTIONAL_KEYS)  # always written
    # Everything written is read: each key is a field of Settings (the image variant's is image_variant).
    fields = {field.name for field in dataclasses.fields(Settings)} | {"training_image_variant"}
    assert set(render.STACK_VALUE_KEYS) <= fields
    assert set(VALUES) == set(render.STACK_VALUE_KEYS)


def test_values_file_gives_every_value(tmp_path: Path) -> None:
    settings = load_settings(values_file=write_values(tmp_path / "stack.json", VALUES), environ={})
    assert settings == Settings(
        stack_name="MonaiDicomSageMaker", region="eu-west-1", bucket="monai-dicom-data",
        data_key_arn=VALUES["data_key_arn"], training_role_arn=VALUES["training_role_arn"],
        training_image_uri=VALUES["training_image_uri"], notebook_role_arn=VALUES["notebook_role_arn"],
        subnets=("subnet-1", "subnet-2"), security_group_ids=("sg-1",), runner=DEFAULT_RUNNER, image_variant="gpu",
        repo_url=VALUES["repo_url"], repo_ref="main", deployed_commit=VALUES["deployed_commit"],
        source=f"values file {tmp_path / 'stack.json'}", model_role_arn=VALUES["model_role_arn"],
        log_retention_days=731,
    )
    assert settings.subnets  # jobs run in the stack's private subnets


def test_values_a_stack_from_before_them_lacks_get_their_defaults(tmp_path: Path) -> None:
    values = {k: v for k, v in VALUES.items() if k not in ("deployed_commit", "log_retention_days")}
    settings = load_settings(values_file=write_values(tmp_path / "stack.json", values), environ={})
    assert (settings.deployed_commit, settings.log_retention_days) == ("", 365)
    # The stack's own default of logRetentionDays (infra/config.py), and a Settings made by hand (tests, bench).
    assert settings.log_retention_days == SETTINGS["logRetentionDays"][0] == Settings.log_retention_days


def test_a_stack_without_vpc_has_empty_lists(tmp_path: Path) -> None:
    values = {**VALUES, "subnets": [], "security_group_ids": []}
    settings = load_settings(values_file=write_values(tmp_path / "stack.json", values), environ={})
    assert (settings.subnets, settings.security_group_ids) == ((), ())


@pytest.mark.parametrize("key", ["bucket", "training_image_uri", "data_key_arn", "region"])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_a_missing_value_names_it_and_the_file(tmp_path: Path, key: str, how: str) -> None:
    values = {k: v for k, v in VALUES.items() if k != key} if how == "missing" else {**VALUES, key: " "}
    path = write_values(tmp_path / "stack.json", values)
    with pytest.raises(SettingsError) as error:
        load_settings(values_file=path, environ={})
    message = str(error.value)
    assert key in message and str(path) in message and f"is {how}" in message
    assert "restart the notebook instance" in message


def test_no_values_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"values file .*nowhere\.json does not exist; .*lifecycle script"):
        load_settings(values_file=tmp_path / "nowhere.json", environ={})


def test_the_runner_comes_from_the_environment(tmp_path: Path) -> None:
    path = write_values(tmp_path / "stack.json", VALUES)
    assert load_settings(values_file=path, environ={RUNNER_VARIABLE: "local"}).runner == "local"
    assert load_settings(values_file=path, environ={}).runner == DEFAULT_RUNNER


@pytest.fixture(scope="module")
def infra_output_names() -> list[str]:
    """The names of the outputs infra/stack.py declares (with a VPC), from its construct tree (no synth needed)."""
    from aws_cdk import CfnOutput

    from infra.app import build_app

    context = {"vpc": "true", "trainingImageUri": "public.ecr.aws/deep-learning-containers/pytorch:2.13-cpu",
               "repoUrl": "https://github.com/example-org/monai-dicom-sagemaker.git", "repoRef": "main"}
    _, stack = build_app(context)
    return sorted(c.node.id for c in stack.node.children if isinstance(c, CfnOutput))


def create_stack(name: str, outputs: dict[str, str]) -> None:
    """A CloudFormation stack in the emulator whose outputs are these literal values."""
    template = {"Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {k: {"Value": v} for k, v in outputs.items()}}
    boto3.Session().client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


def test_stack_outputs_give_every_value(emulator: Emulator, infra_output_names: list[str]) -> None:
    read = set(OUTPUT_OF.values())
    assert {value.output for value in STACK_VALUES if value.required and value.output} <= set(infra_output_names)
    # Every output of the stack is read here, or deliberately not (what people open, not what jobs need).
    assert set(infra_output_names) <= read | {"NotebookName", "NotebookUrl"}
    literal = {
        "DataBucketName": "monai-dicom-data", "DataKeyArn": VALUES["data_key_arn"],
        "TrainingRoleArn": VALUES["training_role_arn"], "NotebookRoleArn": VALUES["notebook_role_arn"],
        "TrainingImageUri": VALUES["training_image_uri"], "Region": "us-east-1", "NotebookName": "nb",
        "NotebookUrl": "https://example.invalid", "SubnetIds": "subnet-1,subnet-2", "SecurityGroupIds": "sg-1",
        "TrainingImageVariant": "cpu", "ModelRoleArn": VALUES["model_role_arn"], "LogRetentionDays": "731",
    }
    create_stack("OutputsStack", {name: literal[name] for name in infra_output_names})
    settings = load_settings("OutputsStack", environ={})
    assert (settings.stack_name, settings.region, settings.bucket) == ("OutputsStack", "us-east-1", "monai-dicom-data")
    assert (settings.data_key_arn, settings.training_role_arn, settings.training_image_uri) == (
        VALUES["data_key_arn"], VALUES["training_role_arn"], VALUES["training_image_uri"])
    assert (settings.subnets, settings.security_group_ids) == (("subnet-1", "subnet-2"), ("sg-1",))
    assert settings.model_role_arn == VALUES["model_role_arn"]
    assert settings.log_retention_days == 731
    assert settings.source == "the outputs of CloudFormation stack 'OutputsStack' in us-east-1"


def test_a_missing_output_names_it_and_the_stack(emulator: Emulator) -> None:
    create_stack("NoImageStack", {"DataBucketName": "b-u-c", "DataKeyArn": "k", "TrainingRoleArn": "r",
                                  "Region": "us-east-1"})
    with pytest.raises(SettingsError) as error:
        load_settings("NoImageStack", environ={})
    assert str(error.value).startswith("stack value output TrainingImageUri (training_image_uri) is missing in the "
                                       "outputs of CloudFormation stack 'NoImageStack' in us-east-1")


def test_a_missing_stack_names_it_and_the_region(emulator: Emulator) -> None:
    with pytest.raises(SettingsError, match=r"CloudFormation stack 'Nowhere' does not exist in us-east-1: deploy it"):
        load_settings("Nowhere", environ={})


@pytest.mark.skipif(VALUES_FILE.exists(), reason="runs where the notebook's values file is not")
def test_without_arguments_both_places_are_named(emulator: Emulator) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(environ={})
    assert "CloudFormation stack 'MonaiDicomSageMaker' does not exist in us-east-1" in str(error.value)
    assert f"there is no values file {VALUES_FILE} either" in str(error.value)

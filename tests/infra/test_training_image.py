"""The training image asset: built from training/ for linux/amd64 on the right base, or not built at all."""

from __future__ import annotations

import json

import pytest

from infra.constructs.training_image import BASE_IMAGES, training_code_commit
from tests.infra.conftest import ACCOUNT_IMAGE


def _docker_images(s) -> dict:
    [assets] = s.outdir.glob("*.assets.json")
    return json.loads(assets.read_text()).get("dockerImages", {})


@pytest.mark.parametrize(("variant", "base"), [("default", BASE_IMAGES["cpu"]), ("gpu", BASE_IMAGES["gpu"])])
def test_image_is_built_from_training_for_amd64_on_the_dlc(synth, variant, base):
    s = synth.get(variant)
    [image] = _docker_images(s).values()
    assert image["source"]["platform"] == "linux/amd64"
    args = image["source"]["dockerBuildArgs"]
    assert args["BASE_IMAGE"] == base
    assert args["CODE_COMMIT"] == training_code_commit()  # the image records the code it carries
    staged = s.outdir / image["source"]["directory"]
    assert (staged / "Dockerfile").is_file() and (staged / "requirements.txt").is_file()
    assert "public.ecr.aws/deep-learning-containers/pytorch:2.13-" in base


def test_existing_image_uri_builds_nothing_and_is_pulled_from_its_repository(synth):
    s = synth.get("existing_data")
    assert _docker_images(s) == {}
    assert s.doc["Outputs"]["TrainingImageUri"]["Value"] == ACCOUNT_IMAGE
    policies = json.dumps(s.resources("AWS::IAM::Policy"))
    assert ":ecr:eu-west-1:123456789012:repository/team/monai-training" in policies

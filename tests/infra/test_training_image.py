"""The training image asset: built from training/ for linux/amd64 on the right base, or not built at all."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infra.app import build_app
from infra.constructs.training_image import BASE_IMAGES, base_image, training_code_commit
from tests.image.dockerfile import image_environment
from tests.infra.conftest import ACCOUNT_IMAGE, REPO

DIGEST = "sha256:" + "0123456789abcdef" * 4


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


def test_a_base_digest_pins_the_build_to_that_image_of_the_tag(tmp_path: Path):
    # The whole app, as `make deploy CDK_ARGS="-c imageVariant=gpu -c trainingBaseDigest=sha256:..."` builds it.
    app, _ = build_app({**REPO, "imageVariant": "gpu", "trainingBaseDigest": DIGEST}, outdir=str(tmp_path))
    [assets] = Path(app.synth().directory).glob("*.assets.json")
    [image] = json.loads(assets.read_text())["dockerImages"].values()
    pinned = image["source"]["dockerBuildArgs"]["BASE_IMAGE"]
    # name:tag@digest: Docker pulls by the digest; the tag stays as the note of what the digest is of.
    assert pinned == f"{BASE_IMAGES['gpu']}@{DIGEST}"
    # The image's lineage names exactly what it was built on (the job copies TRAINING_IMAGE_BASE into the bundle).
    assert image_environment({"BASE_IMAGE": pinned})["TRAINING_IMAGE_BASE"] == pinned
    assert image_environment()["TRAINING_IMAGE_BASE"] == BASE_IMAGES["cpu"]


@pytest.mark.parametrize(("variant", "digest", "message"), [
    ("cpu", "sha256:" + "0" * 63, "is not sha256: and 64 lowercase hex digits"),
    ("cpu", "2.13-cpu", "is not sha256: and 64 lowercase hex digits"),
    ("tpu", "", "is not one of ['cpu', 'gpu']"),
])
def test_base_image_refuses_what_docker_could_not_pull(variant: str, digest: str, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        base_image(variant, digest)
    assert base_image("cpu") == BASE_IMAGES["cpu"]

"""Context settings: defaults, parsing, and errors that name the setting."""

from __future__ import annotations

import re

import pytest

from infra.config import SETTINGS, ConfigError, InfraConfig
from tests.conftest import ROOT
from tests.infra.conftest import REPO

ORIGIN = "https://github.com/example-org/monai-dicom-sagemaker.git"
HEAD = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "sha256:" + "0123456789abcdef" * 4


def _config(context: dict, **git: str) -> InfraConfig:
    return InfraConfig.from_mapping(context, **{"origin_url": ORIGIN, "head_commit": HEAD, **git})


def test_defaults_keep_data_build_the_cpu_image_and_clone_the_deployed_commit():
    config = _config({})
    assert config.stack_name == "MonaiDicomSageMaker"
    assert config.storage.destroy_data is False
    assert config.storage.existing_bucket_name == "" and config.storage.existing_key_arn == ""
    assert config.image.image_uri == "" and config.image.variant == "cpu"
    nb = config.notebook
    assert (nb.instance_type, nb.volume_gb, nb.root_access, nb.idle_stop_minutes) == ("ml.t2.medium", 100, False, 60)
    assert (nb.repo_url, nb.repo_ref, nb.deployed_commit) == (ORIGIN, HEAD, HEAD)
    assert config.vpc is False
    assert config.image.base_digest == ""  # the base container's tag as the registry serves it that day


def test_a_base_digest_is_kept_as_given():
    assert _config({"trainingBaseDigest": f" {DIGEST} "}).image.base_digest == DIGEST


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("false", False), (True, True), ("False", False)])
def test_booleans_parse_strings_and_booleans(raw, expected):
    assert _config({"destroyData": raw}).storage.destroy_data is expected
    assert _config({"vpc": raw}).vpc is expected


@pytest.mark.parametrize(("context", "message"), [
    ({"destroyData": "maybe"}, "destroyData='maybe' is not a boolean"),
    ({"imageVariant": "tpu"}, "imageVariant='tpu' is not allowed: use cpu or gpu"),
    ({"dataBucketName": "Bad_Bucket"}, "dataBucketName='Bad_Bucket' is not a valid S3 bucket name"),
    ({"dataBucketName": "b-1", "dataKeyArn": "alias/x"}, "dataKeyArn='alias/x' is not a KMS key ARN"),
    ({"dataKeyArn": "arn:aws:kms:us-east-1:123456789012:key/12345678-1234-1234-1234-123456789012"},
     "dataKeyArn is set without dataBucketName"),
    ({"noncurrentVersionExpiryDays": "0"}, "noncurrentVersionExpiryDays=0 is out of range"),
    ({"stackName": "9lives"}, "stackName='9lives' is not a CloudFormation stack name"),
    ({"destroydata": "true"}, "unknown context settings ['destroydata']"),
    ({"notebookInstanceType": "t2.medium"}, "notebookInstanceType='t2.medium' is not a SageMaker instance type"),
    ({"notebookVolumeGb": "2"}, "notebookVolumeGb=2 is out of range: use 5 to 16384"),
    ({"notebookIdleStopMinutes": "-1"}, "notebookIdleStopMinutes=-1 is out of range"),
    ({"repoUrl": "git@github.com:org/repo.git"}, "is an SSH URL: the notebook instance clones without credentials"),
    ({"repoUrl": "/srv/git/repo"}, "is a local path"),
    ({"trainingBaseDigest": "2.13-cpu"}, "trainingBaseDigest='2.13-cpu' is not an image digest: give sha256: and 64"),
    ({"trainingBaseDigest": "sha256:" + "A" * 64}, "is not an image digest"),
    ({"trainingBaseDigest": "sha256:" + "a" * 63}, "is not an image digest"),
    ({"trainingBaseDigest": DIGEST, "trainingImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/x:1"},
     "trainingBaseDigest is set with trainingImageUri, which builds nothing"),
])
def test_bad_settings_are_errors_naming_the_setting(context, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _config(context)


def test_an_unusable_origin_is_an_error_that_says_how_to_set_repo_url():
    with pytest.raises(ConfigError, match=re.escape("repoUrl (default: this checkout's origin remote)='/tmp/x'")):
        _config({}, origin_url="/tmp/x")
    with pytest.raises(ConfigError, match=re.escape("no `origin` remote: deploy with -c repoUrl=https://")):
        _config({}, origin_url="")
    assert _config({"repoUrl": ORIGIN}, origin_url="/tmp/x").notebook.repo_url == ORIGIN


def test_repo_ref_defaults_to_the_deployed_commit_or_must_be_given():
    assert _config({"repoRef": "v1.2"}).notebook.repo_ref == "v1.2"
    with pytest.raises(ConfigError, match="repoRef is not set and the commit being deployed is unknown"):
        _config({}, head_commit="")


def test_every_setting_is_documented_in_the_readme_with_its_default():
    readme = (ROOT / "README.md").read_text()
    for key, (default, _) in SETTINGS.items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert re.search(rf"\|\s*`{key}`\s*\|\s*{re.escape(shown or '(')}", readme, re.IGNORECASE), key


def test_make_destroy_names_the_stack_the_app_builds(tmp_path):
    """The rule "-c value, else cdk.json, else the default" is written once (infra/config.py context_value): the app
    and the teardown read the stack name through it."""
    from infra.app import build_app
    from infra.config import context_value
    from infra.teardown import stack_name

    for given in ({}, {"stackName": "Other"}):
        _, stack = build_app({**REPO, **given}, outdir=str(tmp_path / (given.get("stackName") or "default")))
        assert stack_name(dict(given)) == stack.stack_name == context_value("stackName", given)


def test_the_defaults_cdk_json_repeats_are_those_of_settings():
    """cdk.json shows users a few defaults to edit; as shipped, they are SETTINGS' (infra/config.py)."""
    from infra.config import cdk_json_context

    shipped = {key: value for key, value in cdk_json_context().items() if not key.startswith("@")}
    assert shipped and set(shipped) <= set(SETTINGS)
    assert shipped == {key: SETTINGS[key][0] for key in shipped}

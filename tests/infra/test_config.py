"""Context settings: defaults, parsing, and errors that name the setting."""

from __future__ import annotations

import re

import pytest

from infra.config import SETTINGS, ConfigError, InfraConfig
from tests.conftest import ROOT


def test_defaults_keep_data_and_build_the_cpu_image():
    config = InfraConfig.from_mapping({})
    assert config.stack_name == "MonaiDicomSageMaker"
    assert config.storage.destroy_data is False
    assert config.storage.existing_bucket_name == "" and config.storage.existing_key_arn == ""
    assert config.image.image_uri == "" and config.image.variant == "cpu"


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("false", False), (True, True), ("False", False)])
def test_destroy_data_parses_strings_and_booleans(raw, expected):
    assert InfraConfig.from_mapping({"destroyData": raw}).storage.destroy_data is expected


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
])
def test_bad_settings_are_errors_naming_the_setting(context, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        InfraConfig.from_mapping(context)


def test_every_setting_is_documented_in_the_readme_with_its_default():
    readme = (ROOT / "README.md").read_text()
    for key, (default, _) in SETTINGS.items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert re.search(rf"\|\s*`{key}`\s*\|\s*{re.escape(shown or '(none)')}", readme, re.IGNORECASE), key

"""The data bucket, its log bucket and the key: encryption, public access, TLS, versioning, retention."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match

from tests.infra.conftest import KEPT_KEY


def _bucket_ids(s) -> tuple[str, str]:
    buckets = s.resources("AWS::S3::Bucket")
    data = next(k for k, v in buckets.items() if "LoggingConfiguration" in v["Properties"])
    logs = next(k for k in buckets if k != data)
    return data, logs


def test_key_rotates_and_is_kept_by_default(synth):
    s = synth.get("default")
    s.template.has_resource("AWS::KMS::Key", {
        "Properties": {"EnableKeyRotation": True},
        "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
    })


def test_data_bucket_is_private_tls_only_kms_versioned_and_logged(synth):
    s = synth.get("default")
    data, logs = _bucket_ids(s)
    key = next(iter(s.resources("AWS::KMS::Key")))
    props = s.doc["Resources"][data]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": [key, "Arn"]}}
    assert rule["BucketKeyEnabled"] is True
    assert props["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": logs}, "LogFilePrefix": "data-bucket/"}
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


@pytest.mark.parametrize("bucket", ["data", "logs"])
def test_buckets_deny_plain_http_and_old_tls(synth, bucket):
    s = synth.get("default")
    bucket_id = dict(zip(("data", "logs"), _bucket_ids(s), strict=True))[bucket]
    policy = next(v for v in s.resources("AWS::S3::BucketPolicy").values()
                  if v["Properties"]["Bucket"] == {"Ref": bucket_id})
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
               for st in statements)
    assert any(st["Effect"] == "Deny" and st["Condition"] == {"NumericLessThan": {"s3:TlsVersion": 1.2}}
               for st in statements)


def test_log_bucket_uses_sse_s3_and_accepts_only_s3_log_delivery(synth):
    s = synth.get("default")
    data, logs = _bucket_ids(s)
    props = s.doc["Resources"][logs]["Properties"]
    [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert props["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    policy = next(v for v in s.resources("AWS::S3::BucketPolicy").values()
                  if v["Properties"]["Bucket"] == {"Ref": logs})
    allow = [st for st in policy["Properties"]["PolicyDocument"]["Statement"] if st["Effect"] == "Allow"]
    assert [st["Principal"] for st in allow] == [{"Service": "logging.s3.amazonaws.com"}]
    assert allow[0]["Condition"]["ArnLike"]["aws:SourceArn"] == {"Fn::GetAtt": [data, "Arn"]}


def test_old_versions_expire_and_incomplete_uploads_are_aborted(synth):
    s = synth.get("default")
    for bucket_id in _bucket_ids(s):
        rules = s.doc["Resources"][bucket_id]["Properties"]["LifecycleConfiguration"]["Rules"]
        assert rules == [{"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                          "NoncurrentVersionExpiration": {"NoncurrentDays": 90}, "Status": "Enabled"}]


def test_default_keeps_bucket_log_bucket_and_key_on_destroy(synth):
    s = synth.get("default")
    kept = {k for k, v in s.doc["Resources"].items() if v.get("DeletionPolicy") == "Retain"}
    # and the log-group handler's own logs, kept like every log of the stack
    assert kept == {*_bucket_ids(s), *s.resources("AWS::KMS::Key"), *s.resources("AWS::S3::BucketPolicy"),
                    *s.resources("AWS::Logs::LogGroup")}
    assert not s.resources("Custom::S3AutoDeleteObjects")


def test_destroy_data_removes_bucket_log_bucket_and_key(synth):
    s = synth.get("destroy_data")
    for kind in ("AWS::S3::Bucket", "AWS::KMS::Key"):
        for resource in s.resources(kind).values():
            assert resource["DeletionPolicy"] == "Delete"
    # Versioned buckets must be emptied before CloudFormation can delete them.
    emptied = {v["Properties"]["BucketName"]["Ref"] for v in s.resources("Custom::S3AutoDeleteObjects").values()}
    assert emptied == set(_bucket_ids(s))


def test_existing_bucket_and_key_are_used_and_nothing_is_created(synth):
    s = synth.get("existing_data")
    assert not s.resources("AWS::S3::Bucket") and not s.resources("AWS::KMS::Key")
    outputs = s.doc["Outputs"]
    assert outputs["DataKeyArn"]["Value"] == KEPT_KEY
    assert "kept-dicom-bucket" in str(outputs["DataBucketName"]["Value"])
    training_policy = str(s.resources("AWS::IAM::Policy"))
    assert ":s3:::kept-dicom-bucket/datasets/*" in training_policy and KEPT_KEY in training_policy


def test_outputs(synth):
    s = synth.get("default")
    s.template.has_output("DataBucketName", {"Value": {"Ref": Match.string_like_regexp("StorageDataBucket")}})
    assert set(s.doc["Outputs"]) >= {"DataBucketName", "DataKeyArn", "TrainingRoleArn", "NotebookRoleArn",
                                     "TrainingImageUri", "Region"}
    assert s.doc["Outputs"]["Region"]["Value"] == {"Ref": "AWS::Region"}


def test_kept_buckets_keep_their_policies(synth):
    """TLS-only access and log delivery must survive `cdk destroy` with the buckets they protect."""
    for resource in synth.get("default").resources("AWS::S3::BucketPolicy").values():
        assert resource["DeletionPolicy"] == "Retain"
    for resource in synth.get("destroy_data").resources("AWS::S3::BucketPolicy").values():
        assert resource.get("DeletionPolicy", "Delete") == "Delete"

"""The data bucket (DICOM data, code, model artifacts, checkpoints) and its access-log bucket."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge

# Key prefixes inside the data bucket; the roles are granted access by prefix.
DATASETS_PREFIX = "datasets/"  # uploaded DICOM with labels (read by jobs)
CODE_PREFIX = "code/"  # the training package the SDK stages per job (read by jobs)
JOBS_PREFIX = "jobs/"  # model artifacts and output data (written by jobs)
CHECKPOINTS_PREFIX = "checkpoints/"  # spot-safe checkpoints (read and written by jobs)
INFERENCE_PREFIX = "inference/"  # batch transform input (read) and output (written) of the served model
PSEUDONYM_KEY_OBJECT = "secrets/pseudonym-key"  # the patient pseudonyms' secret key (read by jobs; not the model)


class DataStorage(Construct):
    """Encrypted, versioned, TLS-only, logged storage that outlives the stack unless told otherwise.

    Attributes:
        bucket: the data bucket.
        log_bucket: the bucket receiving the data bucket's access logs (None for an existing data bucket).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        key: kms.IKey,
        destroy_data: bool,
        existing_bucket_name: str,
        noncurrent_version_expiry_days: int,
    ) -> None:
        """Create the buckets, or import an existing data bucket.

        Args:
            scope: parent construct.
            construct_id: construct id.
            key: the KMS key encrypting the data bucket.
            destroy_data: False retains both buckets on stack deletion.
            existing_bucket_name: name of a bucket to reuse; "" creates one.
            noncurrent_version_expiry_days: days before overwritten or deleted versions expire.
        """
        super().__init__(scope, construct_id)
        self.log_bucket: s3.IBucket | None = None
        self.bucket: s3.IBucket
        if existing_bucket_name:
            self.bucket = s3.Bucket.from_bucket_attributes(
                self, "DataBucket", bucket_name=existing_bucket_name, encryption_key=key
            )
            return

        removal = RemovalPolicy.DESTROY if destroy_data else RemovalPolicy.RETAIN
        common: dict[str, Any] = dict(
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal,
            # A versioned bucket cannot be deleted while it holds objects; only destroyData empties it.
            auto_delete_objects=destroy_data,
            lifecycle_rules=[
                s3.LifecycleRule(
                    noncurrent_version_expiration=Duration.days(noncurrent_version_expiry_days),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
        )
        log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            # S3 server access logging delivers only to buckets with SSE-S3 (not SSE-KMS) default encryption.
            encryption=s3.BucketEncryption.S3_MANAGED,
            **common,
        )
        self.log_bucket = log_bucket
        acknowledge(log_bucket, "HIPAA.Security-S3DefaultEncryptionKMS",
                    "S3 server access logging delivers only to buckets encrypted with SSE-S3, not SSE-KMS.")
        self.bucket = s3.Bucket(
            self,
            "DataBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,  # one KMS call per object batch, not per request: cheaper for many small files
            server_access_logs_bucket=log_bucket,
            server_access_logs_prefix="data-bucket/",
            **common,
        )
        if not destroy_data:
            # A kept bucket keeps its policy too: TLS-only access, and the log bucket's permission for S3 to deliver
            # access logs (an imported bucket's policy cannot be recreated by a later deployment).
            for bucket in (log_bucket, self.bucket):
                if bucket.policy is not None:
                    bucket.policy.apply_removal_policy(RemovalPolicy.RETAIN)
        acknowledge(self, "HIPAA.Security-S3BucketReplicationEnabled",
                    "Cross-region replication copies patient data to a second region: a data-residency and cost "
                    "decision for each team (add a replication rule to the bucket where it is wanted).")

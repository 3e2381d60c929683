"""The one stack: composes the constructs, wires access with grant_*, and declares the outputs."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from infra.config import InfraConfig
from infra.constructs.encryption import DataKey
from infra.constructs.roles import NotebookRole, TrainingRole
from infra.constructs.storage import CHECKPOINTS_PREFIX, CODE_PREFIX, DATASETS_PREFIX, JOBS_PREFIX, DataStorage
from infra.constructs.training_image import TrainingImage
from infra.nag import acknowledge, as_finding

S3_GRANT_WILDCARDS = ("Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*",
                      "Action::s3:DeleteObject*", "Action::s3:Abort*")


class MonaiDicomStack(Stack):
    """KMS key, data bucket, roles, training image and notebook for MONAI training on DICOM."""

    def __init__(self, scope: Construct, construct_id: str, *, config: InfraConfig, **kwargs: object) -> None:
        """Compose the stack from its configuration.

        Args:
            scope: the CDK app.
            construct_id: the stack name.
            config: every setting of this deployment.
            **kwargs: passed to Stack (env, synthesizer, ...).
        """
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        storage_cfg = config.storage
        key = DataKey(self, "DataKey", existing_key_arn=storage_cfg.existing_key_arn,
                      destroy_data=storage_cfg.destroy_data).key
        storage = DataStorage(
            self, "Storage", key=key, destroy_data=storage_cfg.destroy_data,
            existing_bucket_name=storage_cfg.existing_bucket_name,
            noncurrent_version_expiry_days=storage_cfg.noncurrent_version_expiry_days,
        )
        image = TrainingImage(self, "TrainingImage", image_uri=config.image.image_uri, variant=config.image.variant)
        training = TrainingRole(self, "TrainingRole", key=key)
        notebook = NotebookRole(self, "NotebookRole", key=key, training_role=training.role)

        bucket = storage.bucket
        # Jobs read data and the per-job code, write artifacts, and read and write checkpoints (to resume).
        bucket.grant_read(training.role, f"{DATASETS_PREFIX}*")
        bucket.grant_read(training.role, f"{CODE_PREFIX}*")
        bucket.grant_read_write(training.role, f"{JOBS_PREFIX}*")
        bucket.grant_read_write(training.role, f"{CHECKPOINTS_PREFIX}*")
        image.grant_pull(training.role)
        # The notebook uploads datasets, stages code and reads results: the whole bucket.
        bucket.grant_read_write(notebook.role)
        training.grant_pass_to_sagemaker(notebook.role)
        arn = as_finding(self, bucket.bucket_arn)
        acknowledge(training.role, "AwsSolutions-IAM5",
                    "Jobs read and write only their prefixes of the data bucket; object keys below them are chosen "
                    "per dataset and job.",
                    [*S3_GRANT_WILDCARDS, *(f"Resource::{arn}/{p}*" for p in
                                            (DATASETS_PREFIX, CODE_PREFIX, JOBS_PREFIX, CHECKPOINTS_PREFIX))])
        acknowledge(notebook.role, "AwsSolutions-IAM5",
                    "The notebook manages the data bucket's content (uploads, staged code, results): every object "
                    "of that one bucket.", [*S3_GRANT_WILDCARDS, f"Resource::{arn}/*"])

        outputs = {
            "DataBucketName": (bucket.bucket_name, "Bucket for DICOM data, job code, artifacts and checkpoints"),
            "DataKeyArn": (key.key_arn, "KMS key encrypting the bucket, notebook volume and jobs"),
            "TrainingRoleArn": (training.role.role_arn, "Execution role for training jobs"),
            "NotebookRoleArn": (notebook.role.role_arn, "Role of the notebook instance"),
            "TrainingImageUri": (image.image_uri, "Training image (SageMaker PyTorch + MONAI + pydicom)"),
            "Region": (self.region, "Region of the stack"),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)

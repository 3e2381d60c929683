"""The customer-managed KMS key that encrypts the data bucket, notebook volume and training jobs."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_kms as kms
from constructs import Construct


class DataKey(Construct):
    """A rotating KMS key, or the key a previous deployment kept.

    Attributes:
        key: the key to pass to buckets, the notebook and training jobs.
    """

    def __init__(self, scope: Construct, construct_id: str, *, existing_key_arn: str, destroy_data: bool) -> None:
        """Create or import the key.

        Args:
            scope: parent construct.
            construct_id: construct id.
            existing_key_arn: ARN of a kept key to reuse; "" creates a new one.
            destroy_data: False retains the key on stack deletion (kept data is unreadable without it).
        """
        super().__init__(scope, construct_id)
        self.key: kms.IKey
        if existing_key_arn:
            self.key = kms.Key.from_key_arn(self, "Key", existing_key_arn)
            return
        self.key = kms.Key(
            self,
            "Key",
            description="Encrypts DICOM data, model artifacts, the notebook volume and training jobs",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY if destroy_data else RemovalPolicy.RETAIN,
        )

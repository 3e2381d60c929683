"""The one stack: composes the constructs, wires access with grant_*, and declares the outputs."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import CfnOutput, Fn, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import InfraConfig
from infra.constructs.encryption import DataKey
from infra.constructs.log_groups import SageMakerLogGroups
from infra.constructs.network import Network
from infra.constructs.notebook import NotebookInstance
from infra.constructs.roles import ModelRole, NotebookRole, TrainingRole
from infra.constructs.storage import (
    CHECKPOINTS_PREFIX,
    CODE_PREFIX,
    DATASETS_PREFIX,
    INFERENCE_PREFIX,
    JOBS_PREFIX,
    PSEUDONYM_KEY_OBJECT,
    DataStorage,
)
from infra.constructs.training_image import TrainingImage
from infra.nag import acknowledge, as_finding
from infra.template_fixes import drop_redundant_provider_dependencies
from launcher.stack_values import STACK_VALUES

S3_GRANT_WILDCARDS = ("Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*", "Action::s3:Abort*")


def _grant_read_write(bucket: s3.IBucket, grantee: iam.IRole, pattern: str = "*") -> None:
    """grant_read and grant_put, and s3:DeleteObject alone on the same objects. grant_read_write's s3:DeleteObject*
    would include s3:DeleteObjectVersion: the bucket's versions are the data's last line of defence, and no role
    of this stack may remove one (a plain delete only adds a delete marker)."""
    bucket.grant_read(grantee, pattern)
    bucket.grant_put(grantee, pattern)
    grantee.add_to_principal_policy(iam.PolicyStatement(actions=["s3:DeleteObject"],
                                                        resources=[bucket.arn_for_objects(pattern)]))


def _grant_prefixes(bucket: s3.IBucket, role: iam.IRole, *, read: tuple[str, ...], read_write: tuple[str, ...]) -> None:
    """What an execution role needs of the bucket, prefix by prefix (a prefix ending in "/" covers the objects below
    it; one that does not is one object):

    - s3:ListBucket only where s3:prefix starts with one of them: SageMaker lists a channel's prefix, the checkpoint
      prefix and a transform's input prefix, while the rest of the bucket's keys (dataset and job names) stay unseen;
    - s3:GetObject on all of them; s3:PutObject, s3:AbortMultipartUpload and s3:DeleteObject on `read_write` (no
      s3:DeleteObjectVersion: the bucket's versions are the data's last line of defence);
    - s3:GetBucketLocation, which SageMaker's S3 client may ask before it reads.

    The bucket's key is granted with the role (infra/constructs/roles.py)."""
    def objects(prefixes: tuple[str, ...]) -> list[str]:
        return [bucket.arn_for_objects(p + "*" if p.endswith("/") else p) for p in prefixes]

    listed = [p + "*" if p.endswith("/") else p for p in (*read, *read_write)]
    role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
                                                     conditions={"StringLike": {"s3:prefix": listed}}))
    role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetBucketLocation"], resources=[bucket.bucket_arn]))
    role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=objects((*read, *read_write))))
    role.add_to_principal_policy(iam.PolicyStatement(
        actions=["s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"], resources=objects(read_write)))


class MonaiDicomStack(Stack):
    """KMS key, data bucket, roles, training image and notebook for MONAI training on DICOM."""

    def __init__(self, scope: Construct, construct_id: str, *, config: InfraConfig, **kwargs: object) -> None:
        """Compose the stack from its configuration.

        Args:
            scope: the CDK app.
            construct_id: the stack name.
            config: every setting of this deployment.
            **kwargs: passed to Stack (description, env, synthesizer, ...).
        """
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        storage_cfg, nb = config.storage, config.notebook
        key = DataKey(self, "DataKey", existing_key_arn=storage_cfg.existing_key_arn,
                      destroy_data=storage_cfg.destroy_data).key
        storage = DataStorage(
            self, "Storage", key=key, destroy_data=storage_cfg.destroy_data,
            existing_bucket_name=storage_cfg.existing_bucket_name,
            noncurrent_version_expiry_days=storage_cfg.noncurrent_version_expiry_days,
        )
        SageMakerLogGroups(self, "SageMakerLogGroups", key=key, retention_days=storage_cfg.log_retention_days,
                           destroy_data=storage_cfg.destroy_data)
        image = TrainingImage(self, "TrainingImage", image_uri=config.image.image_uri, variant=config.image.variant,
                              base_digest=config.image.base_digest)
        training = TrainingRole(self, "TrainingRole", key=key)
        model = ModelRole(self, "ModelRole", key=key)
        network = Network(self, "Network", key=key, destroy_data=storage_cfg.destroy_data,
                          bucket=storage.bucket) if config.vpc else None
        subnet_ids = [subnet.subnet_id for subnet in network.subnets] if network else []
        security_group_ids = [network.security_group.security_group_id] if network else []
        notebook_role = NotebookRole(self, "NotebookRole", key=key, training_role=training.role,
                                     subnet_ids=subnet_ids, security_group_ids=security_group_ids)

        self._grant_access(storage.bucket, image, training, model, notebook_role)

        image_variant = "" if config.image.image_uri else config.image.variant  # a given image: unknown
        # The stack's values by key (launcher/stack_values.py): written to the notebook's values file on each start.
        values: dict[str, str | list[str]] = {
            "stack_name": self.stack_name,
            "region": self.region,
            "bucket": storage.bucket.bucket_name,
            "data_key_arn": key.key_arn,
            "training_role_arn": training.role.role_arn,
            "model_role_arn": model.role.role_arn,
            "notebook_role_arn": notebook_role.role.role_arn,
            "training_image_uri": image.image_uri,
            "training_image_variant": image_variant,
            "subnets": subnet_ids,
            "security_group_ids": security_group_ids,
            "repo_url": nb.repo_url,
            "repo_ref": nb.repo_ref,
            "deployed_commit": nb.deployed_commit,
            "log_retention_days": str(storage_cfg.log_retention_days),
        }
        notebook = NotebookInstance(
            self, "Notebook", role=notebook_role.role, key=key,
            instance_type=nb.instance_type, volume_gb=nb.volume_gb, root_access=nb.root_access,
            repo_url=nb.repo_url, repo_ref=nb.repo_ref, idle_stop_minutes=nb.idle_stop_minutes,
            subnet=network.subnets[0] if network else None,
            security_group=network.security_group if network else None,
            values=values,
        )

        self._declare_outputs(values, notebook, image_variant)
        drop_redundant_provider_dependencies(self)

    def _grant_access(self, bucket: s3.IBucket, image: TrainingImage, training: TrainingRole, model: ModelRole,
                      notebook_role: NotebookRole) -> None:
        """What each role may do with the bucket and the image (each role gets the key with it: constructs/roles.py)."""
        # Jobs read data, the per-job code and the pseudonym key (its channel; the model role never), write
        # artifacts, and read and write checkpoints (to resume). They list those prefixes only.
        _grant_prefixes(bucket, training.role, read=(DATASETS_PREFIX, CODE_PREFIX, PSEUDONYM_KEY_OBJECT),
                        read_write=(JOBS_PREFIX, CHECKPOINTS_PREFIX))
        image.grant_pull(training.role)
        # The trained model (launcher/inference.py) reads model.tar.gz under jobs/, and transform input and writes
        # transform output under inference/; no dataset, and no listing of the bucket beyond those two prefixes.
        _grant_prefixes(bucket, model.role, read=(JOBS_PREFIX,), read_write=(INFERENCE_PREFIX,))
        image.grant_pull(model.role)
        # The notebook uploads datasets, stages code and reads results: the whole bucket.
        _grant_read_write(bucket, notebook_role.role)
        training.grant_pass_to_sagemaker(notebook_role.role)
        model.grant_pass_to_sagemaker(notebook_role.role)
        arn = as_finding(self, bucket.bucket_arn)
        acknowledge(training.role, "AwsSolutions-IAM5",
                    "Jobs read and write only their prefixes of the data bucket; object keys below them are chosen "
                    "per dataset and job.",
                    [f"Resource::{arn}/{p}*" for p in (DATASETS_PREFIX, CODE_PREFIX, JOBS_PREFIX, CHECKPOINTS_PREFIX)])
        acknowledge(model.role, "AwsSolutions-IAM5",
                    "The model reads model artifacts under jobs/ and reads and writes batch transform files under "
                    "inference/; object keys below them are chosen per job and run.",
                    [f"Resource::{arn}/{p}*" for p in (JOBS_PREFIX, INFERENCE_PREFIX)])
        acknowledge(notebook_role.role, "AwsSolutions-IAM5",
                    "The notebook manages the data bucket's content (uploads, staged code, results): every object "
                    "of that one bucket.", [*S3_GRANT_WILDCARDS, f"Resource::{arn}/*"])

    def _declare_outputs(self, values: Mapping[str, str | list[str]], notebook: NotebookInstance,
                         image_variant: str) -> None:
        """The stack's values as CloudFormation outputs (launcher/stack_values.py), and the notebook's name and URL.

        An output is a string, never empty: lists are comma-joined, and have no output when empty (no VPC).
        """
        as_outputs = {key: text if isinstance(text, str) else Fn.join(",", text)
                      for key, text in values.items() if isinstance(text, str) or text}
        as_outputs["training_image_variant"] = image_variant or "unknown"
        for value in STACK_VALUES:
            if value.key in as_outputs and value.output:
                CfnOutput(self, value.output, value=as_outputs[value.key], description=value.description)
        console = f"https://{self.region}.console.aws.amazon.com/sagemaker/home?region={self.region}"
        CfnOutput(self, "NotebookName", value=notebook.instance.attr_notebook_instance_name,
                  description="The notebook instance")
        CfnOutput(self, "NotebookUrl", value=f"{console}#/notebook-instances/openNotebook/{notebook.name}?view=lab",
                  description="Opens the notebook (JupyterLab) in the SageMaker console")

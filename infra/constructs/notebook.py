"""The notebook instance and its lifecycle configuration (clone the repository, hand over the stack's values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import ArnFormat, Fn, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.lifecycle.render import render_on_create, render_on_start
from infra.nag import acknowledge, as_finding

PLATFORM = "notebook-al2023-v1"  # the only platform that can be created or restarted since 2026-07-01
NOTEBOOK_LOG_GROUP = "/aws/sagemaker/NotebookInstances"
_NAME_LIMIT = 63  # SageMaker's limit for notebook instance and lifecycle config names


def _name(stack_name: str, suffix: str) -> str:
    return f"{stack_name[:_NAME_LIMIT - len(suffix) - 1]}-{suffix}"


class NotebookInstance(Construct):
    """An AL2023 notebook instance on the stack's key, whose lifecycle config clones this repository.

    Attributes:
        instance: the CfnNotebookInstance.
        name: its name (derived from the stack name, so two deployments in one account do not collide).
        lifecycle_config: the CfnNotebookInstanceLifecycleConfig attached to it.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        role: iam.Role,
        key: kms.IKey,
        instance_type: str,
        volume_gb: int,
        root_access: bool,
        repo_url: str,
        repo_ref: str,
        idle_stop_minutes: int,
        values: Mapping[str, str | Sequence[str]],
        subnet: ec2.ISubnet | None = None,
        security_group: ec2.ISecurityGroup | None = None,
    ) -> None:
        """Create the lifecycle config and the instance.

        Args:
            scope: parent construct.
            construct_id: construct id.
            role: the notebook's IAM role (gets its own logs and stop permissions here).
            key: encrypts the instance's volume.
            instance_type: e.g. ml.t2.medium.
            volume_gb: size of the ML storage volume (/home/ec2-user/SageMaker).
            root_access: whether notebook users may become root.
            repo_url: HTTPS URL of this repository, cloned on create.
            repo_ref: commit, branch or tag checked out on create.
            idle_stop_minutes: stop the instance after this long idle; 0 never stops it.
            values: the stack's values, written to the values file on each start.
            subnet: a private subnet: the instance runs in the VPC without direct internet access.
            security_group: the instance's security group (with `subnet`).
        """
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.name = _name(stack.stack_name, "notebook")
        config_name = _name(stack.stack_name, "lifecycle")
        on_start = render_on_start(values=dict(values), idle_stop_minutes=idle_stop_minutes)
        self.lifecycle_config = sagemaker.CfnNotebookInstanceLifecycleConfig(
            self, "Lifecycle",
            # An explicit name: without one the instance silently loses its lifecycle config (aws-cdk#35111).
            notebook_instance_lifecycle_config_name=config_name,
            on_create=[sagemaker.CfnNotebookInstanceLifecycleConfig.NotebookInstanceLifecycleHookProperty(
                content=Fn.base64(render_on_create(repo_url=repo_url, repo_ref=repo_ref)))],
            on_start=[sagemaker.CfnNotebookInstanceLifecycleConfig.NotebookInstanceLifecycleHookProperty(
                content=Fn.base64(on_start))],
        )
        self.instance = sagemaker.CfnNotebookInstance(
            self, "Instance",
            notebook_instance_name=self.name,
            instance_type=instance_type,
            volume_size_in_gb=volume_gb,
            role_arn=role.role_arn,
            kms_key_id=key.key_id,
            platform_identifier=PLATFORM,
            root_access="Enabled" if root_access else "Disabled",
            direct_internet_access="Disabled" if subnet else "Enabled",
            subnet_id=subnet.subnet_id if subnet else None,
            security_group_ids=[security_group.security_group_id] if security_group else None,
            instance_metadata_service_configuration=sagemaker.CfnNotebookInstance
            .InstanceMetadataServiceConfigurationProperty(minimum_instance_metadata_service_version="2"),
            lifecycle_config_name=self.lifecycle_config.attr_notebook_instance_lifecycle_config_name,
        )

        # The instance writes its Jupyter and lifecycle logs, and stops itself when idle.
        log_group = stack.format_arn(service="logs", resource="log-group", resource_name=f"{NOTEBOOK_LOG_GROUP}:*",
                                     arn_format=ArnFormat.COLON_RESOURCE_NAME)
        role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[log_group],
        ))
        acknowledge(role, "AwsSolutions-IAM5",
                    "The notebook writes one log stream per instance and script, named by SageMaker, in this group.",
                    [f"Resource::{as_finding(self, log_group)}"])
        if subnet is None:
            reason = ("Default deployment: the notebook reaches the internet directly (git clone, pip) with no VPC, "
                      "NAT gateway or endpoints to pay for while idle; deploy with -c vpc=true for private subnets "
                      "without direct internet access.")
            rules = ("AwsSolutions-SM1", "AwsSolutions-SM3", "HIPAA.Security-SageMakerNotebookNoDirectInternetAccess")
            for rule in rules:
                acknowledge(self.instance, rule, reason)
        role.add_to_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeNotebookInstance", "sagemaker:StopNotebookInstance"],
            resources=[stack.format_arn(service="sagemaker", resource="notebook-instance",
                                        resource_name=self.name.lower())],
        ))

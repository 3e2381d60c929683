"""SageMaker's account-wide log groups, encrypted with the stack's key and kept for a set time (a custom resource).

SageMaker names the groups its jobs and notebook instances write to (/aws/sagemaker/TrainingJobs, ...), and creates
them unencrypted and kept forever. The logs of this stack's workloads say what ran on which data; the stack's code
keeps patient identifiers out of them, and the key and the retention bound what a mistake could leave there. The
groups may exist before the stack, so a custom resource (infra/handlers/log_groups.py) creates the missing ones and
encrypts and retains every one, and leaves them on destroy. Endpoint groups are named per endpoint
(/aws/sagemaker/Endpoints/NAME) and cannot be known here.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import ArnFormat, CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import LOG_RETENTION_DAYS
from infra.handlers.log_groups import RESOURCE_TYPE
from infra.nag import acknowledge

SAGEMAKER_LOG_GROUPS = ("/aws/sagemaker/TrainingJobs", "/aws/sagemaker/TransformJobs",
                        "/aws/sagemaker/NotebookInstances")
HANDLERS = Path(__file__).resolve().parents[1] / "handlers"
# CDK names retention periods; CloudWatch Logs' values in days, in the same order (INFINITE last, not offered).
RETENTION = dict(zip(LOG_RETENTION_DAYS, list(logs.RetentionDays)[:-1], strict=True))


class SageMakerLogGroups(Construct):
    """Encrypts and retains SageMaker's log groups on create and update; leaves them on delete."""

    def __init__(self, scope: Construct, construct_id: str, *, key: kms.IKey, retention_days: int,
                 destroy_data: bool) -> None:
        """Create the handler and the custom resource.

        Args:
            scope: parent construct.
            construct_id: construct id.
            key: the stack's KMS key (its policy lets CloudWatch Logs use it for this account's groups).
            retention_days: how long the groups keep events; a value CloudWatch Logs accepts.
            destroy_data: True: the key is deleted with the stack, so the groups are dissociated from it first;
                False keeps the handler's own log group on destroy, like the other logs.
        """
        super().__init__(scope, construct_id)
        stack = Stack.of(self)

        def group_arns(name: str) -> list[str]:  # the group itself (CreateLogGroup) and its streams
            return [stack.format_arn(service="logs", resource="log-group", resource_name=f"{name}{suffix}",
                                     arn_format=ArnFormat.COLON_RESOURCE_NAME) for suffix in ("", ":*")]

        handler_logs = logs.LogGroup(
            self, "HandlerLogs", encryption_key=key, retention=RETENTION[retention_days],
            removal_policy=RemovalPolicy.DESTROY if destroy_data else RemovalPolicy.RETAIN)
        role = iam.Role(self, "HandlerRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="Encrypts and retains SageMaker's log groups (custom resource)")
        role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:AssociateKmsKey", "logs:DisassociateKmsKey",
                     "logs:PutRetentionPolicy"],
            resources=[arn for name in SAGEMAKER_LOG_GROUPS for arn in group_arns(name)]))
        # DescribeLogGroups is authorized on the account's groups as a whole, whatever the name prefix asked.
        role.add_to_policy(iam.PolicyStatement(actions=["logs:DescribeLogGroups"], resources=[
            stack.format_arn(service="logs", resource="log-group", resource_name="*",
                             arn_format=ArnFormat.COLON_RESOURCE_NAME)]))
        role.add_to_policy(iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                               resources=[handler_logs.log_group_arn]))
        handler = lambda_.Function(
            self, "Handler", runtime=lambda_.Runtime.PYTHON_3_14, handler="log_groups.handler",
            code=lambda_.Code.from_asset(str(HANDLERS), exclude=["__pycache__", "*.pyc"]),
            timeout=Duration.minutes(2), role=role, log_group=handler_logs,
            description="Encrypts SageMaker's log groups with the stack key and sets their retention",
        )
        CustomResource(self, "Resource", service_token=handler.function_arn, resource_type=RESOURCE_TYPE,
                       properties={"LogGroups": list(SAGEMAKER_LOG_GROUPS), "KmsKeyArn": key.key_arn,
                                   "RetentionInDays": retention_days,
                                   # the key goes with the stack: the groups must not keep it
                                   "ReleaseKeyOnDelete": "true" if destroy_data else "false"})
        acknowledge(role, "AwsSolutions-IAM5",
                    "CloudWatch Logs names a group's streams under GROUP:*; the statement covers these three groups.",
                    [f"Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:{name}:*"
                     for name in SAGEMAKER_LOG_GROUPS])
        acknowledge(role, "AwsSolutions-IAM5",
                    "logs:DescribeLogGroups is authorized on all of the account's groups; the handler reads the three "
                    "groups' encryption with it.",
                    ["Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:*"])
        acknowledge(role, "HIPAA.Security-IAMNoInlinePolicy",
                    "The handler's role carries its one least-privilege policy, which lives and dies with the role.")
        acknowledge(handler, "HIPAA.Security-LambdaConcurrency",
                    "CloudFormation invokes the handler once per stack operation; reserving concurrency would take "
                    "it from the account's unreserved pool (at least 10 must stay) for nothing.")
        acknowledge(handler, "HIPAA.Security-LambdaDLQ",
                    "CloudFormation invokes the handler synchronously and fails the stack operation with its "
                    "answer: there is no asynchronous event to keep.")
        acknowledge(handler, "HIPAA.Security-LambdaInsideVPC",
                    "The handler calls the CloudWatch Logs API only and touches no data; it needs no network of the "
                    "stack.")

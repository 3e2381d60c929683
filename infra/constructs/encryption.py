"""The customer-managed KMS key that encrypts the data bucket, notebook volume, training jobs and the SageMaker logs.

Its policy names who may use it. The account (its administrators, through IAM) manages the key but cannot decrypt
with it: only the stack's roles can, named by their IAM path (`role_path`), which survives a redeploy of the same
stack with the kept key (`-c dataKeyArn=...`: new roles, same path). AWS services that encrypt volumes for a caller
(SageMaker, EBS) get grants for AWS resources only, and CloudWatch Logs encrypts this account's log groups.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

# Cryptographic use: what S3 SSE-KMS, SageMaker volumes and outputs need of a caller.
USE_ACTIONS = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey")
# Managing the key, no cryptographic use: what CloudFormation and the account's administrators do with it.
ADMIN_ACTIONS = (
    "kms:Describe*", "kms:Get*", "kms:List*", "kms:PutKeyPolicy", "kms:UpdateKeyDescription",
    "kms:EnableKey", "kms:DisableKey", "kms:EnableKeyRotation", "kms:DisableKeyRotation", "kms:RotateKeyOnDemand",
    "kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias", "kms:TagResource", "kms:UntagResource",
    "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:RevokeGrant", "kms:RetireGrant",
)


def role_path(stack: Stack) -> str:
    """The IAM path of the stack's roles: the key policy lets roles under it use the key."""
    return f"/monai-dicom/{stack.stack_name}/"


class DataKey(Construct):
    """A rotating KMS key whose policy names its users, or the key a previous deployment kept.

    Attributes:
        key: the key to pass to buckets, the notebook and training jobs.
    """

    def __init__(self, scope: Construct, construct_id: str, *, existing_key_arn: str, destroy_data: bool) -> None:
        """Create or import the key.

        Args:
            scope: parent construct.
            construct_id: construct id.
            existing_key_arn: ARN of a kept key to reuse (its policy, written when it was created, stays); "" creates
                a new one.
            destroy_data: False retains the key on stack deletion (kept data is unreadable without it).
        """
        super().__init__(scope, construct_id)
        self.key: kms.IKey
        if existing_key_arn:
            self.key = kms.Key.from_key_arn(self, "Key", existing_key_arn)
            return
        stack = Stack.of(self)
        account = iam.AccountRootPrincipal()
        roles = stack.format_arn(service="iam", region="", resource="role", resource_name=f"{role_path(stack)[1:]}*")
        log_groups = stack.format_arn(service="logs", resource="log-group", resource_name="*",
                                      arn_format=ArnFormat.COLON_RESOURCE_NAME)
        policy = iam.PolicyDocument(statements=[
            iam.PolicyStatement(sid="Administration", principals=[account], actions=list(ADMIN_ACTIONS),
                                resources=["*"]),
            iam.PolicyStatement(sid="UseByTheStackRoles", principals=[account], actions=list(USE_ACTIONS),
                                resources=["*"], conditions={"ArnLike": {"aws:PrincipalArn": roles}}),
            # SageMaker and EBS encrypt a job's, an endpoint's or the notebook's volume through a grant they create
            # on the caller's behalf (CloudFormation's for the notebook); no grant for anything else.
            iam.PolicyStatement(sid="GrantsForAwsResources", principals=[account], actions=["kms:CreateGrant"],
                                resources=["*"], conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}}),
            iam.PolicyStatement(
                sid="CloudWatchLogs", principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                resources=["*"], conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn": log_groups}}),
        ])
        self.key = kms.Key(
            self,
            "Key",
            description="Encrypts DICOM data, model artifacts, the notebook volume, training jobs and their logs",
            enable_key_rotation=True,
            policy=policy,
            removal_policy=RemovalPolicy.DESTROY if destroy_data else RemovalPolicy.RETAIN,
        )

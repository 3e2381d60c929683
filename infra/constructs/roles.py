"""IAM roles: one for training jobs, one for the trained model (batch transform and endpoints), one for the notebook.
Resource access is granted by the stack with grant_*."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.constructs.encryption import role_path
from infra.nag import acknowledge, as_finding

KMS_GRANT_WILDCARDS = ("Action::kms:GenerateDataKey*", "Action::kms:ReEncrypt*")

SAGEMAKER = "sagemaker.amazonaws.com"
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TRANSFORM_LOG_GROUP = "/aws/sagemaker/TransformJobs"
ENDPOINT_LOG_GROUPS = "/aws/sagemaker/Endpoints/*"  # one group per endpoint, named after it
# What the notebook does with a trained model (launcher/inference.py), on this account's and region's resources.
# The four create calls that start containers are granted on their own, with conditions (`create_conditions`).
INFERENCE_ACTIONS = (
    "sagemaker:DeleteModel",
    "sagemaker:DescribeTransformJob", "sagemaker:StopTransformJob",
    "sagemaker:DeleteEndpointConfig",
    "sagemaker:CreateEndpoint", "sagemaker:DescribeEndpoint", "sagemaker:DeleteEndpoint",
    "sagemaker:InvokeEndpoint",
)
INFERENCE_RESOURCES = ("model", "transform-job", "endpoint-config", "endpoint")
# A training job or model the notebook creates must run network-isolated (the launcher's default and only way): its
# container then has no network, so a compromised job or bundle cannot send data out, nor reach the notebook's
# credentials. The condition key is in the request of CreateTrainingJob and CreateModel only (CreateTransformJob has
# none: a transform runs its model, isolated as the model was created). A request without the key is denied too.
ISOLATED = {"Bool": {"sagemaker:NetworkIsolation": "true"}}


def create_conditions(action: str, *, key_arn: str, subnet_ids: Sequence[str] = (),
                      security_group_ids: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """The IAM conditions on the notebook's `action` (a SageMaker create call whose containers touch data).

    - network isolation (ISOLATED) where the request carries it: CreateTrainingJob, CreateModel;
    - the stack's key on every volume and output the request names: the job's and the transform's volume and output
      (sagemaker:VolumeKmsKeyArn, sagemaker:OutputKmsKeyArn), the endpoint config's volume. ArnEquals on a key the
      request lacks fails, so a request without the key is denied;
    - with a VPC (`subnet_ids`), the stack's subnets and security groups, and no request without them (Null false:
      ForAllValues alone would pass a request that names none): CreateTrainingJob, CreateModel. A transform job or an
      endpoint runs its model's VPC configuration.

    Args:
        action: "sagemaker:CreateTrainingJob", "sagemaker:CreateModel", "sagemaker:CreateTransformJob" or
            "sagemaker:CreateEndpointConfig".
        key_arn: the stack's KMS key.
        subnet_ids: the stack's private subnets; empty without a VPC.
        security_group_ids: the workloads' security group; empty without a VPC.
    """
    isolated, vpc = action in ("sagemaker:CreateTrainingJob", "sagemaker:CreateModel"), bool(subnet_ids)
    keys = {"sagemaker:CreateTrainingJob": ("sagemaker:VolumeKmsKeyArn", "sagemaker:OutputKmsKeyArn"),
            "sagemaker:CreateModel": (),
            "sagemaker:CreateTransformJob": ("sagemaker:VolumeKmsKeyArn", "sagemaker:OutputKmsKeyArn"),
            "sagemaker:CreateEndpointConfig": ("sagemaker:VolumeKmsKeyArn",)}[action]
    conditions: dict[str, dict[str, Any]] = dict(ISOLATED) if isolated else {}
    if keys:
        conditions["ArnEquals"] = {k: key_arn for k in keys}
    if vpc and isolated:
        conditions["ForAllValues:StringEquals"] = {"sagemaker:VpcSubnets": list(subnet_ids),
                                                   "sagemaker:VpcSecurityGroupIds": list(security_group_ids)}
        conditions["Null"] = {"sagemaker:VpcSubnets": "false", "sagemaker:VpcSecurityGroupIds": "false"}
    return conditions

# What the SageMaker SDK v3 requires of every training role (sagemaker.core.helper.iam_policies, checked by
# simulating these actions without resources when a ModelTrainer is built); tests hold this list against the SDK.
# None of them supports resource-level permissions, so they are granted on "*" without conditions.
SDK_TRAINING_ROLE_ACTIONS = (
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",
    "ec2:CreateNetworkInterface",
    "ec2:CreateNetworkInterfacePermission",
    "ec2:DeleteNetworkInterface",
    "ec2:DeleteNetworkInterfacePermission",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeVpcs",
    "ec2:DescribeDhcpOptions",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
)


def _sagemaker_principal(stack: Stack) -> iam.IPrincipal:
    # aws:SourceAccount keeps another account's SageMaker from assuming the role (confused deputy).
    return iam.ServicePrincipal(SAGEMAKER, conditions={"StringEquals": {"aws:SourceAccount": stack.account}})


def _log_group_arn(stack: Stack, group: str) -> str:
    return stack.format_arn(service="logs", resource="log-group", resource_name=f"{group}:*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME)


def _grant_volume_key(role: iam.Role, key: kms.IKey) -> None:
    # SageMaker attaches an encrypted EBS volume on the caller's behalf: it needs a grant, only for AWS resources.
    role.add_to_policy(iam.PolicyStatement(
        actions=["kms:CreateGrant"], resources=[key.key_arn],
        conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
    ))


def _execution_role(scope: Construct, *, key: kms.IKey, description: str, log_groups: tuple[str, ...]) -> iam.Role:
    """A role SageMaker assumes to run containers of this stack: the SDK's required actions (image pull, metrics,
    network interfaces), its log groups, and the stack key for data and volumes."""
    stack = Stack.of(scope)
    role = iam.Role(scope, "Role", assumed_by=_sagemaker_principal(stack), description=description,
                    path=role_path(stack))
    role.add_to_policy(iam.PolicyStatement(actions=list(SDK_TRAINING_ROLE_ACTIONS), resources=["*"]))
    role.add_to_policy(iam.PolicyStatement(
        actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
        resources=[_log_group_arn(stack, group) for group in log_groups],
    ))
    key.grant_encrypt_decrypt(role)
    _grant_volume_key(role, key)
    return role


class TrainingRole(Construct):
    """The execution role of training jobs: logs, metrics, image pull, network interfaces; data by grant.

    Attributes:
        role: the IAM role SageMaker assumes for training jobs.
    """

    def __init__(self, scope: Construct, construct_id: str, *, key: kms.IKey) -> None:
        """Create the role.

        Args:
            scope: parent construct.
            construct_id: construct id.
            key: the stack's KMS key (volumes, output, checkpoints).
        """
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = _execution_role(self, key=key, description="Execution role of the MONAI DICOM training jobs",
                                    log_groups=(TRAINING_LOG_GROUP,))
        acknowledge(self.role, "AwsSolutions-IAM5",
                    "The SageMaker SDK requires these actions of every training role and checks them without a "
                    "resource; ECR authorization, CloudWatch metrics and EC2 network-interface actions (for jobs "
                    "in a VPC) support no resource-level permissions.", ["Resource::*"])
        _acknowledge_common(self.role, stack)

    def grant_pass_to_sagemaker(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let `grantee` pass this role, to SageMaker only (iam:PassedToService)."""
        return _grant_pass_to_sagemaker(self.role, grantee)


class ModelRole(Construct):
    """The execution role of the trained model (launcher/inference.py, endpoints.py: batch transform and endpoints):
    image pull, logs, metrics, network interfaces in a VPC; the model artifacts and the inference/ prefix by grant.
    Unlike the training role it reads no dataset: a served model sees only what it is sent.

    Attributes:
        role: the IAM role SageMaker assumes for models, transform jobs and endpoints.
    """

    def __init__(self, scope: Construct, construct_id: str, *, key: kms.IKey) -> None:
        """Create the role.

        Args:
            scope: parent construct.
            construct_id: construct id.
            key: the stack's KMS key (model artifacts, transform input and output, volumes).
        """
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = _execution_role(
            self, key=key, description="Execution role of the MONAI DICOM model: batch transform jobs and endpoints",
            log_groups=(TRANSFORM_LOG_GROUP, ENDPOINT_LOG_GROUPS),
        )
        acknowledge(self.role, "AwsSolutions-IAM5",
                    "Transform jobs write one log stream each in one group; each endpoint logs to its own group, "
                    "named after the endpoint, which the notebook names per deployment.",
                    [f"Resource::{as_finding(self.role, _log_group_arn(stack, g))}"
                     for g in (TRANSFORM_LOG_GROUP, ENDPOINT_LOG_GROUPS)])
        acknowledge(self.role, "AwsSolutions-IAM5",
                    "Models need ECR authorization, CloudWatch metrics (endpoints) and EC2 network-interface actions "
                    "(in a VPC), which support no resource-level permissions.", ["Resource::*"])
        _acknowledge_grants(self.role)

    def grant_pass_to_sagemaker(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let `grantee` pass this role, to SageMaker only (iam:PassedToService)."""
        return _grant_pass_to_sagemaker(self.role, grantee)


def _grant_pass_to_sagemaker(role: iam.IRole, grantee: iam.IGrantable) -> iam.Grant:
    return iam.Grant.add_to_principal(
        grantee=grantee, actions=["iam:PassRole"], resource_arns=[role.role_arn],
        conditions={"StringEquals": {"iam:PassedToService": SAGEMAKER}},
    )


class NotebookRole(Construct):
    """The notebook instance's role: run, follow and stop training jobs; data by grant.

    Attributes:
        role: the IAM role of the notebook instance.
    """

    def __init__(self, scope: Construct, construct_id: str, *, key: kms.IKey, training_role: iam.IRole,
                 subnet_ids: Sequence[str] = (), security_group_ids: Sequence[str] = ()) -> None:
        """Create the role.

        Args:
            scope: parent construct.
            construct_id: construct id.
            key: the stack's KMS key (uploads, downloads, job volumes).
            training_role: the role whose permissions the SDK checks before it launches a job.
            subnet_ids: with a VPC, the subnets every job and model must run in (`create_conditions`).
            security_group_ids: with a VPC, the security groups every job and model must use.
        """
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self, "Role",
            assumed_by=_sagemaker_principal(stack),
            description="Role of the MONAI DICOM notebook instance",
            path=role_path(stack),  # the key policy lets roles under it use the key
        )
        jobs = stack.format_arn(service="sagemaker", resource="training-job", resource_name="*")
        def create(action: str, resource: str) -> None:
            self.role.add_to_policy(iam.PolicyStatement(
                actions=[action], resources=[resource],
                conditions=create_conditions(action, key_arn=key.key_arn, subnet_ids=subnet_ids,
                                             security_group_ids=security_group_ids)))

        create("sagemaker:CreateTrainingJob", jobs)
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob", "sagemaker:AddTags",
                     "sagemaker:ListTags"],
            resources=[jobs],
        ))
        inference = [stack.format_arn(service="sagemaker", resource=r, resource_name="*") for r in INFERENCE_RESOURCES]
        for action, resource in zip(("sagemaker:CreateModel", "sagemaker:CreateTransformJob",
                                     "sagemaker:CreateEndpointConfig"), inference[:3], strict=True):
            create(action, resource)
        self.role.add_to_policy(iam.PolicyStatement(actions=list(INFERENCE_ACTIONS), resources=inference))
        # List actions take no resource ARN.
        self.role.add_to_policy(iam.PolicyStatement(actions=["sagemaker:ListTrainingJobs"], resources=["*"]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["logs:DescribeLogStreams", "logs:GetLogEvents", "logs:FilterLogEvents"],
            resources=[_log_group_arn(stack, TRAINING_LOG_GROUP)],
        ))
        # An endpoint's log group, made before SageMaker would make it unencrypted (launcher/endpoints.py
        # endpoint_log_group): encrypted with the stack key, with the stack's retention.
        endpoint_groups = stack.format_arn(service="logs", resource="log-group", resource_name=ENDPOINT_LOG_GROUPS,
                                           arn_format=ArnFormat.COLON_RESOURCE_NAME)  # GROUP and GROUP:*
        self.role.add_to_policy(iam.PolicyStatement(actions=["logs:CreateLogGroup", "logs:PutRetentionPolicy"],
                                                    resources=[endpoint_groups]))
        # The SDK's role check (ModelTrainer) simulates the training role's policy and reads the role.
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["iam:SimulatePrincipalPolicy", "iam:GetRole"],
            resources=[training_role.role_arn, self.role.role_arn],
        ))
        key.grant_encrypt_decrypt(self.role)
        _grant_volume_key(self.role, key)
        acknowledge(self.role, "AwsSolutions-IAM5",
                    "sagemaker:ListTrainingJobs supports no resource-level permissions.", ["Resource::*"])
        acknowledge(self.role, "AwsSolutions-IAM5",
                    "Each endpoint logs to a group named after it, which the notebook creates encrypted before "
                    "SageMaker would create it unencrypted; endpoint names are chosen per deployment.",
                    [f"Resource::{as_finding(self, endpoint_groups)}"])
        acknowledge(self.role, "AwsSolutions-IAM5",
                    "Training job names are chosen per job by the notebook; access stays within this account "
                    "and region.", [f"Resource::{as_finding(self, jobs)}"])
        acknowledge(self.role, "AwsSolutions-IAM5",
                    "Models, transform jobs, endpoint configs and endpoints are named per use by the notebook; "
                    "access stays within this account and region.",
                    [f"Resource::{as_finding(self, arn)}" for arn in inference])
        _acknowledge_common(self.role, stack)


def _acknowledge_common(role: iam.Role, stack: Stack) -> None:
    acknowledge(role, "AwsSolutions-IAM5",
                "Each training job writes its own log stream, named by SageMaker at run time, in this one group.",
                [f"Resource::{as_finding(role, _log_group_arn(stack, TRAINING_LOG_GROUP))}"])
    _acknowledge_grants(role)


def _acknowledge_grants(role: iam.Role) -> None:
    acknowledge(role, "AwsSolutions-IAM5",
                "kms:GenerateDataKey* and kms:ReEncrypt* are grant_encrypt_decrypt's action groups on the one "
                "stack key (S3 SSE-KMS needs GenerateDataKey and Decrypt).", KMS_GRANT_WILDCARDS)
    acknowledge(role, "HIPAA.Security-IAMNoInlinePolicy",
                "grant_* writes least-privilege statements into the role's own policy, which lives and dies "
                "with the role; managed policies would add resources to manage without narrowing access.")

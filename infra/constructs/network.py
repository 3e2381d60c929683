"""The optional VPC (`-c vpc=true`): private subnets for the notebook and training jobs, endpoints, flow logs."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge

# What the notebook and jobs call: the SageMaker API and runtime, image pulls, logs and credentials stay inside
# the VPC; S3 goes through the free gateway endpoint; everything else (pip, git) leaves through the NAT gateway.
INTERFACE_ENDPOINTS = {
    "SageMakerApi": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_API,
    "SageMakerRuntime": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_RUNTIME,
    "Ecr": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
}


# The AWS-owned buckets that the workloads in the VPC read through the S3 gateway endpoint, beside the stack's data
# bucket; the endpoint's policy allows nothing else, so no role, session or package in the VPC can write to, or read
# from, any other bucket (an exfiltration path the NAT does not offer for S3 in this region). {region} is the stack's.
S3_ENDPOINT_AWS_BUCKETS = {
    # ECR keeps image layers in S3: pulling the training image (jobs, models) in the VPC reads them.
    "prod-{region}-starport-layer-bucket": "ECR image layers (docs.aws.amazon.com/AmazonECR/latest/userguide/"
                                          "vpc-endpoints.html)",
    # The notebook instance runs Amazon Linux 2023, whose dnf repositories are S3 buckets in each region.
    "al2023-repos-{region}-de612dc2": "Amazon Linux 2023 package repositories (dnf on the notebook instance)",
}


class Network(Construct):
    """A two-AZ VPC with one NAT gateway, VPC endpoints and flow logs, and the security group of the workloads.

    Attributes:
        vpc: the VPC.
        subnets: the private subnets for the notebook and training jobs.
        security_group: shared by the notebook and training jobs; allows traffic among its members (the
            instances of a distributed training job talk to each other).
    """

    def __init__(self, scope: Construct, construct_id: str, *, key: kms.IKey, destroy_data: bool,
                 bucket: s3.IBucket) -> None:
        """Create the network.

        Args:
            scope: parent construct.
            construct_id: construct id.
            key: encrypts the flow-log group.
            bucket: the data bucket, the one bucket of this account the S3 endpoint lets through.
            destroy_data: False keeps the flow logs (an audit record) when the stack is destroyed.
        """
        super().__init__(scope, construct_id)
        self.vpc = ec2.Vpc(
            self, "Vpc",
            max_azs=2,
            nat_gateways=1,  # one NAT gateway: about half the idle cost of one per AZ
            subnet_configuration=[
                # Only the NAT gateway lives here; it has its own Elastic IP, so nothing gets a public IP by default.
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24,
                                        map_public_ip_on_launch=False),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22),
            ],
        )
        # CloudWatch Logs encrypts the group with the stack key (its policy lets it: infra/constructs/encryption.py).
        flow_logs = logs.LogGroup(
            self, "FlowLogs", encryption_key=key, retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.DESTROY if destroy_data else RemovalPolicy.RETAIN,
        )
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))
        s3_endpoint = self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        stack = Stack.of(self)
        s3_endpoint.add_to_policy(iam.PolicyStatement(
            sid="TheStackDataBucket", principals=[iam.StarPrincipal()], actions=["s3:*"],
            resources=[bucket.bucket_arn, bucket.arn_for_objects("*")]))
        s3_endpoint.add_to_policy(iam.PolicyStatement(
            sid="AwsOwnedBuckets", principals=[iam.StarPrincipal()], actions=["s3:GetObject"],
            resources=[stack.format_arn(service="s3", region="", account="", resource=name.format(region=stack.region),
                                        resource_name="*") for name in S3_ENDPOINT_AWS_BUCKETS]))
        self.subnets = self.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnets
        self.security_group = ec2.SecurityGroup(
            self, "Workloads", vpc=self.vpc, description="Notebook instance and training jobs",
            allow_all_outbound=True,
        )
        self.security_group.add_ingress_rule(self.security_group, ec2.Port.all_traffic(),
                                             "instances of one distributed training job talk to each other")
        # The endpoints accept HTTPS from the workloads only, not from the whole VPC.
        endpoints = ec2.SecurityGroup(self, "Endpoints", vpc=self.vpc, allow_all_outbound=False,
                                      description="VPC interface endpoints: HTTPS from the workloads")
        endpoints.add_ingress_rule(self.security_group, ec2.Port.tcp(443), "AWS APIs from the notebook and jobs")
        for name, service in INTERFACE_ENDPOINTS.items():
            self.vpc.add_interface_endpoint(name, service=service, private_dns_enabled=True, open=False,
                                            security_groups=[endpoints],
                                            subnets=ec2.SubnetSelection(subnets=self.subnets))
        acknowledge(self.security_group, "HIPAA.Security-EC2RestrictedCommonPorts",
                    "Only members of this one security group may reach each other, on all ports: SageMaker "
                    "distributed training (torchrun, NCCL/gloo) opens ports chosen at run time between instances.")
        for subnet in self.vpc.public_subnets:
            acknowledge(subnet, "HIPAA.Security-VPCNoUnrestrictedRouteToIGW",
                        "The public subnets hold only the NAT gateway, whose route to the internet gateway is what "
                        "gives the private subnets their outbound access (pip, git); nothing else runs there.")
        acknowledge(self.vpc, "HIPAA.Security-IAMNoInlinePolicy",
                    "CDK's flow-log role carries its one least-privilege policy (write to the flow-log group) inline; "
                    "it lives and dies with the role.")

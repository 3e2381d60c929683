"""The VPC variant: private subnets, one NAT gateway, endpoints, flow logs, outputs for training jobs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def vpc(synth):
    return synth.get("vpc")


def test_private_subnets_with_one_nat_gateway_and_no_public_ips(vpc):
    subnets = vpc.resources("AWS::EC2::Subnet")
    assert sum("private" in k.lower() for k in subnets) == 2 and sum("public" in k.lower() for k in subnets) == 2
    assert all(v["Properties"]["MapPublicIpOnLaunch"] is False for v in subnets.values())
    assert len(vpc.resources("AWS::EC2::NatGateway")) == 1


def test_endpoints_s3_gateway_and_interfaces_reachable_only_from_the_workloads(vpc):
    endpoints = [v["Properties"] for v in vpc.resources("AWS::EC2::VPCEndpoint").values()]
    services = sorted(str(e["ServiceName"]) for e in endpoints)
    for name in ("sagemaker.api", "sagemaker.runtime", "ecr.api", "ecr.dkr", ".logs", ".sts", ".s3"):
        assert any(name in s for s in services), name
    assert [e["VpcEndpointType"] for e in endpoints if ".s3" in str(e["ServiceName"])] == ["Gateway"]
    groups = vpc.resources("AWS::EC2::SecurityGroup")
    endpoint_sg = next(k for k in groups if "Endpoints" in k)
    workloads = next(k for k in groups if "Workloads" in k)
    assert "SecurityGroupIngress" not in groups[endpoint_sg]["Properties"]  # not the VPC CIDR
    ingress = [v["Properties"] for v in vpc.resources("AWS::EC2::SecurityGroupIngress").values()
               if v["Properties"]["GroupId"] == {"Fn::GetAtt": [endpoint_sg, "GroupId"]}]
    assert ingress == [{
        "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "Description": "AWS APIs from the notebook and jobs",
        "GroupId": {"Fn::GetAtt": [endpoint_sg, "GroupId"]},
        "SourceSecurityGroupId": {"Fn::GetAtt": [workloads, "GroupId"]}}]
    interfaces = [e for e in endpoints if e["VpcEndpointType"] == "Interface"]
    assert all(e["SecurityGroupIds"] == [{"Fn::GetAtt": [endpoint_sg, "GroupId"]}] for e in interfaces)
    assert all(e["PrivateDnsEnabled"] is True for e in interfaces)


def test_flow_logs_go_to_an_encrypted_kept_log_group(vpc):
    [flow] = vpc.resources("AWS::EC2::FlowLog").values()
    assert flow["Properties"]["TrafficType"] == "ALL"
    [group] = [v for k, v in vpc.resources("AWS::Logs::LogGroup").items() if k.startswith("NetworkFlowLogs")]
    key = next(iter(vpc.resources("AWS::KMS::Key")))
    assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key, "Arn"]}
    assert group["DeletionPolicy"] == "Retain"


def test_workloads_talk_to_each_other_only(vpc):
    ingress = vpc.resources("AWS::EC2::SecurityGroupIngress")
    workloads = next(k for k in vpc.resources("AWS::EC2::SecurityGroup") if "Workloads" in k)
    [rule] = [v["Properties"] for v in ingress.values()
              if v["Properties"]["GroupId"] == {"Fn::GetAtt": [workloads, "GroupId"]}]
    assert rule["IpProtocol"] == "-1"
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": [workloads, "GroupId"]}


def test_subnets_and_security_group_are_outputs_for_training_jobs(vpc):
    outputs = vpc.doc["Outputs"]
    assert {"SubnetIds", "SecurityGroupIds"} <= set(outputs)
    assert "Fn::Join" in outputs["SubnetIds"]["Value"]


def test_default_has_no_vpc(synth):
    assert not synth.get("default").resources("AWS::EC2::VPC")

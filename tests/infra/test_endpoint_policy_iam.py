"""With `vpc=true`, the S3 gateway endpoint lets through the stack's data bucket and the AWS-owned buckets that image
pulls and the notebook's package repositories need (infra/constructs/network.py S3_ENDPOINT_AWS_BUCKETS), nothing
else (issue 18 item 3). A real IAM evaluator (tests/infra/iam.py) decides each request through the endpoint, made by a
principal whose own policy allows all of S3: the endpoint's policy alone decides.
"""

from __future__ import annotations

from infra.constructs.network import S3_ENDPOINT_AWS_BUCKETS
from tests.infra.iam import ACCOUNT, REGION, Call, Request, evaluate, resolve

ANYTHING = [{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}]


def test_the_s3_endpoint_allows_the_stack_bucket_and_named_aws_buckets_only(synth) -> None:
    doc = synth.get("vpc").doc
    [endpoint] = [v for v in doc["Resources"].values()
                  if v["Type"] == "AWS::EC2::VPCEndpoint" and v["Properties"].get("VpcEndpointType") == "Gateway"]
    policy = resolve(doc, endpoint["Properties"]["PolicyDocument"])
    [bucket] = [resolve(doc, {"Ref": k}) for k, v in doc["Resources"].items()
                if v["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in v["Properties"]]
    [log_bucket] = [resolve(doc, {"Ref": k}) for k, v in doc["Resources"].items()
                    if v["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" not in v["Properties"]]
    aws_buckets = [name.format(region=REGION) for name in S3_ENDPOINT_AWS_BUCKETS]
    cases = [
        (Call("s3:GetObject", f"arn:aws:s3:::{bucket}/datasets/demo/a.dcm"), "Allowed"),
        (Call("s3:PutObject", f"arn:aws:s3:::{bucket}/jobs/job-1/output/model.tar.gz"), "Allowed"),
        (Call("s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": "datasets/"}), "Allowed"),
        *[(Call("s3:GetObject", f"arn:aws:s3:::{name}/some/layer"), "Allowed") for name in aws_buckets],
        *[(Call("s3:PutObject", f"arn:aws:s3:::{name}/some/layer"), "ImplicitlyDenied") for name in aws_buckets],
        # Out through the endpoint: an attacker's bucket, another stack's, even this stack's access logs.
        (Call("s3:PutObject", "arn:aws:s3:::exfiltration-bucket/patients.zip"), "ImplicitlyDenied"),
        (Call("s3:GetObject", "arn:aws:s3:::another-stack-dicom-bucket/datasets/a.dcm"), "ImplicitlyDenied"),
        (Call("s3:GetObject", f"arn:aws:s3:::{log_bucket}/access.log"), "ImplicitlyDenied"),
        (Call("s3:GetObject", "arn:aws:s3:::prod-us-east-1-starport-layer-bucket/layer"), "ImplicitlyDenied"),
    ]
    principal = f"arn:aws:iam::{ACCOUNT}:role/anyone-in-the-vpc"
    decisions = evaluate([Request(principal, ANYTHING, call, endpoint_policy=policy) for call, _ in cases])
    for (call, _), decision in zip(cases, decisions, strict=True):
        print(f"{decision:17} {call}")  # the table, with -s
    assert decisions == [expected for _, expected in cases]


def test_without_a_vpc_there_is_no_endpoint(synth) -> None:
    assert not synth.get("default").resources("AWS::EC2::VPCEndpoint")

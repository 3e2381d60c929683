"""What the notebook role may ask SageMaker to run (issues 17 and 18), as decided by a real IAM policy evaluator
(tests/infra/iam.py) on the synthesized template's resolved policies, both network variants:

- training jobs and models only network-isolated (no network to send data out, no way to the notebook's
  credentials);
- training jobs, transform jobs and endpoint configs only with the stack's key on their volumes and outputs;
- with `vpc=true`, training jobs and models only in the stack's subnets and security group.

The launcher always asks for all of it; the denied requests are what a compromised notebook session or a tampered
launcher would send instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.iam import ACCOUNT, REGION, Call, decide, role_policies, stack_key_and_network

JOB = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/MonaiDicomSageMaker-a1b2-20261206000000"
MODEL = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/MonaiDicomSageMaker-model-a1b2"
TRANSFORM = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:transform-job/MonaiDicomSageMaker-transform-a1b2"
ENDPOINT_CONFIG = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/MonaiDicomSageMaker-endpoint-a1b2"
OTHER_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1111aaaa-2222-bbbb-3333-cccc4444dddd"  # not the stack's
OTHER_SUBNET, OTHER_GROUP = "subnet-0attacker0000000", "sg-0attacker00000000"


def _calls(key: str, subnets: list[str], groups: list[str]) -> list[tuple[Call, str]]:
    """(request, expected decision): what the launcher sends, then each way a request may stray from it."""
    vpc = {"sagemaker:VpcSubnets": subnets, "sagemaker:VpcSecurityGroupIds": groups} if subnets else {}
    job = {"sagemaker:NetworkIsolation": "true", "sagemaker:VolumeKmsKeyArn": key, "sagemaker:OutputKmsKeyArn": key,
           **vpc}
    model = {"sagemaker:NetworkIsolation": "true", **vpc}
    transform = {"sagemaker:VolumeKmsKeyArn": key, "sagemaker:OutputKmsKeyArn": key}

    def without(context: dict[str, Any], name: str) -> dict[str, Any]:
        return {k: v for k, v in context.items() if k != name}

    calls = [
        (Call("sagemaker:CreateTrainingJob", JOB, job), "Allowed"),
        (Call("sagemaker:CreateTrainingJob", JOB, {**job, "sagemaker:NetworkIsolation": "false"}), "ImplicitlyDenied"),
        (Call("sagemaker:CreateTrainingJob", JOB, without(job, "sagemaker:NetworkIsolation")), "ImplicitlyDenied"),
        (Call("sagemaker:CreateTrainingJob", JOB, {**job, "sagemaker:VolumeKmsKeyArn": OTHER_KEY}), "ImplicitlyDenied"),
        (Call("sagemaker:CreateTrainingJob", JOB, without(job, "sagemaker:OutputKmsKeyArn")), "ImplicitlyDenied"),
        (Call("sagemaker:CreateModel", MODEL, model), "Allowed"),
        (Call("sagemaker:CreateModel", MODEL, {**model, "sagemaker:NetworkIsolation": "false"}), "ImplicitlyDenied"),
        (Call("sagemaker:CreateModel", MODEL, without(model, "sagemaker:NetworkIsolation")), "ImplicitlyDenied"),
        (Call("sagemaker:CreateTransformJob", TRANSFORM, transform), "Allowed"),
        (Call("sagemaker:CreateTransformJob", TRANSFORM, {**transform, "sagemaker:OutputKmsKeyArn": OTHER_KEY}),
         "ImplicitlyDenied"),
        (Call("sagemaker:CreateTransformJob", TRANSFORM, without(transform, "sagemaker:VolumeKmsKeyArn")),
         "ImplicitlyDenied"),
        (Call("sagemaker:CreateEndpointConfig", ENDPOINT_CONFIG, {"sagemaker:VolumeKmsKeyArn": key}), "Allowed"),
        (Call("sagemaker:CreateEndpointConfig", ENDPOINT_CONFIG), "ImplicitlyDenied"),
        (Call("sagemaker:DescribeTrainingJob", JOB), "Allowed"),  # following a job needs no such setting
        (Call("sagemaker:DeleteModel", MODEL), "Allowed"),
    ]
    if subnets:
        calls += [
            (Call("sagemaker:CreateTrainingJob", JOB, {**job, "sagemaker:VpcSubnets": [*subnets, OTHER_SUBNET]}),
             "ImplicitlyDenied"),
            (Call("sagemaker:CreateTrainingJob", JOB, {**job, "sagemaker:VpcSecurityGroupIds": [OTHER_GROUP]}),
             "ImplicitlyDenied"),
            (Call("sagemaker:CreateTrainingJob", JOB, without(without(job, "sagemaker:VpcSubnets"),
                                                              "sagemaker:VpcSecurityGroupIds")), "ImplicitlyDenied"),
            (Call("sagemaker:CreateModel", MODEL, {**model, "sagemaker:VpcSubnets": [OTHER_SUBNET]}),
             "ImplicitlyDenied"),
            (Call("sagemaker:CreateModel", MODEL, without(without(model, "sagemaker:VpcSubnets"),
                                                          "sagemaker:VpcSecurityGroupIds")), "ImplicitlyDenied"),
        ]
    return calls


@pytest.mark.parametrize("variant", ["default", "vpc"])
def test_the_notebook_runs_containers_only_isolated_with_the_stack_key_and_in_the_stack_network(synth, variant):
    doc = synth.get(variant).doc
    key, subnets, groups = stack_key_and_network(doc)
    assert bool(subnets) == (variant == "vpc") and bool(groups) == (variant == "vpc")
    calls = _calls(key, subnets, groups)
    decisions = decide(role_policies(doc, "NotebookRole"), [call for call, _ in calls],
                       principal=f"arn:aws:iam::{ACCOUNT}:role/notebook")
    for (call, _), decision in zip(calls, decisions, strict=True):
        print(f"{variant:8} {decision:17} {call}")  # the table, with -s
    assert decisions == [expected for _, expected in calls]

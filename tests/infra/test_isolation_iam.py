"""The notebook role creates training jobs and models only with network isolation (issue 17), as decided by a real
IAM policy evaluator (tests/infra/iam.py) on the synthesized template's resolved policies, both network variants.

A training job or bundle that an attacker controls runs in an isolated container: no network to send data out, and
no way to reach the notebook's credentials. The launcher always asks for isolation; these requests are what a
compromised notebook session or a tampered launcher would send instead.
"""

from __future__ import annotations

import pytest

from tests.infra.iam import ACCOUNT, REGION, Call, decide, role_policies

JOB = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/MonaiDicomSageMaker-a1b2-20261206000000"
MODEL = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/MonaiDicomSageMaker-model-a1b2"
ISOLATED = {"sagemaker:NetworkIsolation": "true"}
OPEN = {"sagemaker:NetworkIsolation": "false"}
CALLS = [
    (Call("sagemaker:CreateTrainingJob", JOB, ISOLATED), "Allowed"),
    (Call("sagemaker:CreateTrainingJob", JOB, OPEN), "ImplicitlyDenied"),
    (Call("sagemaker:CreateTrainingJob", JOB), "ImplicitlyDenied"),  # a request that leaves the setting out
    (Call("sagemaker:CreateModel", MODEL, ISOLATED), "Allowed"),
    (Call("sagemaker:CreateModel", MODEL, OPEN), "ImplicitlyDenied"),
    (Call("sagemaker:CreateModel", MODEL), "ImplicitlyDenied"),
    (Call("sagemaker:DescribeTrainingJob", JOB), "Allowed"),  # following a job needs no such setting
    (Call("sagemaker:DeleteModel", MODEL), "Allowed"),
]


@pytest.mark.parametrize("variant", ["default", "vpc"])
def test_the_notebook_creates_jobs_and_models_only_network_isolated(synth, variant: str) -> None:
    policies = role_policies(synth.get(variant).doc, "NotebookRole")
    decisions = decide(policies, [call for call, _ in CALLS], principal=f"arn:aws:iam::{ACCOUNT}:role/notebook")
    for (call, _), decision in zip(CALLS, decisions, strict=True):
        print(f"{variant:8} {decision:17} {call}")  # the table, with -s
    assert decisions == [expected for _, expected in CALLS]

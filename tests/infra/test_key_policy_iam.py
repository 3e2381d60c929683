"""The data key's policy names its users (issue 18 item 3): the stack's three roles may encrypt and decrypt with it,
the account's administrators may manage it but not decrypt with it, and no other principal of the account may use it
whatever its own IAM policy says. A real IAM evaluator (tests/infra/iam.py, which applies KMS's key-policy trust
rules) decides with the synthesized key policy as the resource policy, both network variants.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.iam import ACCOUNT, REGION, Call, Request, decide, evaluate, resolve, role_policies

EVERYTHING = [{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}]


def _key(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    [(logical_id, key)] = [(k, v) for k, v in doc["Resources"].items() if v["Type"] == "AWS::KMS::Key"]
    return resolve(doc, {"Fn::GetAtt": [logical_id, "Arn"]}), resolve(doc, key["Properties"]["KeyPolicy"])


def _role_arn(doc: dict[str, Any], prefix: str) -> str:
    [role] = [v for k, v in doc["Resources"].items() if v["Type"] == "AWS::IAM::Role" and k.startswith(prefix)]
    return f"arn:aws:iam::{ACCOUNT}:role{role['Properties']['Path']}{prefix}-generated-name"


@pytest.mark.parametrize("variant", ["default", "vpc"])
def test_only_the_stack_roles_use_the_data_key(synth, variant: str) -> None:
    doc = synth.get(variant).doc
    key, key_policy = _key(doc)
    path = doc["Resources"][next(k for k in doc["Resources"] if k.startswith("TrainingRole"))]["Properties"]["Path"]
    # (who, their IAM policies, action, expected)
    cases: list[tuple[str, list[dict[str, Any]], str, str]] = []
    for role in ("TrainingRole", "ModelRole", "NotebookRole"):
        for action in ("kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"):
            cases.append((_role_arn(doc, role), role_policies(doc, role), action, "Allowed"))
    analyst = f"arn:aws:iam::{ACCOUNT}:role/analyst"  # an account role whose own policy allows kms:* everywhere
    look_alike = f"arn:aws:iam::{ACCOUNT}:role/MonaiDicomSageMaker-TrainingRole-x"  # the name, not the path
    outsider = f"arn:aws:iam::210987654321:role{path}TrainingRole-x"  # the path, in another account
    for who in (analyst, look_alike, outsider):
        cases += [(who, EVERYTHING, "kms:Decrypt", "ImplicitlyDenied"),
                  (who, EVERYTHING, "kms:GenerateDataKey", "ImplicitlyDenied"),
                  (who, EVERYTHING, "kms:ReEncryptFrom", "ImplicitlyDenied")]
    # Administrators manage the key (CloudFormation updates it) without decrypting.
    cases += [(analyst, EVERYTHING, "kms:DescribeKey", "Allowed"), (analyst, EVERYTHING, "kms:PutKeyPolicy", "Allowed"),
              (outsider, EVERYTHING, "kms:PutKeyPolicy", "ImplicitlyDenied")]
    results = evaluate([Request(who, policies, Call(action, key), key_policy) for who, policies, action, _ in cases])
    for (who, _, action, _), decision in zip(cases, results, strict=True):
        print(f"{variant:8} {decision:17} {action:22} {who}")  # the table, with -s
    assert results == [expected for *_, expected in cases]


@pytest.mark.parametrize("variant", ["default"])
def test_grants_are_for_aws_resources_only(synth, variant: str) -> None:
    doc = synth.get(variant).doc
    key, key_policy = _key(doc)
    analyst = f"arn:aws:iam::{ACCOUNT}:role/analyst"
    calls = [Call("kms:CreateGrant", key, {"kms:GrantIsForAWSResource": "true"}),
             Call("kms:CreateGrant", key, {"kms:GrantIsForAWSResource": "false"})]
    decisions = decide(EVERYTHING, calls, principal=analyst, resource_policies={key: key_policy})
    for call, decision in zip(calls, decisions, strict=True):
        print(f"{variant:8} {decision:17} {call}")
    assert decisions == ["Allowed", "ImplicitlyDenied"]


def test_cloudwatch_logs_encrypts_this_account_s_log_groups_only(synth) -> None:
    """The evaluator (0.1.173) ignores kms:EncryptionContext:aws:logs:arn (a variable key whose variable holds colons:
    `ignoredContextKeys` in its answer), so it can show only that the service gets nothing without it; the value of
    the condition is read from the policy."""
    doc = synth.get("default").doc
    key, key_policy = _key(doc)
    [decision] = decide([], [Call("kms:GenerateDataKey", key)], principal=f"logs.{REGION}.amazonaws.com",
                        resource_policies={key: key_policy})
    assert decision == "ImplicitlyDenied"
    [logs] = [st for st in key_policy["Statement"] if st["Principal"] == {"Service": f"logs.{REGION}.amazonaws.com"}]
    assert logs["Condition"] == {"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                             f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:*"}}

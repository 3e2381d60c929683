"""IAM decisions on the synthesized template by a real policy evaluator (test helper).

The template's policies hold CloudFormation intrinsics (Ref, Fn::GetAtt, Fn::Join, Fn::Sub): `resolve` replaces them
with the values CloudFormation would give in one account and region (a resource's name is its logical id), and
`decide` and `evaluate` ask `@cloud-copilot/iam-simulate` (tests/infra/iam_simulate.mjs, installed by `make setup`),
which implements IAM's evaluation logic, conditions included. One Node process answers every batch of a test process
(started on first use, about 0.4 s; stopped at exit).
"""

from __future__ import annotations

import atexit
import json
import re
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
SIMULATE = Path(__file__).with_name("iam_simulate.mjs")
ACCOUNT = "123456789012"
REGION = "eu-west-1"
PSEUDO = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
          "AWS::StackName": "MonaiDicomSageMaker", "AWS::NoValue": None}


def _arn(doc: dict[str, Any], logical_id: str) -> str:
    kind = doc["Resources"][logical_id]["Type"]
    name = _name(doc, logical_id)
    properties = doc["Resources"][logical_id].get("Properties", {})
    return {
        "AWS::S3::Bucket": f"arn:aws:s3:::{name}",
        "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{name}",
        "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role{properties.get('Path', '/')}{name}",
        "AWS::ECR::Repository": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}",
        "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*",
    }.get(kind, f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:resource/{name}")


def _name(doc: dict[str, Any], logical_id: str) -> str:
    properties = doc["Resources"][logical_id].get("Properties", {})
    explicit = properties.get("BucketName") or properties.get("RoleName") or properties.get("RepositoryName")
    return explicit if isinstance(explicit, str) else logical_id.lower()


def resolve(doc: dict[str, Any], value: Any) -> Any:
    """`value` with every intrinsic function of `doc` replaced by what CloudFormation would give."""
    if isinstance(value, list):
        return [resolve(doc, v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (function, argument), = value.items()
        if function == "Ref":
            return PSEUDO[argument] if argument in PSEUDO else _name(doc, argument)
        if function == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
            if attribute == "Arn":
                return _arn(doc, logical_id)
            return f"{_name(doc, logical_id)}.{attribute}"
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(str(resolve(doc, p)) for p in parts)
        if function == "Fn::Sub":
            template, variables = (argument, {}) if isinstance(argument, str) else argument
            names = {**PSEUDO, **{k: resolve(doc, v) for k, v in variables.items()}}
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(names.get(m.group(1)) or _name(doc, m.group(1))), template)
        if function == "Fn::Select":
            index, items = argument
            return resolve(doc, items)[int(index)]
        if function == "Fn::Split":
            separator, text = argument
            return str(resolve(doc, text)).split(separator)
    return {k: resolve(doc, v) for k, v in value.items()}


def role_policies(doc: dict[str, Any], role_prefix: str) -> list[dict[str, Any]]:
    """The resolved policy documents of the one role whose logical id starts with `role_prefix`."""
    [role_id] = [k for k, v in doc["Resources"].items() if v["Type"] == "AWS::IAM::Role" and k.startswith(role_prefix)]
    role = doc["Resources"][role_id]["Properties"]
    documents = [p["PolicyDocument"] for p in role.get("Policies", [])]
    documents += [r["Properties"]["PolicyDocument"] for r in doc["Resources"].values()
                  if r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"]["Roles"]]
    return [resolve(doc, d) for d in documents]


@dataclass(frozen=True)
class Call:
    """One request: `action` on `resource`, with the request's condition keys."""

    action: str
    resource: str
    context: Mapping[str, str | list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        keys = " ".join(f"{k}={v}" for k, v in sorted(self.context.items()))
        return f"{self.action} {self.resource}" + (f" [{keys}]" if keys else "")


@dataclass(frozen=True)
class Request:
    """One call by one principal: its identity policies and, where the resource has one, the resource's policy."""

    principal: str
    policies: list[dict[str, Any]]
    call: Call
    resource_policy: dict[str, Any] | None = None
    endpoint_policy: dict[str, Any] | None = None  # a VPC endpoint's, when the request passes through one


class _Node:
    """One iam_simulate.mjs process for this test process, answering a line of cases with a line of decisions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None
        self.stderr: IO[str] | None = None

    def ask(self, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the process
                self.process = subprocess.Popen(["node", str(SIMULATE)], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=ROOT)
                atexit.register(self.stop)
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(json.dumps({"cases": cases}) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
            if not line:
                assert self.stderr is not None
                self.stderr.seek(0)
                raise AssertionError(f"{SIMULATE.name} ended: {self.stderr.read()[-3000:]}")
            results: list[dict[str, Any]] = json.loads(line)
            return results

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=10)


_NODE = _Node()


def evaluate(requests: Sequence[Request]) -> list[str]:
    """The evaluator's decision for each request ('Allowed', 'ImplicitlyDenied', 'ExplicitlyDenied'; 'Error' with
    the evaluator's reasons raises), all in one round trip."""
    cases = [{"principal": r.principal, "action": r.call.action, "resource": r.call.resource, "account": ACCOUNT,
              "context": {**_implied(r.principal), **r.call.context}, "identityPolicies": r.policies,
              **({"resourcePolicy": r.resource_policy} if r.resource_policy is not None else {}),
              **({"endpointPolicy": r.endpoint_policy} if r.endpoint_policy is not None else {})} for r in requests]
    results = _NODE.ask(cases) if cases else []
    errors = [(str(r.call), x["errors"]) for r, x in zip(requests, results, strict=True) if x["decision"] == "Error"]
    assert not errors, errors
    return [x["decision"] for x in results]


def _implied(principal: str) -> dict[str, str]:
    """What AWS puts in every request by an IAM principal (the evaluator takes context keys as given)."""
    if not principal.startswith("arn:"):
        return {}  # a service principal
    return {"aws:PrincipalArn": principal, "aws:PrincipalAccount": principal.split(":")[4]}


def stack_key_and_network(doc: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """The stack key's ARN, and the private subnets and security groups jobs run in (empty without a VPC), as the
    launcher reads them from the stack's outputs."""
    [key] = [k for k, v in doc["Resources"].items() if v["Type"] == "AWS::KMS::Key"]
    outputs = doc["Outputs"]
    subnets, groups = (str(resolve(doc, outputs[name]["Value"])).split(",") if name in outputs else []
                       for name in ("SubnetIds", "SecurityGroupIds"))
    return _arn(doc, key), subnets, groups


def role_arn(doc: dict[str, Any], role_prefix: str) -> str:
    """The ARN of the one role whose logical id starts with `role_prefix`, its IAM path included (the data key's
    policy names the stack's roles by their path)."""
    [role_id] = [k for k, v in doc["Resources"].items() if v["Type"] == "AWS::IAM::Role" and k.startswith(role_prefix)]
    return _arn(doc, role_id)


def decide(policies: list[dict[str, Any]], calls: list[Call], *, principal: str,
           resource_policies: Mapping[str, dict[str, Any]] | None = None) -> list[str]:
    """The evaluator's decision for each call by one principal (see evaluate).

    Args:
        policies: the principal's identity policies (role_policies).
        calls: the requests.
        principal: the principal's ARN.
        resource_policies: a resource's ARN (a bucket, a key) to its policy, which then applies to the calls on it
            and, for a bucket, on its objects.
    """
    return evaluate([Request(principal, policies, c, resource_policy(resource_policies or {}, c.resource))
                     for c in calls])


def resource_policy(policies: Mapping[str, dict[str, Any]], resource: str) -> dict[str, Any] | None:
    """The policy of `resource` among `policies` (ARN to policy): its own, or its bucket's for an object."""
    for arn, policy in policies.items():
        if resource == arn or resource.startswith(f"{arn}/"):
            return policy
    return None


def role_id(doc: dict[str, Any], prefix: str) -> str:
    """The logical id of the one role whose logical id starts with `prefix`."""
    [found] = [k for k, v in doc["Resources"].items() if v["Type"] == "AWS::IAM::Role" and k.startswith(prefix)]
    return found


def arn_of(doc: dict[str, Any], logical_id: str) -> str:
    """A resource's ARN as `resolve` gives it (Fn::GetAtt Arn)."""
    return _arn(doc, logical_id)


def resource_policies(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The template's bucket policies and key policies, resolved, by their resource's ARN (KMS requires the key policy
    to allow a call, directly or by delegating to the account's IAM policies)."""
    policies = {}
    for resource in doc["Resources"].values():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::S3::BucketPolicy" and isinstance(properties["Bucket"], dict):
            policies[_arn(doc, properties["Bucket"]["Ref"])] = resolve(doc, properties["PolicyDocument"])
    for logical_id, resource in doc["Resources"].items():
        if resource["Type"] == "AWS::KMS::Key":
            policies[_arn(doc, logical_id)] = resolve(doc, resource["Properties"]["KeyPolicy"])
    return policies


def expect(doc: dict[str, Any], role_prefix: str, cases: Sequence[tuple[Call, bool]], *, label: str = "") -> None:
    """Assert that the evaluator allows each call paired with True and denies each paired with False, for the role
    whose logical id starts with `role_prefix`, under the template's resource policies (bucket, key); each verdict is
    printed (the table, with -s)."""
    calls = [call for call, _ in cases]
    decisions = decide(role_policies(doc, role_prefix), calls, principal=arn_of(doc, role_id(doc, role_prefix)),
                       resource_policies=resource_policies(doc))
    for call, decision in zip(calls, decisions, strict=True):
        print(f"{label:8} {role_prefix:13} {decision:17} {call}")
    wrong = [f"{call}: {decision}, expected {'Allowed' if allowed else 'denied'}"
             for (call, allowed), decision in zip(cases, decisions, strict=True) if (decision == "Allowed") != allowed]
    assert wrong == []

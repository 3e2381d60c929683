"""IAM decisions on the synthesized template by a real policy evaluator (test helper).

The template's policies hold CloudFormation intrinsics (Ref, Fn::GetAtt, Fn::Join, Fn::Sub): `resolve` replaces them
with the values CloudFormation would give in one account and region (a resource's name is its logical id), and
`decide` asks `@cloud-copilot/iam-simulate` (tests/infra/iam_simulate.mjs, installed by `make setup`), which
implements IAM's evaluation logic, conditions included, for a batch of requests in one Node process.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SIMULATE = Path(__file__).with_name("iam_simulate.mjs")
ACCOUNT = "123456789012"
REGION = "eu-west-1"
PSEUDO = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
          "AWS::StackName": "MonaiDicomSageMaker", "AWS::NoValue": None}


def _arn(doc: dict[str, Any], logical_id: str) -> str:
    kind = doc["Resources"][logical_id]["Type"]
    name = _name(doc, logical_id)
    return {
        "AWS::S3::Bucket": f"arn:aws:s3:::{name}",
        "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{name}",
        "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{name}",
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
    context: dict[str, str | list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        keys = " ".join(f"{k}={v}" for k, v in sorted(self.context.items()))
        return f"{self.action} {self.resource}" + (f" [{keys}]" if keys else "")


def decide(policies: list[dict[str, Any]], calls: list[Call], *, principal: str,
           resource_policy: dict[str, Any] | None = None) -> list[str]:
    """The evaluator's decision for each call ('Allowed', 'ImplicitlyDenied', 'ExplicitlyDenied'; 'Error' with the
    evaluator's reasons raises), with the principal's identity `policies` and the resource's policy if any (a key
    policy, a bucket policy)."""
    return decide_each([(principal, policies, call) for call in calls], resource_policy=resource_policy)


def decide_each(requests: list[tuple[str, list[dict[str, Any]], Call]], *,
                resource_policy: dict[str, Any] | None = None,
                endpoint_policy: dict[str, Any] | None = None) -> list[str]:
    """`decide` for requests of several principals, each (principal, its identity policies, call), in one run; with
    `endpoint_policy`, through a VPC endpoint of that policy."""
    extra: dict[str, Any] = {"resourcePolicy": resource_policy} if resource_policy is not None else {}
    if endpoint_policy is not None:
        extra["endpointPolicy"] = endpoint_policy
    cases = []
    for principal, policies, c in requests:
        # What AWS puts in every request by an IAM principal (the evaluator takes context keys as given).
        implied = {"aws:PrincipalArn": principal, "aws:PrincipalAccount": principal.split(":")[4]} \
            if principal.startswith("arn:") else {}
        cases.append({"principal": principal, "action": c.action, "resource": c.resource, "account": ACCOUNT,
                      "context": {**implied, **c.context}, "identityPolicies": policies, **extra})
    done = subprocess.run(["node", str(SIMULATE)], input=json.dumps({"cases": cases}), capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    errors = [(p, str(c), r["errors"]) for (p, _, c), r in zip(requests, results, strict=True)
              if r["decision"] == "Error"]
    assert not errors, errors
    return [r["decision"] for r in results]

"""Reading IAM statements out of a synthesized template (test helper)."""

from __future__ import annotations

import fnmatch
from typing import Any


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(doc: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    """Every statement of every policy attached to a role (inline policies and AWS::IAM::Policy resources)."""
    statements: list[dict[str, Any]] = []
    role = doc["Resources"][role_id]["Properties"]
    for policy in role.get("Policies", []):
        statements += policy["PolicyDocument"]["Statement"]
    for resource in doc["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in resource["Properties"]["Roles"]:
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    assert not role.get("ManagedPolicyArns"), "no managed policies are attached to the stack's roles"
    return statements


def allows(statements: list[dict[str, Any]], action: str, *, resource: Any = "*", unconditional: bool = False) -> bool:
    """Whether some Allow statement grants `action` on `resource` (IAM wildcards in actions honoured)."""
    for st in statements:
        if st["Effect"] != "Allow" or (unconditional and "Condition" in st):
            continue
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in as_list(st["Action"])):
            if resource in as_list(st["Resource"]):
                return True
    return False


def role_id(doc: dict[str, Any], prefix: str) -> str:
    [found] = [k for k, v in doc["Resources"].items() if v["Type"] == "AWS::IAM::Role" and k.startswith(prefix)]
    return found

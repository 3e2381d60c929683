"""Acknowledging cdk-nag findings, each with its reason, at the code that needs it (the README lists them all)."""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

PACKS = {"AwsSolutions": "AwsSolutions", "HIPAA.Security": "HIPAA.Security"}


def acknowledge(scope: IConstruct, rule: str, reason: str, applies_to: Iterable[str] = ()) -> None:
    """Acknowledge a cdk-nag rule on `scope` and everything below it.

    Args:
        scope: the construct whose finding is accepted.
        rule: the rule id, e.g. "AwsSolutions-IAM5" or "HIPAA.Security-S3BucketReplicationEnabled".
        reason: why the finding is accepted; it lands in the cloud assembly and the README.
        applies_to: for granular rules (IAM5), the findings accepted, e.g. "Action::s3:List*"; empty: the rule.
    """
    pack = rule.rsplit("-", 1)[0]
    if pack not in PACKS:
        raise ValueError(f"unknown cdk-nag pack in rule {rule!r}: use one of {sorted(PACKS)}")
    findings = [f"{rule}[{item}]" for item in applies_to] or [rule]
    Validations.of(scope).acknowledge(*(Acknowledgment(id=f"{pack}::{f}", reason=reason) for f in findings))


def as_finding(scope: IConstruct, value: str) -> str:
    """Render a (possibly tokenized) ARN the way cdk-nag names it in IAM5 findings, e.g. `<Bucket1234.Arn>/data/*`.

    Args:
        scope: any construct in the stack that resolves the value.
        value: a string that may hold CloudFormation tokens.
    """
    from aws_cdk import Stack

    def render(node: object) -> str:
        if isinstance(node, str):
            return node
        if isinstance(node, dict) and "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{resource}.{attribute}>"
        if isinstance(node, dict) and "Ref" in node:
            return f"<{node['Ref']}>"
        if isinstance(node, dict) and "Fn::Join" in node:
            separator, parts = node["Fn::Join"]
            return separator.join(render(part) for part in parts)
        raise ValueError(f"cannot render {node!r} as a cdk-nag finding")

    return render(Stack.of(scope).resolve(value))

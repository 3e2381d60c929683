"""Template fixes that keep cfn-lint clean where CDK's own constructs are noisy."""

from __future__ import annotations

from aws_cdk import CfnResource, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_


def drop_redundant_provider_dependencies(stack: Stack) -> None:
    """Remove the DependsOn on its role that CDK gives a function which already references the role's ARN.

    cfn-lint reports that DependsOn (W3005): the GetAtt keeps the creation order. Two kinds of function get it: the
    providers behind `auto_delete_objects` and the VPC's default-security-group restriction (a Custom:: provider's
    Handler and Role), and a lambda.Function given its role (it keeps its DependsOn on the role's policy, which it
    must wait for).

    Args:
        stack: the stack whose functions to fix (call after every construct is added).
    """
    for child in stack.node.children:
        if not child.node.id.startswith("Custom::"):
            continue
        handler, role = child.node.try_find_child("Handler"), child.node.try_find_child("Role")
        if isinstance(handler, CfnResource) and isinstance(role, CfnResource):
            handler.remove_resource_dependency(role)
    for construct in stack.node.find_all():
        if isinstance(construct, lambda_.Function) and isinstance(construct.role, iam.Role):
            cfn, policy = construct.node.default_child, construct.role.node.try_find_child("DefaultPolicy")
            policy_resource = policy.node.default_child if policy is not None else None
            if isinstance(cfn, CfnResource) and isinstance(policy_resource, CfnResource):
                cfn.add_override("DependsOn", [stack.get_logical_id(policy_resource)])

"""Template fixes that keep cfn-lint clean where CDK's own constructs are noisy."""

from __future__ import annotations

from aws_cdk import CfnResource, Stack


def drop_redundant_provider_dependencies(stack: Stack) -> None:
    """Remove the DependsOn that CDK's custom-resource providers put on their role.

    The providers behind `auto_delete_objects` and the VPC's default-security-group restriction declare DependsOn
    their role although their handler already references the role's ARN; cfn-lint reports that (W3005). The GetAtt
    keeps the creation order, so the DependsOn can go.

    Args:
        stack: the stack whose providers to fix (call after every construct is added).
    """
    for child in stack.node.children:
        if not child.node.id.startswith("Custom::"):
            continue
        handler, role = child.node.try_find_child("Handler"), child.node.try_find_child("Role")
        if isinstance(handler, CfnResource) and isinstance(role, CfnResource):
            handler.remove_resource_dependency(role)

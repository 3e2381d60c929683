"""Builds the CDK app: context in, one stack out, with the cdk-nag packs as synth-time validations.

`app.py` at the repository root calls this (it is what `npx cdk synth` runs); tests call it with their own context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from infra.config import InfraConfig, cdk_json_context
from infra.lifecycle.render import commit_on_remote, current_commit, origin_url
from infra.stack import MonaiDicomStack

REPO_ROOT = Path(__file__).resolve().parents[1]


_SCP_URL = re.compile(r"^(?:ssh://)?git@(?P<host>[\w.-]+)[:/](?P<path>[\w./-]+?)(?:\.git)?/?$")


def https_origin(url: str) -> str:
    """The HTTPS form of an SSH origin (`git@github.com:org/repo.git` -> `https://github.com/org/repo.git`).

    The notebook clones without credentials, so it needs HTTPS; a checkout cloned over SSH names the same repository.
    Other URLs are returned unchanged (and checked by the configuration).

    Args:
        url: the origin remote's URL.
    """
    match = _SCP_URL.match(url)
    return f"https://{match['host']}/{match['path']}.git" if match else url


def build_app(
    context: Mapping[str, Any] | None = None, *, outdir: str | None = None
) -> tuple[cdk.App, MonaiDicomStack]:
    """Create the app and its stack.

    Args:
        context: extra CDK context (tests); the CLI passes cdk.json and `-c` values through the environment.
        outdir: the cloud assembly directory; None lets the CLI (or a temporary directory) decide.
    """
    # cdk.json's context (defaults, feature flags) applies to tests too; the CLI's own context takes precedence.
    defaults = cdk_json_context()
    app = cdk.App(context={**defaults, **(context or {})}, outdir=outdir)
    head = current_commit(REPO_ROOT) or ""
    config = InfraConfig.from_context(app.node.try_get_context, origin_url=https_origin(origin_url(REPO_ROOT) or ""),
                                      head_commit=head)
    stack = MonaiDicomStack(
        app, config.stack_name, config=config,
        description="MONAI training on DICOM with Amazon SageMaker: data bucket, key, roles, image, notebook",
    )
    ref = config.notebook.repo_ref
    if ref == head and commit_on_remote(REPO_ROOT, ref) is False:
        cdk.Annotations.of(stack).add_warning_v2(
            "monai-dicom:commit-not-pushed",
            f"the notebook will clone commit {ref[:12]}, which is not on the remote yet: push it before the notebook "
            "is created, or deploy with -c repoRef=BRANCH_OR_TAG")
    # Violations fail synth (cdk.out/validation-report.json lists them); acknowledgments sit beside their code.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True), HIPAASecurityChecks(app, verbose=True))
    return app, stack

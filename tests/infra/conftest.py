"""Templates synthesized once per test session, one per stack variant, with the cdk-nag packs enabled.

Synthesis raises when a cdk-nag rule is violated and not acknowledged, so every variant here is nag-clean or the
session's first use of it fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Template

from infra.app import build_app

ACCOUNT_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/monai-training:1.0"
KEPT_KEY = "arn:aws:kms:eu-west-1:123456789012:key/0b1f6a52-3f5e-4a5c-9a8e-4f2c2b7c1d11"

REPO = {"repoUrl": "https://github.com/example-org/monai-dicom-sagemaker.git",
        "repoRef": "0123456789abcdef0123456789abcdef01234567"}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "destroy_data": {"destroyData": "true"},
    "existing_data": {"dataBucketName": "kept-dicom-bucket", "dataKeyArn": KEPT_KEY, "trainingImageUri": ACCOUNT_IMAGE},
    "gpu": {"imageVariant": "gpu"},
    "vpc": {"vpc": "true"},
}


@dataclass(frozen=True)
class Synthesized:
    """One synthesized variant."""

    template: Template
    doc: dict[str, Any]  # the template as JSON
    outdir: Path  # its cloud assembly
    template_path: Path

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.doc["Resources"].items() if v["Type"] == kind}


class SynthCache:
    """The variants synthesized so far (the session fixture `synth`, tests/conftest.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[str, Synthesized] = {}

    def get(self, variant: str) -> Synthesized:
        if variant not in self.done:
            outdir = self.root / variant
            app, stack = build_app({**REPO, **VARIANTS[variant]}, outdir=str(outdir))
            assembly = app.synth()
            artifact = assembly.get_stack_artifact(stack.artifact_id)
            path = Path(artifact.template_full_path)
            doc = json.loads(path.read_text())
            self.done[variant] = Synthesized(Template.from_json(doc), doc, outdir, path)
        return self.done[variant]

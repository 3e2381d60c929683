"""cdk-nag (AwsSolutions and HIPAA Security), cfn-lint and the real CDK CLI on every stack variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.infra.conftest import REPO, VARIANTS

README = (ROOT / "README.md").read_text()


def _report(s) -> list[dict]:
    return json.loads((s.outdir / "validation-report.json").read_text())["pluginReports"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nag_packs_pass_with_every_acknowledgment_reasoned_and_documented(synth, variant):
    reports = _report(synth.get(variant))
    assert {r["pluginName"] for r in reports} == {"AwsSolutions", "HIPAA.Security"}
    for report in reports:
        assert report["conclusion"] == "success" and report["violations"] == []
        for suppressed in report["suppressedViolations"]:
            assert len(suppressed["reason"]) > 30, suppressed["acknowledgedId"]
            rule = suppressed["ruleName"].split("[")[0]
            assert rule in README, f"{rule} is acknowledged but not listed in the README's security section"
            assert suppressed["reason"] in README, f"the README does not give the reason for {rule}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cfn_lint_finds_nothing(synth, variant):
    path = synth.get(variant).template_path
    result = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), "--format", "parseable", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.slow
def test_real_cdk_cli_synthesizes_the_default_stack(tmp_path):
    env = {**os.environ, "CDK_DISABLE_CLI_TELEMETRY": "true", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    start = time.perf_counter()
    result = subprocess.run(["npx", "--no-install", "cdk", "synth", "--quiet", "-o", str(tmp_path / "out"),
                             "-c", f"repoUrl={REPO['repoUrl']}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    print(f"npx cdk synth: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    template = json.loads((tmp_path / "out" / "MonaiDicomSageMaker.template.json").read_text())
    assert any(r["Type"] == "AWS::S3::Bucket" for r in template["Resources"].values())
    assets = json.loads((tmp_path / "out" / "MonaiDicomSageMaker.assets.json").read_text())
    assert len(assets["dockerImages"]) == 1

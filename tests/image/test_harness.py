"""The contract tests' own instruments: the no-network hook and the check of imports against the image's packages.

A check that cannot fail proves nothing: each is shown to catch what it is there to catch.
"""

from __future__ import annotations

import sys

import cfnlint
import moto
import numpy

from tests.image.jobrun import base_environment, distributions_outside_the_image, run_without_network

REACH_OUT = """
import urllib.request
try:
    urllib.request.urlopen("https://pypi.org/simple/monai/", timeout=5)
except OSError as exc:
    print("refused:", exc)
"""


def test_the_hook_refuses_and_records_network_access(tmp_path):
    run = run_without_network([sys.executable, "-c", REACH_OUT], base_environment(), tmp_path, tmp_path / "records")
    assert run.returncode == 0, run.output
    assert "refused:" in run.output
    assert run.refused and "pypi.org" in run.refused[0]
    [record] = run.records
    assert "urllib.request" in record["modules"]


def test_imports_from_packages_the_image_lacks_are_named():
    records = [{"modules": {"moto": moto.__file__, "cfnlint.core": cfnlint.__file__, "numpy": numpy.__file__,
                            "json": sys.modules["json"].__file__, "builtins": None}}]
    assert distributions_outside_the_image(records) == {"moto": "moto", "cfn-lint": "cfnlint.core"}

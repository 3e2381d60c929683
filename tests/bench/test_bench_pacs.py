"""Smoke test of bench/pacs.py (`python -m bench.pacs`): a tiny run against a real Orthanc, every transport with 1
and 4 workers, each pull complete (the script stops otherwise). No timing assertions: a run this small means nothing."""

from __future__ import annotations

import json

import pytest

from bench import pacs
from demo.orthanc import orthanc_missing


def test_every_transport_pulls_everything_and_the_figures_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    missing = orthanc_missing()
    if missing:
        pytest.fail(missing)
    assert pacs.main(["--instances", "12", "--studies", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["instances_per_second"]) == {f"{name}, {workers}" for name in ("DICOMweb", "C-GET", "C-MOVE")
                                                     for workers in ("1 worker", "4 workers")}
    assert all(rate > 0 for rate in printed["instances_per_second"].values())
    assert printed["deidentify_ms_per_file"] > 0 and printed["machine"]["logical_cores"] >= 1

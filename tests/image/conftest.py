"""Fixtures of the image tests: the synthetic DICOM set the contract tests train on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic DICOM set made by the job's own generator (`python -m training.synthetic`)."""
    out = tmp_path_factory.mktemp("synthetic") / "train"
    subprocess.run([sys.executable, "-m", "training.synthetic", str(out), "--count", "24", "--size", "64"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    return out

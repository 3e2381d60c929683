"""training/container/verify.py, the image build's own checks, run here where the same packages are installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.image.dockerfile import REQUIREMENTS, image_environment, lay_out_code
from tests.image.jobrun import base_environment
from training.container.verify import check_packages, installed_versions, read_pins

VERIFY = ["container", "verify.py"]


def test_the_package_check_passes_for_an_install_that_kept_the_base():
    installed = installed_versions()
    assert check_packages(installed, read_pins(REQUIREMENTS), installed, image_environment()) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"base": {"numpy": "1.26.4"}}, "numpy 1.26.4 of the base image became"),
    ({"requirements": {"monai": "1.5.0"}}, "monai==1.5.0 from requirements.txt is not installed"),
    ({"env": {"TRAINING_IMAGE_MONAI": "1.5.0"}}, "TRAINING_IMAGE_MONAI=1.5.0 but monai"),
    ({"installed": {"numpy": None}}, "monai needs numpy"),
])
def test_the_package_check_names_what_went_wrong(change, expected):
    installed = installed_versions()
    base = {**installed, **change.get("base", {})}
    requirements = {**read_pins(REQUIREMENTS), **change.get("requirements", {})}
    now = {k: v for k, v in {**installed, **change.get("installed", {})}.items() if v is not None}
    env = {**image_environment(), **change.get("env", {})}
    problems = check_packages(base, requirements, now, env)
    assert any(expected in p for p in problems), problems


def test_the_package_check_runs_as_the_build_runs_it(tmp_path):
    freeze = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout
    (tmp_path / "base.txt").write_text(freeze)
    code = lay_out_code(tmp_path / "opt-ml")
    command = [sys.executable, str(code.joinpath(*VERIFY)), "packages", "--base", str(tmp_path / "base.txt"),
               "--requirements", str(code / "requirements.txt"), "--lock", str(code / "requirements-lock.txt")]
    done = subprocess.run(command, env={**base_environment(), **image_environment()}, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_job_check_imports_the_laid_out_code_and_decodes_compressed_dicom(tmp_path):
    base_dir = tmp_path / "opt-ml"
    code = lay_out_code(base_dir)
    env = {**base_environment(), **image_environment(), "PYTHONPATH": str(base_dir / "code")}
    done = subprocess.run([sys.executable, str(code.joinpath(*VERIFY)), "job"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"training imports from {code}" in done.stdout
    assert "decoded the synthetic set" in done.stdout

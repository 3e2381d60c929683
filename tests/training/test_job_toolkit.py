"""The job as the image runs it without a code channel: the SageMaker training toolkit runs SAGEMAKER_PROGRAM.

The image bakes the package at /opt/ml/code/training (training/Dockerfile) and sets SAGEMAKER_PROGRAM to
training/train_entry.py; the toolkit passes hyperparameters as `--name value` with Python's spelling of booleans
("True"). SAGEMAKER_BASE_DIR points the toolkit at a temporary tree and SM_STUDIO_LOCAL_MODE stops it waiting for
the host name algo-1 (FACTS.md). The train channel is empty, so the job stops right after reading its contract and
hyperparameters, without training (the one trained bundle of the session comes from test_job_sagemaker.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.job_sagemaker import PACKAGE

pytest.importorskip("sagemaker_training")


def test_toolkit_runs_the_baked_in_entry_with_its_argument_spelling(tmp_path: Path) -> None:
    base = tmp_path / "ml"
    code = base / "code"
    shutil.copytree(PACKAGE, code / "training", ignore=shutil.ignore_patterns("__pycache__"))
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (base / "input" / "data" / "train").mkdir(parents=True)
    hyperparameters = {"epochs": "2", "class_weighting": "true", "image_size": "[64, 64]", "sagemaker_program": "x"}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    resources = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
    (config / "resourceconfig.json").write_text(json.dumps({**resources, "current_instance_type": "ml.m5.large"}))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SAGEMAKER_BASE_DIR": str(base),
        "SM_STUDIO_LOCAL_MODE": "true",
        "SAGEMAKER_PROGRAM": "training/train_entry.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": str(code),
        "PYTHONPATH": str(code),
        "TRAINING_JOB_NAME": "toolkit-test",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from sagemaker_training.cli.train import main; main()"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "training/train_entry.py --class_weighting True --epochs 2 --image_size [64, 64]" in output
    assert "network densenet121 at 64x64" in output  # the hyperparameters were parsed
    failure = (base / "output" / "failure").read_text()
    assert "channel 'train'" in failure and "is empty" in failure  # the job's own reason, for FailureReason

"""Run the training job the way SageMaker runs it, in a temporary /opt/ml-like tree (helpers for the job tests).

SDK v3 (`ModelTrainer` with `SourceCode`) replaces the image's entrypoint with its own driver, sm_train.sh, which
runs the SDK's environment.py (writes the SM_* variables) and basic_script_driver.py (runs the entry script with the
hyperparameters as `--name value`). Those files hard-code /opt/ml; here they are copied from the installed SDK
with /opt/ml replaced by the temporary tree, and sm_train.sh is rendered from the SDK's own template. The code
channel holds a copy of the training/ package, as `SourceCode(source_dir="training")` uploads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sagemaker.train
from sagemaker.train.templates import EXECUTE_BASIC_SCRIPT_DRIVER, TRAIN_SCRIPT_TEMPLATE
from sagemaker.train.utils import safe_serialize

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "training"
ENTRY_SCRIPT = "train_entry.py"
JOB_NAME = "job-test-0001"


@dataclass
class SageMakerRun:
    """A finished run: the tree, what the driver printed, and how long it took."""

    base: Path
    returncode: int
    stdout: str
    seconds: float

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_data_dir(self) -> Path:
        return self.base / "output" / "data"


def make_tree(base: Path, *, hyperparameters: Mapping[str, Any], channels: Mapping[str, Path]) -> None:
    """Lay out base/ like /opt/ml: config files, data channels (moved in), code and SDK driver channels.

    Args:
        base: the tree's root (empty or new).
        hyperparameters: as given to ModelTrainer; written as the SDK does, each value a string.
        channels: channel name to a directory moved into input/data/<name>.
    """
    config = base / "input" / "config"
    data = base / "input" / "data"
    for directory in (config, data, base / "model", base / "output" / "data"):
        directory.mkdir(parents=True, exist_ok=True)
    for name, source in channels.items():
        shutil.move(str(source), data / name)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: safe_serialize(v) for k, v in hyperparameters.items()}), encoding="utf-8"
    )
    (config / "resourceconfig.json").write_text(
        json.dumps(
            {
                "current_host": "algo-1",
                "current_instance_type": "ml.m5.large",
                "current_group_name": "homogeneousCluster",
                "hosts": ["algo-1"],
                "network_interface_name": "eth0",
            }
        ),
        encoding="utf-8",
    )
    channel_config = {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in channels}
    channel_config["code"] = channel_config["sm_drivers"] = {"TrainingInputMode": "File"}
    (config / "inputdataconfig.json").write_text(json.dumps(channel_config), encoding="utf-8")
    shutil.copytree(PACKAGE, data / "code", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _install_drivers(base, data / "sm_drivers")


def run_driver(base: Path, *, extra_env: Mapping[str, str] | None = None, timeout: float = 900) -> SageMakerRun:
    """Run sm_train.sh as the container would (`/bin/bash -c .../sm_drivers/sm_train.sh`), with the venv's python3.

    Args:
        base: a tree from `make_tree`.
        extra_env: e.g. TRAINING_IMAGE_VERSION, as the image sets.
        timeout: seconds.
    """
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "TRAINING_JOB_NAME": JOB_NAME,
        "TRAINING_JOB_ARN": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{JOB_NAME}",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    started = time.perf_counter()
    done = subprocess.run(
        ["/bin/bash", "-c", str(base / "input" / "data" / "sm_drivers" / "sm_train.sh")],
        env=env,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return SageMakerRun(base, done.returncode, done.stdout + done.stderr, time.perf_counter() - started)


def _install_drivers(base: Path, target: Path) -> None:
    """The SDK's container drivers, sourcecode.json, distributed.json and sm_train.sh, rooted at base."""
    drivers = Path(sagemaker.train.__file__).parent / "container_drivers"
    shutil.copytree(drivers, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in target.rglob("*.py"):
        path.write_text(path.read_text(encoding="utf-8").replace("/opt/ml", str(base)), encoding="utf-8")
    script = TRAIN_SCRIPT_TEMPLATE.format(
        working_dir="cd /opt/ml/input/data/code \n",
        install_requirements="",
        execute_driver=EXECUTE_BASIC_SCRIPT_DRIVER,
    )
    (target / "sm_train.sh").write_text(script.replace("/opt/ml", str(base)), encoding="utf-8")
    (target / "sm_train.sh").chmod(0o755)
    source_code = {"source_dir": "training", "entry_script": ENTRY_SCRIPT, "requirements": None, "command": None}
    (target / "sourcecode.json").write_text(json.dumps(source_code), encoding="utf-8")
    (target / "distributed.json").write_text("{}", encoding="utf-8")

"""The per-job code path, without Docker: the SageMaker SDK's own driver scripts run the job shipped as a code channel.

The launcher (launcher/jobs/sagemaker_runner.py) gives ModelTrainer `SourceCode(source_dir=training,
entry_script=train_entry.py)`. The SDK then replaces the image's entrypoint with `/bin/bash -c "chmod +x .../sm_train.sh
&& .../sm_train.sh"` and ships its drivers (sagemaker/train/container_drivers/, sm_train.sh written from
sagemaker/train/templates.py) as the channel sm_drivers, the code as the channel code. Here the SDK writes those files
exactly as ModelTrainer.train() does, /opt/ml is rewritten to a temporary tree in the copies (the drivers hard-code it),
and the container's command runs against that tree, next to the image's own code laid out as the Dockerfile lays it out,
with the image's ENV and no network. Left to a real job: Docker and the base image (its Python 3.12, python3 and pip
there), SageMaker's uploads of the code and drivers to S3 and downloads into the container, the Torchrun driver of
multi-instance jobs, and GPUs.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
import sagemaker.core.utils.install_requirements as sdk_install_requirements
from sagemaker.core.training.configs import SourceCode
from sagemaker.train import constants

with warnings.catch_warnings():  # the SDK's own import of its old config module warns; nothing to fix here
    warnings.filterwarnings("ignore", "sagemaker.train.configs has been moved", DeprecationWarning)
    from sagemaker.train.model_trainer import Mode, ModelTrainer

from launcher import job_contract
from tests.image.dockerfile import IMAGE_ROOT, image_environment, lay_out_code, local_path
from tests.image.jobrun import (
    HYPERPARAMETERS,
    JOB_NAME,
    base_environment,
    distributions_outside_the_image,
    run_without_network,
    write_job_tree,
)

IMAGE_COMMIT = "1111111111111111111111111111111111111111"  # what the image was built from
SHIPPED_COMMIT = "2222222222222222222222222222222222222222+dirty"  # what the launcher says it ships

pytestmark = pytest.mark.slow


def write_sdk_channels(base_dir: Path, source_code: SourceCode, hyperparameters: dict[str, str]) -> None:
    """The channels sm_drivers and code, written as ModelTrainer.train() writes them (sagemaker 3.x), under base_dir.

    Everything the drivers say about /opt/ml is rewritten to base_dir.
    """
    trainer = ModelTrainer(training_image="training-image:test", training_mode=Mode.LOCAL_CONTAINER,
                           source_code=source_code, hyperparameters=hyperparameters)
    with TemporaryDirectory() as tmp:
        drivers = TemporaryDirectory(dir=tmp)
        # ModelTrainer.train(): copy the drivers, add sagemaker-core's install_requirements.py, write the script
        # and the two JSON files (no distributed driver: one instance).
        shutil.copytree(constants.SM_DRIVERS_LOCAL_PATH, drivers.name, dirs_exist_ok=True)
        shutil.copy2(sdk_install_requirements.__file__, Path(drivers.name) / "scripts" / "install_requirements.py")
        trainer._prepare_train_script(tmp_dir=drivers, source_code=source_code, distributed=None)
        trainer._write_source_code_json(tmp_dir=drivers, source_code=source_code)
        trainer._write_distributed_json(tmp_dir=drivers, distributed=None)
        target = base_dir / "input" / "data" / constants.SM_DRIVERS
        shutil.copytree(drivers.name, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".sh"):
            path.write_text(local_path(path.read_text(), base_dir))
    # ModelTrainer.create_input_data_channel: the source directory less the ignore patterns, as channel "code".
    shutil.copytree(source_code.source_dir, base_dir / "input" / "data" / constants.SM_CODE,
                    ignore=shutil.ignore_patterns(*(source_code.ignore_patterns or [])))


@pytest.fixture(scope="module")
def sdk_run(tmp_path_factory, synthetic_set):
    """One run of the container command the SDK sets, over the shipped code and the synthetic set."""
    root = tmp_path_factory.mktemp("sdk")
    base_dir = root / "opt-ml"  # stands for /opt/ml
    image_code = lay_out_code(base_dir)
    write_job_tree(base_dir, {"train": synthetic_set}, HYPERPARAMETERS)
    source_code = SourceCode(source_dir=str(job_contract.SOURCE_DIR), entry_script=job_contract.ENTRY_SCRIPT,
                             ignore_patterns=list(job_contract.IGNORE_PATTERNS))
    write_sdk_channels(base_dir, source_code, HYPERPARAMETERS)
    image_env = {k: local_path(v, base_dir) for k, v in image_environment({"CODE_COMMIT": IMAGE_COMMIT}).items()}
    env = {**base_environment(), **image_env, "TRAINING_JOB_NAME": JOB_NAME,
           job_contract.CODE_COMMIT_VARIABLE: SHIPPED_COMMIT}  # the job's Environment, as the launcher sets it
    command = [*constants.DEFAULT_CONTAINER_ENTRYPOINT,
               *(local_path(arg, base_dir) for arg in constants.DEFAULT_CONTAINER_ARGUMENTS)]
    assert all(IMAGE_ROOT not in arg for arg in command)
    workdir = root / "workspace"
    workdir.mkdir()
    run = run_without_network(command, env, workdir, root / "records")
    return run, base_dir, image_code


def test_the_sdk_drivers_train_the_shipped_code_without_network(sdk_run):
    run, base_dir, _ = sdk_run
    assert run.returncode == 0, run.output[-6000:]
    assert "Running Basic Script driver" in run.output
    assert "Training Container Execution Completed" in run.output
    assert "Installing requirements" not in run.output
    for path in ("configs/metadata.json", "models/model.pt"):
        assert (base_dir / "model" / path).is_file(), f"the bundle lacks {path}"
    assert (base_dir / "output" / "data" / "metrics.json").is_file()
    assert run.refused == [], f"the job or the drivers tried the network: {run.refused}"


def test_the_shipped_code_wins_over_the_image_code(sdk_run):
    run, base_dir, image_code = sdk_run
    shipped = (base_dir / "input" / "data" / constants.SM_CODE).as_posix()
    assert run.module_files("training") == {shipped}, f"also loaded from the image's {image_code}"
    lineage = json.loads((base_dir / "model" / "configs" / "metadata.json").read_text())["lineage"]
    assert lineage["code"]["commit"] == SHIPPED_COMMIT
    assert lineage["image"]["code_commit"] == IMAGE_COMMIT


def test_the_job_imports_nothing_the_image_lacks(sdk_run):
    run, _, _ = sdk_run
    assert run.returncode == 0, run.output[-3000:]
    assert distributions_outside_the_image(run.records) == {}
    assert Path(sys.executable).parent.joinpath("python3").exists()  # sm_train.sh needs python3 (and pip) on PATH

"""The image's own way of running the job, without Docker: the base's SageMaker training toolkit on the image's code.

SageMaker starts the image with `train`; the base (the SageMaker PyTorch DLC) runs the training toolkit
(`sagemaker-training`, with SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main), which runs
SAGEMAKER_PROGRAM from /opt/ml/code with the hyperparameters as --name value. Here the same toolkit runs against a
temporary /opt/ml (SAGEMAKER_BASE_DIR) holding the code laid out exactly as the Dockerfile's COPY lays it out
(.dockerignore applied), with the Dockerfile's ENV, channels and string hyperparameters as SageMaker writes them, and
no network. What this leaves to a real job: Docker and the base image itself (its Python 3.12 and package versions,
its entrypoint script), SageMaker's S3 downloads and uploads, GPUs, and more than one instance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.image.dockerfile import image_environment, lay_out_code, local_path
from tests.image.jobrun import (
    HYPERPARAMETERS,
    JOB_NAME,
    base_environment,
    distributions_outside_the_image,
    run_without_network,
    write_job_tree,
)

CODE_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the CDK construct's build argument

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toolkit_run(tmp_path_factory, synthetic_set):
    """One run of the toolkit over the image's code and the synthetic set; the tests read its results."""
    root = tmp_path_factory.mktemp("toolkit")
    base_dir = root / "opt-ml"  # stands for /opt/ml
    code = lay_out_code(base_dir)
    write_job_tree(base_dir, {"train": synthetic_set}, HYPERPARAMETERS)
    image_env = {k: local_path(v, base_dir) for k, v in image_environment({"CODE_COMMIT": CODE_COMMIT}).items()}
    env = {**base_environment(), **image_env, "SAGEMAKER_BASE_DIR": str(base_dir), "SM_STUDIO_LOCAL_MODE": "true",
           "TRAINING_JOB_NAME": JOB_NAME}
    workdir = root / "workspace"  # the base image's WORKDIR; the toolkit runs the program in /opt/ml/code
    workdir.mkdir()
    run = run_without_network([sys.executable, "-c", "from sagemaker_training.cli.train import main; main()"],
                              env, workdir, root / "records")
    return run, base_dir, code, image_env


def test_the_toolkit_trains_and_writes_the_bundle_without_network(toolkit_run):
    run, base_dir, _, _ = toolkit_run
    assert run.returncode == 0, run.output[-6000:]
    assert (base_dir / "output" / "success").is_file(), "the toolkit did not report success"
    assert not (base_dir / "output" / "failure").exists()
    for path in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts"):
        assert (base_dir / "model" / path).is_file(), f"the bundle lacks {path}"
    assert (base_dir / "output" / "data" / "metrics.json").is_file()
    assert "epoch=1 " in run.output, "the job printed no metric line"
    assert run.refused == [], f"the job or the toolkit tried the network: {run.refused}"
    print(f"network namespace of its own: {run.isolated}")


def test_the_job_runs_from_the_image_code_and_records_the_image(toolkit_run):
    run, base_dir, code, image_env = toolkit_run
    assert run.module_files("training") == {code.as_posix()}, "the job ran code from elsewhere than the image's"
    lineage = json.loads((base_dir / "model" / "configs" / "metadata.json").read_text())["lineage"]
    declared = {k.removeprefix("TRAINING_IMAGE_").lower(): v for k, v in image_env.items()
                if k.startswith("TRAINING_IMAGE_")}
    assert lineage["image"] == declared
    assert {"base", "torch", "monai", "pydicom", "code_commit"} <= set(declared)
    assert lineage["code"]["commit"] == CODE_COMMIT


def test_the_job_imports_nothing_the_image_lacks(toolkit_run):
    run, _, _, _ = toolkit_run
    assert run.returncode == 0, run.output[-3000:]
    assert distributions_outside_the_image(run.records) == {}


def test_no_pip_install_at_job_start(toolkit_run):
    """The toolkit pip-installs a requirements.txt or setup.py at the code root: that would need the network."""
    run, base_dir, _, _ = toolkit_run
    assert not (base_dir / "code" / "requirements.txt").exists()
    assert not (base_dir / "code" / "setup.py").exists()
    assert "Installing dependencies from requirements.txt" not in run.output
    assert Path(base_dir / "code").is_dir()

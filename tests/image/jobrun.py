"""A SageMaker training job's tree under a temporary directory, a run in it without network, and what the run loaded.

Both contract tests (the image's own toolkit, the SDK's per-job drivers) build the tree SageMaker builds under
/opt/ml (input/config/*.json, one directory per channel, hyperparameters as strings), run the job's process tree
with hook/sitecustomize.py (no network, a record of every module), and read the records back.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.image.dockerfile import CONSTRAINTS, REQUIREMENTS
from training.container.verify import read_pins

HOOK_DIR = Path(__file__).resolve().parent / "hook"
# Distributions of this machine's venv that a run may import although the image lacks them, each with its reason.
OPTIONAL_HERE = {
    "jsonpointer": "jsonschema (in the base) imports it for one format checker only when it is installed",
    "rfc3339-validator": "jsonschema (in the base) imports it for one format checker only when it is installed",
    # make bench installs ITK (the public sample's reader); MONAI's image_reader imports it, and ITK imports IPython,
    # only when installed. The job reads DICOM with pydicom and never calls ITK.
    **{dist: "MONAI imports ITK (bench's reader) when installed; the job never uses it" for dist in (
        "itk", "itk-core", "itk-filtering", "itk-io", "itk-numerics", "itk-registration", "itk-segmentation",
        "ipython", "ipython-pygments-lexers", "traitlets")},
}
JOB_NAME = "image-contract-test"
# Small and quick, with the job's real loop, bundle and TorchScript export (STYLE: shrink the real thing).
HYPERPARAMETERS = {"network": "resnet18", "image_size": "32,32", "epochs": "1", "batch_size": "8",
                   "bootstrap_samples": "20", "workers": "1"}


def write_job_tree(base_dir: Path, channels: Mapping[str, Path], hyperparameters: Mapping[str, str]) -> None:
    """input/config/{resourceconfig,inputdataconfig,hyperparameters}.json and input/data/<channel>, as SageMaker does.

    Args:
        base_dir: stands for /opt/ml.
        channels: channel name to the directory whose files SageMaker would have downloaded into it.
        hyperparameters: name to string (SageMaker sends strings only).
    """
    config = base_dir / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    resource = {"current_host": "algo-1", "hosts": ["algo-1"], "current_instance_type": "ml.m5.xlarge",
                "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
                "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.xlarge",
                                     "hosts": ["algo-1"]}]}
    data_config = {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                          "RecordWrapperType": "None"} for name in channels}
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    (config / "inputdataconfig.json").write_text(json.dumps(data_config))
    (config / "hyperparameters.json").write_text(json.dumps(dict(hyperparameters)))
    for name, source in channels.items():
        shutil.copytree(source, base_dir / "input" / "data" / name)
    for directory in ("model", "output/data", "code"):
        (base_dir / directory).mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Run:
    """A finished run: its exit status, output, and the records of its Python processes."""

    returncode: int
    output: str
    records: list[dict]
    isolated: bool  # ran in a network namespace of its own (unshare -n), not only behind the hook

    @property
    def refused(self) -> list[str]:
        """Every network access a process of the run attempted (and was refused)."""
        return [attempt for record in self.records for attempt in record["refused"]]

    def module_files(self, package: str) -> set[str]:
        """Where the processes loaded `package` and its submodules from: the folder of the package itself, whichever
        subpackage a module sits in (training.job.train from /x/training/job/train.py counts as /x/training)."""
        return {_package_root(name, file) for record in self.records for name, file in record["modules"].items()
                if file and (name == package or name.startswith(package + "."))}


def _package_root(name: str, file: str) -> str:
    """The folder of the top-level package, from a module's dotted name and its file."""
    depth = name.count(".") + 1
    up = depth - 1 if Path(file).name == "__init__.py" else depth - 2
    return Path(file).parents[up].as_posix()


@cache
def network_namespace_available() -> bool:
    """Whether this machine lets the test run the job with no network interface at all (root, or user namespaces)."""
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_without_network(command: Sequence[str], env: Mapping[str, str], cwd: Path, record_dir: Path,
                        timeout: int = 600) -> Run:
    """Run `command` with the hook loaded, without network (a namespace of its own where possible), recording.

    Args:
        command: the process to start.
        env: its environment; PYTHONPATH gets the hook's directory in front.
        cwd: its working directory.
        record_dir: where the processes write their records.
        timeout: seconds before the run counts as hung.
    """
    record_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**env, "IMAGE_TEST_RECORD_DIR": str(record_dir),
                "PYTHONPATH": os.pathsep.join(p for p in (str(HOOK_DIR), env.get("PYTHONPATH", "")) if p)}
    isolated = network_namespace_available()
    argv = ["unshare", "-n", *command] if isolated else list(command)
    done = subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    records = [json.loads(path.read_text()) for path in sorted(record_dir.glob("*.json"))]
    return Run(done.returncode, done.stdout + done.stderr, records, isolated)


def base_environment() -> dict[str, str]:
    """This machine's environment less what SageMaker would not give a job: AWS credentials, SM_* and PYTHONPATH.

    PATH keeps this interpreter's directory first: the image's `python3` and `pip` are the base's, here the venv's.
    """
    dropped = ("AWS_", "SM_", "SAGEMAKER_", "TRAINING_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def distributions_outside_the_image(records: Sequence[Mapping]) -> dict[str, str]:
    """Third-party distributions a run imported that the image would not have (neither the base nor requirements.txt).

    Returns:
        Distribution (or top-level module, when no distribution claims it) to the module that pulled it in.
    """
    image = set(read_pins(CONSTRAINTS)) | set(read_pins(REQUIREMENTS)) | set(OPTIONAL_HERE)
    owners = _top_level_owners()
    site_dirs = [Path(p).resolve() for p in sys.path if p.endswith("-packages")]
    outside: dict[str, str] = {}
    for record in records:
        for name, file in record["modules"].items():
            if not file:
                continue
            resolved = Path(file).resolve()
            site = next((s for s in site_dirs if resolved.is_relative_to(s)), None)
            if site is None:
                continue  # the standard library, the job's code, the SDK's drivers, the hook: not installed packages
            top = resolved.relative_to(site).parts[0].partition(".")[0]  # package directory or single-file module
            dists = owners.get(top, set())
            if not dists:
                outside.setdefault(top, name)
            for dist in dists - image:
                outside.setdefault(dist, name)
    return outside


@cache
def _top_level_owners() -> dict[str, set[str]]:
    """Top-level name in site-packages (package directory or module, extension modules too) to its distributions.

    Read from each distribution's RECORD as text: importlib's per-file objects take a minute for torch's thousands.
    """
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for line in (dist.read_text("RECORD") or "").splitlines():
            first = line.split(",", 1)[0].split("/", 1)[0]
            if first and first != ".." and not first.endswith((".dist-info", ".data")):
                owners.setdefault(first.partition(".")[0], set()).add(name)
    return owners

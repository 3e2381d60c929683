"""Shared test settings, and the map of the expensive fixtures a new test should reuse rather than rebuild.

`make test` runs pytest-xdist with two workers and `--dist loadfile` (a module's tests stay on one worker, which the
module-scoped emulators rely on: moto's state is global to a process). A fixture of `scope="session"` runs once
per worker; the ones below that cost more than a few seconds are shared across workers through files under a lock.

- `synth` (here; tests/infra/conftest.py synthesizes): `synth.get(variant)`, one synthesized template per stack
  variant (default, destroy_data, existing_data, gpu, vpc) with the cdk-nag packs on; 3-5 s the first (jsii), about
  0.4 s after.
- `job_sagemaker_run`, `job_bundle`, `job_metrics`, `job_test_files` (tests/training/conftest.py): the full-size demo
  job (400 + 100 images, 96x96, 5 epochs) run once through SageMaker's SDK v3 driver and shared by every module and
  worker that needs a trained bundle (file lock); copy the bundle (`shutil.copytree`) before changing it. 1-2 min.
- `tiny_job` (here): a tiny real job (24 + 8 synthetic images, resnet18 at 32x32, one epoch, checkpoints on), run
  in-process once per session and shared by the workers (file lock): `tiny_job.model_dir` (a bundle),
  `.checkpoint_dir`, `.output_dir`, `.test_files`. A few seconds; use it wherever a test needs *a* bundle or
  checkpoint, not the demo's accuracy, and copy it (`shutil.copytree`) before changing it.
- `emulator`, `stack`, `recording` (tests/launcher/conftest.py): moto's server over HTTP with the stack's resources
  made by boto3, module scope; `recording` reads back what boto3 and the SDK sent. About 1 s.
- `dicom_folder` (tests/launcher/conftest.py), `synthetic_set` (tests/image/conftest.py): small synthetic DICOM sets
  (8 and 24 images at 64x64), under 2 s.
- `default_stack`, `destroy_data_stack` (tests/e2e/test_emulator_stack.py): each variant deployed once by the real
  CDK CLI on the emulator (bootstrap, deploy, then `python -m infra.teardown`), module scope; its tests read the
  record. About 30 s each.
- `journey` (tests/e2e/test_notebook.py): the stack deployed by the real CDK CLI on the emulator and the notebook
  executed once (200 + 40 images at 32x32), its tests reading the executed cells and what the emulator holds after.
  About 80 s alone.

Order and balance: `make test` runs `--dist loadfile --no-loadscope-reorder`, and SLOW_FILES_FIRST below starts the
longest files first. A new file that takes more than about 20 s belongs in that list.

Threads: two workers on two cores each get `cores // workers` OpenMP threads (inherited by the jobs, notebook kernels
and servers the tests start), so two trainings side by side do not oversubscribe the CPU.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from filelock import FileLock

if TYPE_CHECKING:
    from tests.infra.conftest import SynthCache

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")
# Before anything imports torch: PyTorch's default is one thread per core in every process, and two xdist workers
# training at once then spin on four threads over two cores (OpenMP's spinning threads slow two oversubscribed
# trainings tenfold, not twofold). xdist sets PYTEST_XDIST_WORKER(_COUNT) in a worker before it loads this file. A
# worker always takes its share, even where OMP_NUM_THREADS is set: the controlling process loads this file too, as a
# run of one, and its value, a whole machine's worth, is what the workers inherit.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
if "PYTEST_XDIST_WORKER" in os.environ or "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
# The local pseudonym key (training/dataset/pseudonym_key.py) lives in the user's configuration folder: tests make
# theirs in a folder of their own, never in the real ~/.config.
if "XDG_CONFIG_HOME" not in os.environ:
    _config = tempfile.mkdtemp(prefix="monai-dicom-test-config-")
    atexit.register(shutil.rmtree, _config, ignore_errors=True)
    os.environ["XDG_CONFIG_HOME"] = _config


# The files that cost most, slowest first (seconds of one worker in a `make test` of 2026-12-06 on 2 busy cores).
# `make test` runs `--dist loadfile --no-loadscope-reorder`: xdist hands each worker the next whole file when it is
# nearly idle, so starting the long files first keeps a long one from landing last on one worker while the other
# idles (longest-first scheduling). The second file starts the shared full-size job (tests/training/conftest.py), so
# the job's other users, further down, find it ready; the first keeps the other worker busy meanwhile. Files not
# listed keep their collection order after these. A file that grows slow belongs here: `make test` prints the
# slowest tests.
SLOW_FILES_FIRST = (
    "tests/e2e/test_notebook.py",  # 95: the notebook journey, its own CDK deploy and job
    "tests/training/test_job_sagemaker.py",  # 95: the shared full-size job (job_sagemaker_run) it starts
    "tests/training/test_resume.py",  # 115: spot interruptions, seven job processes
    "tests/training/test_distributed.py",  # 68: one process against two under torchrun
    "tests/e2e/test_emulator_stack.py",  # 63: two CDK CLI deploys and destroys
    "tests/launcher/test_local_runner.py",  # 47: a job through the local runner and the SDK
    "tests/training/test_serve.py",  # 38: gunicorn serving the shared bundle
    "tests/launcher/test_inference.py",  # 36
    "tests/bench/test_bench_smoke.py",  # 32
    "tests/training/test_job_loop.py",  # 27
    "tests/infra/test_nag_and_lint.py",  # 26
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """SLOW_FILES_FIRST first, in its order; every other file after them, in collection order; tests within a file
    keep theirs (the sort is stable)."""
    rank = {path: number for number, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthCache:
    """Synthesize a stack variant at most once per session: `synth.get("default")` (tests/infra/conftest.py); here so
    that tests/e2e shares it."""
    from tests.infra.conftest import SynthCache

    return SynthCache(tmp_path_factory.mktemp("cdk"))


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory all xdist workers of this session share (this session's own base directory)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@dataclass(frozen=True)
class TinyJob:
    """What the tiny job left: its bundle, checkpoints, outputs, and the test channel it was evaluated on."""

    model_dir: Path
    checkpoint_dir: Path
    output_dir: Path
    test_files: list[str]


@pytest.fixture(scope="session")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> TinyJob:
    """The real job (training.job.train.main) on 24 + 8 synthetic images at 32x32, one epoch: a bundle and checkpoints
    for tests where their size is not the point. Copy before changing."""
    from training.job import train
    from training.local_demo import make_demo_data

    shared = shared_dir(tmp_path_factory)
    root = shared / "tiny-job"
    with FileLock(str(shared / "tiny-job.lock")):
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            channels = make_demo_data(root / "data", train_images=24, test_images=8)
            argv = [f"--train={channels['train']}", f"--test={channels['test']}", f"--model-dir={root / 'model'}",
                    f"--output-dir={root / 'output'}", f"--checkpoint-dir={root / 'checkpoints'}",
                    "--network=resnet18", "--image_size=32,32", "--epochs=1", "--batch_size=8", "--workers=1",
                    "--bootstrap_samples=20", "--torchscript=false", "--precision=fp32"]
            assert train.main(argv, environ={}) == 0
            (root / "done").touch()
    files = sorted(str(p) for p in (root / "data" / "test").rglob("img-*"))
    return TinyJob(root / "model", root / "checkpoints", root / "output", files)

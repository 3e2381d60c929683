"""Shared test settings, and the map of the expensive fixtures a new test should reuse rather than rebuild.

`make test` runs pytest-xdist with two workers and `--dist loadfile` (a module's tests stay on one worker, which the
module-scoped emulators rely on: moto's state is global to a process). A fixture of `scope="session"` runs once
per worker; the ones below that cost more than a few seconds are shared across workers through files under a lock.

- `synth` (tests/infra/conftest.py): `synth.get(variant)`, one synthesized template per stack variant (default,
  destroy_data, existing_data, gpu, vpc) with the cdk-nag packs on; 3-5 s the first (jsii), about 0.4 s after.
- `job_sagemaker_run`, `job_bundle`, `job_metrics`, `job_test_files` (tests/training/conftest.py): the full-size demo
  job (400 + 100 images, 96x96, 5 epochs) run once through SageMaker's SDK v3 driver and shared by every module and
  worker that needs a trained bundle (file lock); copy the bundle (`shutil.copytree`) before changing it. 1-2 min.
- `emulator`, `stack`, `recording` (tests/launcher/conftest.py): moto's server over HTTP with the stack's resources
  made by boto3, module scope; `recording` reads back what boto3 and the SDK sent. About 1 s.
- `dicom_folder` (tests/launcher/conftest.py), `synthetic_set` (tests/image/conftest.py): small synthetic DICOM sets
  (8 and 24 images at 64x64), under 2 s.
- `journey` (tests/e2e/test_notebook.py): the stack deployed by the real CDK CLI on the emulator and the notebook
  executed once, its tests reading the executed cells; the suite's longest (see `make test`'s slowest list).

Threads: two workers on two cores each get `cores // workers` OpenMP threads (inherited by the jobs, notebook kernels
and servers the tests start), so two trainings side by side do not oversubscribe the CPU.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")
# Before anything imports torch: PyTorch's default is one thread per core in every process, and two xdist workers
# training at once then spin on four threads over two cores.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
# The local pseudonym key (training/pseudonym_key.py) lives in the user's configuration folder: tests make theirs in a
# folder of their own, never in the real ~/.config.
if "XDG_CONFIG_HOME" not in os.environ:
    _config = tempfile.mkdtemp(prefix="monai-dicom-test-config-")
    atexit.register(shutil.rmtree, _config, ignore_errors=True)
    os.environ["XDG_CONFIG_HOME"] = _config

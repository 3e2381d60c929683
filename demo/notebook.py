"""Run notebooks/dicom_training.ipynb headless (nbclient) against the emulator, with the local runner.

    env = notebook_env(emulator_env(emulator), emulator)
    parameters = journey_parameters(workdir, demo_size(), stack_name="MonaiDicomSageMaker")
    run = run_notebook(env, parameters, output=workdir / "dicom_training.ipynb")
    run.text("predict"), run.images("results")      # what a cell printed, how many figures it showed

The notebook is the one a user opens on the notebook instance; two things change here. Its kernel: the notebook names
the instance's `conda_pytorch`, here it runs on this Python's `python3` kernel. Its settings: a cell with this run's
values (smaller data, fewer epochs) is put right after the cell tagged `parameters`, as papermill does. The kernel
inherits the environment given to run_notebook: the emulator's endpoint and dummy credentials, and
MONAI_DICOM_RUNNER=local, so `start_training` runs the job on this machine (launcher/local/runner.py).
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from demo.emulator import ROOT, Emulator

NOTEBOOK = ROOT / "notebooks" / "dicom_training.ipynb"
KERNEL = "python3"  # this Python's kernel; the notebook itself names the notebook instance's conda_pytorch
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
CELL_TIMEOUT_S = 3600  # the training cell runs the whole job: minutes, many more on a busy machine
# The SageMaker SDK's own configuration: no telemetry (nothing outside the emulator may be called), and no user or
# admin defaults from ~/.config/sagemaker.
SDK_CONFIG = "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n"


@dataclass(frozen=True)
class JourneySize:
    """How much the notebook does: the synthetic set's size and the job's hyperparameters."""

    train_images: int
    test_images: int
    hyperparameters: Mapping[str, str]
    predict_count: int = 8


def demo_size() -> JourneySize:
    """`make demo`: the job's own demo settings (training/local_demo.py: 400 + 100 images, DEMO_HYPERPARAMETERS)."""
    from training.local_demo import DEMO_HYPERPARAMETERS, TEST_IMAGES, TRAIN_IMAGES

    return JourneySize(TRAIN_IMAGES, TEST_IMAGES, dict(DEMO_HYPERPARAMETERS))


def journey_parameters(workdir: Path, size: JourneySize, *, stack_name: str) -> dict[str, Any]:
    """The values of the notebook's parameters cell for a run here (with the real-time endpoint, off by default).

    Args:
        workdir: the notebook's WORK_DIR (generated data, collected results).
        size: the run's size.
        stack_name: the deployed stack; its CloudFormation outputs give the settings.
    """
    return {
        "STACK_NAME": stack_name,
        "WORK_DIR": str(workdir),
        "SYNTHETIC_IMAGES": size.train_images,
        "SYNTHETIC_TEST_IMAGES": size.test_images,
        "HYPERPARAMETERS": dict(size.hyperparameters),
        "PREDICT_COUNT": size.predict_count,
        # Here the endpoint is a training.serve process on this machine, stopped by the clean-up cell: free to try.
        "DEPLOY_ENDPOINT": True,
    }


def volume_parameters() -> dict[str, Any]:
    """The notebook's 3-D setting for a run here (`python -m demo --volumes`): an image_size of three values and a small
    synthetic CT set (40 + 8 series: one for every 8 images) that the CPU trains in a few minutes (in fp32:
    training/job/runtime.py autocast_dtype)."""
    return {
        "SYNTHETIC_IMAGES": 320,
        "SYNTHETIC_TEST_IMAGES": 64,
        "HYPERPARAMETERS": {"image_size": (16, 48, 48), "epochs": 6},
        "PREDICT_COUNT": 4,
    }


def pacs_parameters(dicomweb_root: str, folder: Path, size: JourneySize) -> dict[str, Any]:
    """The notebook's PACS settings for a run against a local Orthanc: the synthetic set of `size` stored in it
    (demo/pacs.py, one study per image) and the labels CSV of each channel (under `folder`)."""
    from demo.pacs import seed_synthetic

    labels = seed_synthetic(dicomweb_root, folder, train_images=size.train_images, test_images=size.test_images)
    return {"PACS": dicomweb_root, "PACS_LABELS": {channel: str(path) for channel, path in labels.items()}}


def notebook_env(env: Mapping[str, str], emulator: Emulator) -> dict[str, str]:
    """The kernel's environment: the emulator's (emulator_env) plus the local runner and the SDK's settings.

    Args:
        env: the emulator's environment.
        emulator: the running emulator (its temporary folder holds the SDK's configuration file).
    """
    config = emulator.cdk_home / "sagemaker-config.yaml"
    config.write_text(SDK_CONFIG, encoding="utf-8")
    temporary = emulator.cdk_home / "tmp"
    temporary.mkdir(exist_ok=True)
    return {
        **env,
        "MONAI_DICOM_RUNNER": "local",
        # moto has no iam:SimulatePrincipalPolicy, which ModelTrainer's role check calls.
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(config),
        # The kernel's and the local job's temporary files (the job's /opt/ml-like tree) go where the emulator's own
        # go: removed when the emulator stops, even if the kernel was killed in the middle of a job.
        "TMPDIR": str(temporary),
        # tqdm.auto warns when ipywidgets is missing (it is here, not on a notebook instance) and prints text bars.
        "PYTHONWARNINGS": "ignore:IProgress not found",
    }


@dataclass
class NotebookRun:
    """An executed notebook and what its cells printed.

    Attributes:
        notebook: the executed notebook (outputs included).
        seconds: cell id to its execution time.
        error: the error that stopped it, or None.
    """

    notebook: Any
    seconds: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None

    def cell(self, cell_id: str) -> Any:
        """The cell with this id."""
        return next(c for c in self.notebook.cells if c.get("id") == cell_id)

    def text(self, cell_id: str) -> str:
        """What a cell printed (its streams, its result's text, its error), without its figures' text."""
        parts = []
        for output in self.cell(cell_id).get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif output.get("output_type") == "execute_result" and "text/plain" in output.get("data", {}):
                parts.append(output["data"]["text/plain"])
            elif output.get("output_type") == "error":
                parts.append("\n".join(output.get("traceback", [])))
        return "".join(parts)

    def images(self, cell_id: str) -> int:
        """How many PNG images a cell displayed."""
        return sum("image/png" in output.get("data", {}) for output in self.cell(cell_id).get("outputs", []))


def inject_parameters(notebook: Any, parameters: Mapping[str, Any]) -> None:
    """Put a cell assigning `parameters` right after the cell tagged `parameters` (papermill's convention).

    Args:
        notebook: the notebook (changed in place).
        parameters: name to a value whose repr() is Python.

    Raises:
        ValueError: the notebook has no parameters cell.
    """
    index = next((i for i, c in enumerate(notebook.cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])),
                 None)
    if index is None:
        raise ValueError(f"{NOTEBOOK} has no cell tagged {PARAMETERS_TAG!r}: tag the cell that holds its settings")
    lines = ["# Parameters of this run (demo/notebook.py)"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), id=INJECTED_TAG)
    cell.metadata["tags"] = [INJECTED_TAG]
    notebook.cells.insert(index + 1, cell)


def run_notebook(env: Mapping[str, str], parameters: Mapping[str, Any], *, output: Path,
                 on_cell: Callable[[int, int, Any, float], None] | None = None) -> NotebookRun:
    """Execute the notebook with nbclient and write the executed notebook, also when a cell fails.

    Args:
        env: the kernel's environment (notebook_env).
        parameters: values for the parameters cell (journey_parameters).
        output: where the executed notebook is written.
        on_cell: called after each code cell with (its number, the number of code cells, the cell, seconds).

    Returns:
        The run; `error` holds the exception (e.g. nbclient's CellExecutionError) that stopped it, if any.
    """
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    inject_parameters(notebook, parameters)
    run = NotebookRun(notebook)
    started: dict[str, float] = {}
    code_cells = [c.id for c in notebook.cells if c.cell_type == "code"]

    def cell_started(cell: Any, cell_index: int, **_: Any) -> None:
        started[cell.id] = time.perf_counter()

    def cell_executed(cell: Any, cell_index: int, **_: Any) -> None:
        run.seconds[cell.id] = time.perf_counter() - started.get(cell.id, time.perf_counter())
        if on_cell is not None:
            on_cell(code_cells.index(cell.id) + 1, len(code_cells), cell, run.seconds[cell.id])

    client = NotebookClient(notebook, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
                            on_cell_start=cell_started, on_cell_executed=cell_executed)
    # nbclient installs SIGINT/SIGTERM handlers that stop the kernel, and leaves them behind: restore ours after.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="kernel-") as sockets:
            # Unix sockets in a private folder rather than TCP on localhost: no other user of this machine can reach
            # the kernel (ipykernel warns about plain TCP). The client still owns, and so stops, the kernel.
            client.km = client.create_kernel_manager()
            client.km.transport = "ipc"
            client.km.ip = str(Path(sockets) / "kernel")
            client.execute(env=dict(env))
    except Exception as error:  # noqa: BLE001 - the caller reports it, with the executed notebook written
        run.error = error
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, output)
    return run


def first_line(cell: Any) -> str:
    """A cell's first non-comment source line, shortened, to name it in progress lines."""
    lines = [line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")]
    text = lines[0] if lines else cell.source.splitlines()[0] if cell.source else ""
    return text if len(text) <= 70 else text[:67] + "..."


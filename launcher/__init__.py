"""SageMaker SDK glue the notebook calls: settings, uploads, jobs, their metrics and their results.

    from launcher import load_settings, upload_dataset, start_training, follow, collect, list_jobs

    settings = load_settings()                                   # the stack's values (launcher/settings.py)
    manifest = upload_dataset(settings, "data/synthetic", "synthetic")
    job = start_training(settings, dataset=manifest, hyperparameters={"epochs": 10})
    progress = follow(job)                                       # status and per-epoch metrics until it ends
    results = collect(job, "results")                            # the MONAI bundle and the figures
    list_jobs(settings)                                          # earlier jobs with their final metrics

Importing this package does not import the SageMaker SDK (seconds to import): start_training does, when it runs.
Where its own dependencies (boto3) cannot be imported, the package still imports, so that
`launcher.notebook.check_kernel` can say why (a notebook kernel whose packages are still being installed); the names
above then raise that ImportError when used.
"""

from __future__ import annotations

from typing import Any

try:
    from launcher import runners as _runners  # noqa: F401 - registers the runners start_training chooses from
    from launcher.datasets.manifest import DatasetManifest, read_manifest
    from launcher.datasets.upload import upload_dataset
    from launcher.jobs.follow import JobProgress, follow, stop_training
    from launcher.jobs.handle import TrainingJob, attach
    from launcher.jobs.launch import register_runner, start_training
    from launcher.jobs.request import TrainingRequest
    from launcher.jobs.results import JobResults, JobSummary, collect, list_jobs
    from launcher.settings import Settings, SettingsError, load_settings
except ImportError as error:
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

__all__ = [
    "DatasetManifest",
    "JobProgress",
    "JobResults",
    "JobSummary",
    "Settings",
    "SettingsError",
    "TrainingJob",
    "TrainingRequest",
    "attach",
    "collect",
    "follow",
    "list_jobs",
    "load_settings",
    "read_manifest",
    "register_runner",
    "start_training",
    "stop_training",
    "upload_dataset",
]


def __getattr__(name: str) -> Any:
    """Only reached for names the imports above did not define: say why they are missing."""
    if name in __all__ and _IMPORT_ERROR is not None:
        message = (f"launcher.{name} is not available: {_IMPORT_ERROR}. In a notebook kernel, run "
                   "launcher.notebook.check_kernel() to see whether its packages are installed")
        raise ImportError(message) from _IMPORT_ERROR
    raise AttributeError(f"module 'launcher' has no attribute {name!r}")

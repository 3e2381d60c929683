"""The runners start_training may use, registered in one place: SageMaker's (launcher/jobs/launch.py, the default) and
the local one (launcher/local/runner.py: `make demo`, MONAI_DICOM_RUNNER=local).

The local runner builds on the SageMaker runner; launch.py imports neither this module nor the local runner, so the
two never import each other. The package (launcher/__init__.py) imports this module, so that every runner is
registered whichever module of the package is imported first.
"""

from __future__ import annotations

from launcher.jobs.launch import LOCAL_RUNNER, SageMakerRunner, register_runner
from launcher.local.runner import LocalRunner

register_runner(SageMakerRunner.name, SageMakerRunner)
register_runner(LOCAL_RUNNER, LocalRunner)

"""The runners start_training may use, registered in one place: SageMaker's (launcher/jobs/sagemaker_runner.py, the
default) and the local one (launcher/local/runner.py: `make demo`, MONAI_DICOM_RUNNER=local).

The local runner builds on the SageMaker runner (it subclasses it); neither the SageMaker runner nor launch.py
(start_training and the registry) imports the local runner or this module, so no import goes in a circle. The package
(launcher/__init__.py) imports this module, so that every runner is registered whichever module of the package is
imported first.
"""

from __future__ import annotations

from launcher.jobs.launch import LOCAL_RUNNER, register_runner
from launcher.jobs.sagemaker_runner import SageMakerRunner
from launcher.local.runner import LocalRunner

register_runner(SageMakerRunner.name, SageMakerRunner)
register_runner(LOCAL_RUNNER, LocalRunner)

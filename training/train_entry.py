"""The training job as a script, for SageMaker: SDK v3 `SourceCode(entry_script=...)` or the image's SAGEMAKER_PROGRAM.

    python training/train_entry.py --train DIR --model-dir DIR ...    (what both SageMaker drivers run)

Locally and in tests use `python -m training` or `from training.job.train import main` instead.

Why a separate script: both SageMaker drivers run a *file* (`python train_entry.py --name value ...`), not a module.
Run as a file, Python puts the file's own directory first on sys.path, so `import training` would fail and this
package's modules and subpackages (check, inference, serve, job, dataset, ...) would shadow any top-level module of
the same name. And the directory holding the package need not be called `training`: SDK v3 ships
`SourceCode(source_dir="training")` as /opt/ml/input/data/code. So, only when run as a file, this script removes its
directory from sys.path and registers that directory as the package `training`, whatever the directory is called.
Imported as `training.train_entry` it does nothing of the kind. A spawned worker process re-runs this file as
`__mp_main__` and registers the package the same way.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _register_package() -> None:
    """Make this file's directory importable as the package `training` (see the module docstring)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    if "training" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "training", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["training"] = package
    spec.loader.exec_module(package)


if not __package__:  # run as a file, not imported as training.train_entry
    _register_package()

from training.job.train import main  # noqa: E402  (after the package is registered)

if __name__ == "__main__":
    sys.exit(main())

"""Everything the launcher knows about the training job (training/), in one place.

The job is another package: the launcher ships its directory as the SDK's source_dir, runs ENTRY_SCRIPT in it, sends
its hyperparameters (validated by the job's own parser first, so a typo fails here and not after the instances
started), reads its metric lines with the job's own regexes, and opens what it writes. Only the job's modules that
need nothing beyond the standard library are imported: its environment (training/job/environment.py: the channel
names, one definition for the job and the launcher), its metrics (the metric line's regexes and their reading) and
code_identity when this module is imported, config inside the function that uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# From the job: its code identity, and its channel names, re-exported (the launcher imports them from here): the data
# channels (train, validation, test), the dataset manifest (its S3 objects: training/job/lineage.py), an earlier
# job's checkpoints to start from, the pseudonym key (one file; no hyphen in its name: sm_train.sh exports it).
from training.job.code_identity import code_commit as training_code_commit
from training.job.environment import (  # noqa: F401
    DATA_CHANNELS,
    MANIFEST_CHANNEL,
    PSEUDONYM_KEY_CHANNEL,
    RESUME_CHANNEL,
)

# The job's metric lines, read with the regexes SageMaker is given (training/job/metrics.py: the one definition of
# the line's format and of its reading).
from training.job.metrics import METRIC_DEFINITIONS
from training.job.metrics import parse_line as parse_metrics  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = REPO_ROOT / "training"  # shipped to the job as /opt/ml/input/data/code
ENTRY_SCRIPT = "train_entry.py"  # the file the SDK's driver runs (training/train_entry.py explains why a file)
# Not shipped with the code (names at any depth, as shutil.ignore_patterns reads them): caches, the image's build
# files, secrets and editor files, and what a local run of the job leaves in its folder (data, models, outputs),
# as training/.dockerignore keeps them out of the image.
IGNORE_PATTERNS = (
    "__pycache__", "*.py[cod]", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints", "*.egg-info",
    "Dockerfile", ".dockerignore", ".env", ".DS_Store", "*.swp", ".idea", ".vscode",
    "tests", "test_*.py", "conftest.py", "*.ipynb", "*.dcm", "*.DCM", "data", "model", "output", "checkpoints",
    "*.pt", "*.ts", "*.tar.gz",
)
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"  # SageMaker syncs it with CheckpointConfig.S3Uri (spot resumes)
CODE_COMMIT_VARIABLE = "TRAINING_CODE_COMMIT"  # training.job.environment reads it: a job's code has no .git to ask
MODEL_ARCHIVE = "model.tar.gz"  # SageMaker's archive of /opt/ml/model: the MONAI bundle
OUTPUT_ARCHIVE = "output.tar.gz"  # SageMaker's archive of /opt/ml/output/data: metrics.json and figures
BUNDLE_METADATA = "configs/metadata.json"  # in the bundle (training/job/bundle.py)
METRICS_FILE = "metrics.json"  # in the output data (training/job/train.py write_outputs)


def metric_definitions() -> list[dict[str, str]]:
    """The job's metric regexes, as SageMaker takes them: [{"Name": ..., "Regex": ...}]."""
    return [dict(d) for d in METRIC_DEFINITIONS]


def hyperparameters(values: Mapping[str, Any]) -> dict[str, str]:
    """Hyperparameters as the strings SageMaker passes, checked by the job's own parser.

    Args:
        values: field names of training.job.config.TrainConfig to values: strings as the job reads them ("96,96",
            "true"), or Python values (96, True, (96, 96), None), written the way the job parses them back.

    Raises:
        ValueError: an unknown name or a value the job would reject; the message names it (and lists the names).
    """
    from training.job.config import TrainConfig, format_value

    strings = {str(k).replace("-", "_"): v if isinstance(v, str) else format_value(v) for k, v in values.items()}
    TrainConfig.from_strings(strings)
    return strings


def code_commit(repo: Path = REPO_ROOT) -> str | None:
    """What the launcher declares its job runs (TRAINING_CODE_COMMIT): training/job/code_identity.py's one definition,
    the last commit that changed training/ ("+dirty" with uncommitted changes), as the image records its own.

    Args:
        repo: the checkout.

    Returns:
        The commit, or None where git or a checkout is not available.
    """
    return training_code_commit(repo / SOURCE_DIR.relative_to(REPO_ROOT))

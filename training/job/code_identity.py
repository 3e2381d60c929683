"""The code's identity, one definition for the image, the launcher and the bundle's lineage: the last commit that
changed training/ (the code that ships), with "+dirty" when training/ has uncommitted changes.

The last commit of training/ rather than HEAD: a commit elsewhere in the repository (the README, infra/) changes
neither the job's code nor the image's asset hash, so the same code keeps one name whether it runs from a checkout
(make demo, the tests), from the code channel the launcher stages, or from the image. Standard library only: infra/
and launcher/ import this module without importing the job.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # training/, this module being training/job/code_identity.py
DIRTY = "+dirty"


def code_commit(package_dir: Path = PACKAGE_DIR) -> str | None:
    """The last commit that changed `package_dir`, with DIRTY when it has uncommitted changes.

    Args:
        package_dir: the job's package in a checkout (training/).

    Returns:
        "<sha>" or "<sha>+dirty"; None where git or a checkout is not available (a job's code has no .git: the
        launcher declares it in TRAINING_CODE_COMMIT, the image in TRAINING_IMAGE_CODE_COMMIT).
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=30,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("log", "-1", "--format=%H", "--", ".")
    if not commit:
        return None
    return f"{commit}{DIRTY}" if git("status", "--porcelain", "--", ".") else commit

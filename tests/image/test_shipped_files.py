"""Every Python file of the job's package reaches both places a job runs it from (issue 19 item 1): the code channel
the SDK stages (shutil's ignore patterns, launcher/job_contract.py IGNORE_PATTERNS, matched by name at any depth) and
the image (training/.dockerignore, matched from the context's root). A subpackage named like one of those patterns
(`data`, `model`, `output`, `checkpoints`) would reach one and vanish from the other; the last test shows it would
be caught."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from launcher import job_contract
from tests.image.dockerfile import CONTEXT, copied_files

ROOT = Path(__file__).resolve().parents[2]


def _package_files(source: Path) -> set[str]:
    """The package's Python files as git tracks them (so no cache or local leftover counts)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", f"{source.relative_to(ROOT)}/*.py"],
                            capture_output=True, text=True, check=True).stdout.split()
    return {str(Path(p).relative_to(source.relative_to(ROOT))) for p in listed}


def _channel_files(source: Path, tmp: Path) -> set[str]:
    """What ModelTrainer stages as the code channel: the source directory less IGNORE_PATTERNS (shutil.copytree)."""
    staged = tmp / "code"
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns(*job_contract.IGNORE_PATTERNS))
    return {str(p.relative_to(staged)) for p in staged.rglob("*.py")}


def test_the_code_channel_and_the_image_carry_every_python_file_of_the_package(tmp_path: Path) -> None:
    assert Path(job_contract.SOURCE_DIR).resolve() == CONTEXT.resolve()  # one package, two ways out
    package = _package_files(CONTEXT)
    assert len(package) > 20 and "train_entry.py" in package
    assert _channel_files(CONTEXT, tmp_path) == package
    assert {p for p in copied_files(CONTEXT) if p.endswith(".py")} == package


def test_a_subpackage_named_data_would_vanish_from_the_code_channel_and_be_caught(tmp_path: Path) -> None:
    source = tmp_path / "training"
    shutil.copytree(CONTEXT, source, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("data", "cohorts"):
        (source / name).mkdir()
        (source / name / "__init__.py").write_text("")
    channel = _channel_files(source, tmp_path / "staged")
    assert "cohorts/__init__.py" in channel  # a name that cannot collide ships
    assert "data/__init__.py" not in channel  # `data` at any depth is dropped from the channel
    assert "data/__init__.py" not in copied_files(source)  # and, at the root, from the image

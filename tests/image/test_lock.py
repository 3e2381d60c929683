"""training/requirements-lock.txt: written by `make lock` (uv) from requirements.txt, installed by the image build with
pip's --require-hashes, so a deploy next month installs the files the tests resolved, or nothing.

The tests run the real tools: uv regenerates the lock (PyPI's index; well under a second with uv's cache warm), and
pip, with the build's own arguments read from training/Dockerfile, installs into a throwaway venv. The lock pins the
image's additions only (--no-deps): their dependencies are packages of the base image (test_requirements.py checks
that against the base's package list), and the last test shows why that must hold: in hash-checking mode pip takes a
dependency from what is installed, and stops the build for one that is not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.image.dockerfile import CONSTRAINTS, LOCK, REQUIREMENTS, copied_files, instructions, pip_install_arguments
from training.container.verify import check_lock, read_lock, read_pins

BUILD_DIR = "/tmp/training-image/"  # where the Dockerfile copies requirements, lock and verify.py for its RUN


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def _lock_of(name: str, *, tamper: bool = False) -> str:
    """The lock's entry for one package, as lock text; with tamper, every hash has its last digit changed."""
    version, hashes = read_lock(LOCK)[name]
    if tamper:
        hashes = [h[:-1] + ("1" if h.endswith("0") else "0") for h in hashes]
    return " \\\n".join([f"{name}=={version}", *(f"    --hash=sha256:{h}" for h in hashes)]) + "\n"


def test_the_lock_is_what_make_lock_generates(tmp_path: Path) -> None:
    out = tmp_path / "requirements-lock.txt"
    # -o: use the venv as it is (make setup installed uv) rather than reinstall it when a requirements file is newer.
    done = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "lock", f"LOCK_OUT={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_text() == LOCK.read_text(), \
        "training/requirements-lock.txt is not what `make lock` writes from training/requirements.txt: run make lock"


def test_the_lock_pins_the_requirements_each_with_hashes() -> None:
    lock, pins = read_lock(LOCK), read_pins(REQUIREMENTS)
    assert check_lock(lock, pins) == []
    assert {name: version for name, (version, _) in lock.items()} == pins
    assert all(len(hashes) >= 1 for _, hashes in lock.values())
    # A pin changed in requirements.txt without `make lock` is caught, by the tests and by the build's verify.py.
    assert "run `make lock`" in check_lock(lock, {**pins, "monai": "1.5.0"})[0]


def test_the_build_installs_the_lock_with_require_hashes_constrained_by_the_base() -> None:
    arguments = pip_install_arguments()
    assert "--require-hashes" in arguments
    assert arguments[arguments.index("--requirement") + 1] == BUILD_DIR + LOCK.name
    assert arguments[arguments.index("--constraint") + 1] == BUILD_DIR + "base.txt"
    [copy] = [i.arguments.split() for i in instructions() if i.keyword == "COPY" and BUILD_DIR in i.arguments]
    assert {LOCK.name, REQUIREMENTS.name} <= set(copy[:-1])
    assert LOCK.name in copied_files()


def test_pip_refuses_a_file_whose_hash_is_not_in_the_lock(tmp_path: Path) -> None:
    # The lock's real hashes pass pip's check for every file of the image (test_requirements.py's resolution).
    lock = tmp_path / "tampered-lock.txt"
    lock.write_text(_lock_of("gunicorn", tamper=True))
    done = _pip("download", "--no-deps", "--require-hashes", "--disable-pip-version-check", "-d",
                str(tmp_path / "files"), "-r", str(lock))
    assert done.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in done.stderr
    assert not list((tmp_path / "files").glob("*.whl"))


def test_the_builds_pip_install_takes_dependencies_only_from_the_base(tmp_path: Path) -> None:
    """The Dockerfile's own pip arguments, into a throwaway venv standing for the base: gunicorn needs packaging."""
    venv = tmp_path / "base"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = str(venv / "bin" / "python")
    (tmp_path / LOCK.name).write_text(_lock_of("gunicorn"))
    arguments = [a.replace(BUILD_DIR, f"{tmp_path}/") for a in pip_install_arguments()]
    [site_packages] = venv.glob("lib/python*/site-packages")

    def installed() -> list[str]:
        return sorted(p.name.removesuffix(".dist-info") for p in site_packages.glob("*.dist-info"))

    (tmp_path / "base.txt").write_text("")  # the build's `pip list --format=freeze` of a base without packaging
    refused = _pip("--python", python, "install", *arguments)
    assert refused.returncode != 0
    assert "must have their versions pinned" in refused.stderr and "packaging" in refused.stderr
    assert installed() == []

    version = read_pins(CONSTRAINTS)["packaging"]  # the base image's
    assert _pip("--python", python, "install", "--no-deps", "--disable-pip-version-check",
                f"packaging=={version}").returncode == 0
    (tmp_path / "base.txt").write_text(f"packaging=={version}\n")
    done = _pip("--python", python, "install", *arguments)
    assert done.returncode == 0, done.stderr
    assert "Requirement already satisfied: packaging" in done.stdout
    assert installed() == ["gunicorn-25.3.0", f"packaging-{version}"]

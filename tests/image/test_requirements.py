"""training/requirements.txt against the base image: pinned, resolvable for its Python 3.12 on x86-64 Linux from
wheels alone, and nothing of the base (the published package list, container/dlc-2.13-cpu-constraints.txt) replaced.

One pip call resolves the lock (requirements-lock.txt, what the build installs) for the image's interpreter and
platform without installing (it needs PyPI), in hash-checking mode as the build does: pip then downloads every file
and checks its sha256 against the lock. It runs with --no-deps: a full resolution with --ignore-installed would list
torch and numpy as installs, since pip cannot be told that a foreign platform already has them. Instead the test
checks the dependencies itself, from the metadata pip reports: each must be met by the base's version or by another
pin, exactly as `pip install -c <base's freeze>` in training/Dockerfile will find them.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tests.image.dockerfile import CONSTRAINTS, LOCK, REQUIREMENTS, copied_files
from tests.image.dockerfile import CONTEXT as TRAINING_DIR
from training.container.verify import read_lock, read_pins

PYTHON = "3.12"  # the base's /opt/venv (constraints header)
# Amazon Linux 2023 has glibc 2.34: wheels for manylinux 2.34 and older run there.
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
COMPILED = ("python-gdcm", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")  # codecs with native code
# The image's interpreter, for dependency markers (Marker.evaluate fills in the rest from this one).
MARKERS = {"python_version": PYTHON, "python_full_version": f"{PYTHON}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pip") / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(out), "--no-deps",
               "--ignore-installed", "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON,
               "--abi", "cp312", "--abi", "abi3", "--abi", "none", *(f"--platform={p}" for p in PLATFORMS),
               "--require-hashes", "--requirement", str(LOCK), "--constraint", str(CONSTRAINTS)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"the lock does not resolve for the image:\n{done.stderr[-4000:]}"
    return json.loads(out.read_text())


def test_the_constraints_are_the_bases_python_and_torch():
    assert f"# python=={PYTHON}" in CONSTRAINTS.read_text().splitlines()
    base = read_pins(CONSTRAINTS)
    assert Version(base["torch"]).public == "2.13.0"
    assert "numpy" in base and len(base) > 200


def test_every_requirement_is_pinned_and_none_replaces_a_base_package():
    pins = read_pins(REQUIREMENTS)  # raises on any line that is not name==version
    base = read_pins(CONSTRAINTS)
    assert {"monai", "pydicom", "python-gdcm", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
            "pylibjpeg-rle"} <= set(pins)
    assert {name: (version, base[name]) for name, version in pins.items() if name in base and base[name] != version} \
        == {}


def test_requirements_resolve_from_wheels_for_the_image_and_install_exactly_the_pins(report):
    installs = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    pins = read_pins(REQUIREMENTS)
    assert {name: i["metadata"]["version"] for name, i in installs.items()} == pins
    base = read_pins(CONSTRAINTS)
    assert "torch" not in installs
    for name, install in installs.items():
        if name in base:
            assert install["metadata"]["version"] == base[name], f"{name} would replace the base's {base[name]}"
    lock = read_lock(LOCK)
    for name, install in installs.items():  # the file pip checked is one the lock names
        assert install["download_info"]["archive_info"]["hashes"]["sha256"] in lock[name][1], name
    for codec in COMPILED:
        _, _, _, tags = parse_wheel_filename(Path(installs[canonicalize_name(codec)]["download_info"]["url"]).name)
        assert any(t.interpreter == "cp312" and t.platform.startswith("manylinux") and t.platform.endswith("x86_64")
                   for t in tags), f"{codec}: no cp312 manylinux x86_64 wheel ({sorted(map(str, tags))})"


def test_the_dependencies_of_the_requirements_are_met_by_the_base_or_other_pins(report):
    available = {**read_pins(CONSTRAINTS), **read_pins(REQUIREMENTS)}
    unmet = []
    for install in report["install"]:
        for text in install["metadata"].get("requires_dist") or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(MARKERS):
                continue
            have = available.get(canonicalize_name(requirement.name))
            if have is None or not requirement.specifier.contains(have, prereleases=True):
                unmet.append(f"{install['metadata']['name']} needs {requirement}; the image has {have}")
    assert unmet == [], "pin these in training/requirements.txt (or pick versions the base satisfies)"


def test_the_job_imports_only_what_the_image_installs():
    """Every third-party module imported anywhere in the image's code is in the base or in requirements.txt."""
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    image = set(read_pins(CONSTRAINTS)) | set(read_pins(REQUIREMENTS))
    missing = {}
    for path in sorted(copied_files()):
        if not path.endswith(".py"):
            continue
        tree = ast.parse((TRAINING_DIR / path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top == "training" or re.match(r"^_", top):
                    continue
                dists = {canonicalize_name(d) for d in owners.get(top, [top])}
                if not dists & image:
                    missing[f"{path}: import {name}"] = sorted(dists)
    assert missing == {}

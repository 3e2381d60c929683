"""Checks the training image while it is built: training/Dockerfile runs this twice, and the tests run it here too.

    python verify.py packages --base BASE_FREEZE --requirements REQUIREMENTS [--lock LOCK]
        after `pip install --require-hashes -r LOCK`: LOCK (requirements-lock.txt, written by `make lock`) pins exactly
        the versions of REQUIREMENTS, each with its sha256 hashes; no package of the base (BASE_FREEZE, its `pip list
        --format=freeze` taken before the install) was replaced, every pin of REQUIREMENTS is installed at its
        version, their dependencies are installed at versions they accept, and the TRAINING_IMAGE_* versions the image
        declares are the installed ones.
    python verify.py job
        after the job's code is in place: the package `training` imports from PYTHONPATH, and pydicom decodes the
        compressed DICOM files of the job's synthetic set and has the codecs (pylibjpeg, python-gdcm) for every
        JPEG family transfer syntax.

A failed check prints what is wrong and exits 1, so the image is never built broken. Only the standard library and
`packaging` (in the base image) are imported before the checks need more.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# Environment variable the image sets -> the distribution whose installed version it must equal (local label dropped).
DECLARED_VERSIONS = {
    "TRAINING_IMAGE_TORCH": "torch", "TRAINING_IMAGE_MONAI": "monai", "TRAINING_IMAGE_PYDICOM": "pydicom",
}
# Transfer syntaxes that need a codec package; both pylibjpeg and python-gdcm must be able to decode each of them.
CODEC_SYNTAXES = (
    "JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLosslessSV1", "JPEGLSLossless", "JPEGLSNearLossless",
    "JPEG2000Lossless", "JPEG2000",
)
CODEC_PLUGINS = ("pylibjpeg", "gdcm")
# And pyjpegls (which pydicom prefers for JPEG-LS when installed; training/requirements.txt says why it is there).
EXTRA_PLUGINS = {"JPEGLSLossless": ("pyjpegls",), "JPEGLSNearLossless": ("pyjpegls",)}
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(?:#.*)?$")
_LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\\]+)\s*\\?$")
_LOCK_HASH = re.compile(r"^\s+--hash=sha256:([0-9a-f]{64})\s*\\?$")


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements, constraints or freeze file (comments and blank lines skipped).

    Args:
        path: the file.

    Returns:
        Canonical distribution name to version.

    Raises:
        ValueError: a line that is not `name==version`; the message names the file and line.
    """
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: {line.strip()!r} is not `name==version`; pin every package exactly")
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """The pins of a hash-checking lock as `make lock` writes it (`name==version \\` then `--hash=sha256:...` lines).

    Args:
        path: the lock file.

    Returns:
        Canonical distribution name to its version and its sha256 hashes (hex).

    Raises:
        ValueError: a line that is neither a pin, a hash of the pin above it, a comment nor blank; the message names
            the file and line.
    """
    pins: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pin, digest = _LOCK_PIN.match(line), _LOCK_HASH.match(line)
        if pin:
            current = []
            pins[canonicalize_name(pin[1])] = (pin[2], current)
        elif digest and current is not None:
            current.append(digest[1])
        else:
            raise ValueError(f"{path}:{number}: {line.strip()!r} is neither `name==version` nor a sha256 hash of "
                             "one: regenerate the lock with `make lock`")
    return pins


def check_lock(lock: Mapping[str, tuple[str, Sequence[str]]], requirements: Mapping[str, str]) -> list[str]:
    """The lock pins what requirements.txt pins, at the same versions, each with at least one sha256 hash.

    Args:
        lock: `read_lock` of requirements-lock.txt.
        requirements: `read_pins` of requirements.txt.

    Returns:
        One message per problem; empty when all is well.
    """
    problems = []
    locked = {name: version for name, (version, _) in lock.items()}
    if locked != dict(requirements):
        problems.append(f"requirements-lock.txt pins {sorted(f'{n}=={v}' for n, v in locked.items())} but "
                        f"requirements.txt {sorted(f'{n}=={v}' for n, v in requirements.items())}: run `make lock`")
    problems += [f"requirements-lock.txt has no sha256 hash for {name}: run `make lock`"
                 for name, (_, hashes) in lock.items() if not hashes]
    return problems


def installed_versions() -> dict[str, str]:
    """Canonical name to version of every distribution the running interpreter sees."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def check_packages(base: Mapping[str, str], requirements: Mapping[str, str], installed: Mapping[str, str],
                   environ: Mapping[str, str]) -> list[str]:
    """The package checks of `verify.py packages` (module docstring).

    Args:
        base: the base image's packages before the install (name to version).
        requirements: the pins that were installed.
        installed: what is installed now.
        environ: the image's environment (TRAINING_IMAGE_* declarations).

    Returns:
        One message per problem; empty when all is well.
    """
    problems = [f"{name} {version} of the base image became {installed.get(name, 'uninstalled')}"
                for name, version in base.items() if installed.get(name) != version]
    for name, version in requirements.items():
        if installed.get(name) != version:
            problems.append(f"{name}=={version} from requirements.txt is not installed (found {installed.get(name)})")
            continue
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):  # this interpreter, no extras
                continue
            have = installed.get(canonicalize_name(requirement.name))
            if have is None or not requirement.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {requirement}, the image has {have or 'nothing'}: pin a version in "
                                "requirements.txt that the base image's packages satisfy")
    for variable, name in DECLARED_VERSIONS.items():
        declared, have = environ.get(variable), installed.get(name)
        if declared is None or have is None or Version(have).public != declared:
            problems.append(f"{variable}={declared} but {name} {have} is installed: update training/Dockerfile")
    return problems


def check_job(python: str = sys.executable) -> list[str]:
    """The checks of `verify.py job` (module docstring).

    Args:
        python: the interpreter that runs the job (for `python -m training.synthetic`).

    Returns:
        One message per problem; empty when all is well.
    """
    problems: list[str] = []
    try:
        training = importlib.import_module("training")
        importlib.import_module("training.job.train")
    except Exception as exc:  # noqa: BLE001  (any import failure is the finding)
        return [f"the job does not import: {type(exc).__name__}: {exc} (PYTHONPATH={os.environ.get('PYTHONPATH')})"]
    print(f"training imports from {Path(str(training.__file__)).parent}")

    import pydicom  # noqa: PLC0415  (after the job imported: its dependencies are in place)
    import pydicom.uid  # noqa: PLC0415
    from pydicom.pixels import get_decoder  # noqa: PLC0415

    for syntax in CODEC_SYNTAXES:
        plugins = set(get_decoder(getattr(pydicom.uid, syntax)).available_plugins)
        missing = [p for p in (*CODEC_PLUGINS, *EXTRA_PLUGINS.get(syntax, ())) if p not in plugins]
        if missing:
            problems.append(f"pydicom cannot decode {syntax} with {', '.join(missing)} (available: {sorted(plugins)})")
    with tempfile.TemporaryDirectory() as tmp:
        made = subprocess.run([python, "-m", "training.synthetic", tmp, "--count", "24", "--size", "64"],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            return [*problems, f"python -m training.synthetic failed: {(made.stderr + made.stdout).strip()[-2000:]}"]
        decoded: dict[str, int] = {}
        compressed = 0
        for path in sorted(Path(tmp).rglob("*.dcm")):
            dataset = pydicom.dcmread(path)
            syntax = dataset.file_meta.TransferSyntaxUID
            try:
                dataset.pixel_array  # noqa: B018  (decoding is the check)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{path.name} ({syntax.name}) does not decode: {exc}")
            decoded[syntax.name] = decoded.get(syntax.name, 0) + 1
            compressed += syntax.is_compressed
        if not compressed:
            problems.append(f"the synthetic set has no compressed file to decode: {decoded}")
        print(f"decoded the synthetic set: {decoded}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run one of the checks (module docstring); 0 when it passes, 1 with the problems printed when not."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packages = commands.add_parser("packages", help="after pip: the base is intact and the pins are installed")
    packages.add_argument("--base", type=Path, required=True, help="pip list --format=freeze of the base image")
    packages.add_argument("--requirements", type=Path, required=True, help="the installed requirements.txt")
    packages.add_argument("--lock", type=Path, help="the lock installed with --require-hashes (requirements-lock.txt)")
    commands.add_parser("job", help="after the code: the job imports and decodes compressed DICOM")
    args = parser.parse_args(argv)
    if args.command == "packages":
        requirements = read_pins(args.requirements)
        problems = check_lock(read_lock(args.lock), requirements) if args.lock else []
        problems += check_packages(read_pins(args.base), requirements, installed_versions(), os.environ)
    else:
        problems = check_job()
    for problem in problems:
        print(f"verify.py {args.command}: {problem}", file=sys.stderr)
    if not problems:
        print(f"verify.py {args.command}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

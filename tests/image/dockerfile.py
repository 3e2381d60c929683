"""training/Dockerfile and training/.dockerignore read the way Docker reads them, for tests that mirror the image.

No Docker engine here: the tests lay the image's code out themselves, so they take every path and variable from the
Dockerfile itself (its COPY of the build context and its ENV), and apply .dockerignore with docker-py's matcher (the
Python implementation of Docker's rules).
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from docker.utils.build import PatternMatcher

from tests.conftest import ROOT

CONTEXT = ROOT / "training"  # the build context (infra/constructs/training_image.py builds from it)
DOCKERFILE = CONTEXT / "Dockerfile"
CONSTRAINTS = CONTEXT / "container" / "dlc-2.13-cpu-constraints.txt"
REQUIREMENTS = CONTEXT / "requirements.txt"
LOCK = CONTEXT / "requirements-lock.txt"  # `make lock`; the image installs it with --require-hashes
IMAGE_ROOT = "/opt/ml"  # SageMaker's tree; the tests put it under a temporary directory (SAGEMAKER_BASE_DIR)
# What the base image (the SageMaker PyTorch DLC) sets that the job's runs depend on: its Dockerfile's
# ENV SAGEMAKER_TRAINING_MODULE (aws/deep-learning-containers docker/pytorch/Dockerfile.cpu, stage "sagemaker").
BASE_ENV = {"SAGEMAKER_TRAINING_MODULE": "sagemaker_pytorch_container.training:main"}
_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case) and the rest of its line, continuations joined."""

    keyword: str
    arguments: str


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, comments dropped and backslash continuations joined."""
    found: list[Instruction] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return found


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Docker's variable substitution: $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alternative}, nested."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if j >= len(text):
                    raise ValueError(f"unclosed ${{ in {text!r}")
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 1
                elif text[j] == "}":
                    depth -= 1
                j += 1
            body = text[i + 2 : j - 1]
            parsed = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?::([-+]))?(.*)", body, re.S)
            if parsed is None:
                raise ValueError(f"unsupported substitution ${{{body}}} in {text!r}")
            name, operator, word = parsed.groups()
            value = variables.get(name, "")
            if operator == "-":
                value = value or substitute(word, variables)
            elif operator == "+":
                value = substitute(word, variables) if value else ""
            out.append(value)
            i = j
        elif (match := _NAME.match(text, i)) is not None:
            out.append(variables.get(match[1], ""))
            i = match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def image_environment(build_args: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the final image sets (BASE_ENV, then the Dockerfile's ARG defaults, build args and ENV).

    Args:
        build_args: values for the Dockerfile's ARGs (--build-arg); the others take their defaults.
    """
    args: dict[str, str] = {}
    env: dict[str, str] = dict(BASE_ENV)
    for instruction in instructions():
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            given = (build_args or {}).get(name)
            args[name] = given if given is not None else args.get(name, shlex.split(default)[0] if default else "")
        elif instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                env[name] = substitute(value, {**args, **env})
    return env


def pip_install_arguments() -> list[str]:
    """The arguments of the build's `python -m pip install` (in a RUN, among commands joined by &&), after `install`."""
    for instruction in instructions():
        if instruction.keyword != "RUN":
            continue
        for command in instruction.arguments.split("&&"):
            words = shlex.split(command)
            if words[:4] == ["python", "-m", "pip", "install"]:
                return words[4:]
    raise AssertionError(f"{DOCKERFILE} has no RUN with `python -m pip install`")


def code_destination() -> str:
    """Where the Dockerfile copies the build context (`COPY . DEST`): the image's code of the job."""
    for instruction in instructions():
        parts = instruction.arguments.split()
        if instruction.keyword == "COPY" and parts[:1] == ["."]:
            return parts[-1].rstrip("/")
    raise AssertionError(f"{DOCKERFILE} has no `COPY . DEST` of the job's code")


def ignore_patterns(context: Path = CONTEXT) -> list[str]:
    """The patterns of the context's .dockerignore."""
    lines = (context / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def copied_files(context: Path = CONTEXT) -> set[str]:
    """The files `COPY . DEST` puts in the image: the context less what .dockerignore excludes.

    Docker reads the Dockerfile and .dockerignore even where .dockerignore lists them, but does not copy them then.
    """
    patterns = ignore_patterns(context)
    included = {path for path in PatternMatcher(patterns).walk(str(context)) if (context / path).is_file()}
    own_rules = PatternMatcher(patterns)
    own_rules.patterns = own_rules.patterns[:-1]  # docker-py always adds "!.dockerignore": the context needs it
    return {path for path in included if not own_rules.matches(path)}


def lay_out_code(base_dir: Path, context: Path = CONTEXT) -> Path:
    """Put the image's code under base_dir (standing for /opt/ml) exactly where the Dockerfile's COPY puts it.

    Returns:
        The directory that stands for the COPY's destination.
    """
    destination = code_destination()
    if not destination.startswith(IMAGE_ROOT + "/"):
        raise AssertionError(f"the job's code goes to {destination}, outside {IMAGE_ROOT}")
    target = base_dir / destination.removeprefix(IMAGE_ROOT + "/")
    for path in sorted(copied_files(context)):
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(context / path, target / path)
    return target


def local_path(value: str, base_dir: Path) -> str:
    """An image value with /opt/ml standing for base_dir (the tests' SAGEMAKER_BASE_DIR)."""
    return value.replace(IMAGE_ROOT, str(base_dir))

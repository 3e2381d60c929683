"""Running a module of this repository in a process of its own (bench/child.py's cases, bench/ceiling.py's job), and
the error a failed one raises. No torch: the parent process stays small."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class BenchError(RuntimeError):
    """A benchmark case failed; the message carries the end of its output."""


def environment() -> dict[str, str]:
    """This process's environment, with the repository root first on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def run_module(module: str, argv: list[str], *, timeout: float = 3600.0) -> str:
    """Run `python -m module argv...` from the repository root in a process of its own and return its output.

    Args:
        module: e.g. 'training' (the job itself).
        argv: its arguments.
        timeout: seconds before it is killed.

    Returns:
        Its standard output and error, interleaved.

    Raises:
        BenchError: it failed or timed out; the message ends with its last output lines.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", module, *argv], cwd=ROOT, env=environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"python -m {module} timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-40:])
        raise BenchError(f"python -m {module} failed (exit status {done.returncode}); its last output:\n{tail}")
    return done.stdout

"""Each measurement in a process of its own, so that its peak resident memory is its own and peaks never mix.

    python -m bench.child SPEC.json RESULT.json    (what `run_case` starts; not meant to be run by hand)

The parent also records how much CPU the case used and how busy the rest of the machine was meanwhile: on a shared
machine a figure means little without it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import busy_cpu_seconds, children_cpu_seconds, load_average, peak_memory_mib
from bench.process import ROOT, BenchError, environment

__all__ = ["ROOT", "BenchError", "run_case", "run_in_process", "wait_for_quiet"]

def run_case(case: str, kwargs: dict[str, Any], *, timeout: float = 1800.0, log_dir: Path | None = None) -> dict:
    """Run one case of bench.cases in a child process and return its result with the process's figures.

    Args:
        case: a name in bench.cases.CASES.
        kwargs: the case's keyword arguments (JSON-serializable).
        timeout: seconds before the child is killed.
        log_dir: where the child's output is kept (case.log); None: a temporary file, removed after.

    Returns:
        The case's result plus "process": wall and CPU seconds, cores used, the rest of the machine's load in cores
        meanwhile, and the 1-minute load average before and after.

    Raises:
        BenchError: the child failed or timed out; the message ends with its last output lines.
    """
    with tempfile.TemporaryDirectory(prefix="bench-case-") as scratch:
        spec, result = Path(scratch) / "spec.json", Path(scratch) / "result.json"
        spec.write_text(json.dumps({"case": case, "kwargs": kwargs}), encoding="utf-8")
        log_path = (log_dir / f"{case}.log") if log_dir is not None else Path(scratch) / "case.log"
        env = environment()
        before = (time.perf_counter(), children_cpu_seconds(), busy_cpu_seconds(), load_average())
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "bench.child", str(spec), str(result)],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
                returncode = done.returncode
            except subprocess.TimeoutExpired:
                returncode = -1
        wall = time.perf_counter() - before[0]
        cpu = children_cpu_seconds() - before[1]
        busy = busy_cpu_seconds() - before[2]
        if returncode != 0 or not result.exists():
            tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
            why = f"timed out after {timeout:.0f} s" if returncode == -1 else f"exit status {returncode}"
            raise BenchError(f"benchmark case {case} failed ({why}); its last output:\n{tail}")
        figures = json.loads(result.read_text(encoding="utf-8"))
    figures["process"] = {
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "cores_used": round(cpu / wall, 2) if wall > 0 else 0.0,
        "other_load_cores": round(max(busy - cpu, 0.0) / wall, 2) if wall > 0 else 0.0,
        "load_average_before": before[3],
        "load_average_after": load_average(),
    }
    return figures


def run_in_process(case: str, kwargs: dict[str, Any]) -> dict:
    """Run one case in this process (the smoke tests): the same figures, but the memory peak is this process's
    whole life and there are no process figures; never for measurements.

    Args:
        case: a name in bench.cases.CASES.
        kwargs: its keyword arguments.

    Returns:
        The case's result plus this process's peak memory.
    """
    from bench.cases import CASES

    figures = CASES[case](**kwargs)
    figures.update(peak_memory_mib())
    return figures


def wait_for_quiet(seconds: float, *, max_other_cores: float = 0.5, sample: float = 2.0) -> float:
    """Wait, at most `seconds`, until the rest of the machine uses fewer than max_other_cores; a shared machine's
    other jobs distort every figure (OpenMP threads that find their cores taken slow down far more than in
    proportion).

    Args:
        seconds: the longest wait; 0 returns at once.
        max_other_cores: busy cores, summed over the machine, that count as quiet.
        sample: seconds per look.

    Returns:
        The busy cores seen at the last look (nan when seconds is 0).
    """
    deadline = time.perf_counter() + seconds
    busy = float("nan")
    while time.perf_counter() < deadline:
        before = busy_cpu_seconds()
        time.sleep(sample)
        busy = (busy_cpu_seconds() - before) / sample
        if busy < max_other_cores:
            break
    return round(busy, 2)


def main(argv: list[str]) -> int:
    """Child side: run the case named in SPEC.json, write its result and peak memory to RESULT.json."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    from bench.cases import CASES  # imports torch and MONAI: only in the child

    figures = CASES[spec["case"]](**spec["kwargs"])
    figures.update(peak_memory_mib())
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    Path(result_path).write_text(json.dumps(figures), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

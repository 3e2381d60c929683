"""The GPU benchmark: (a) the public sample, (b) ours, the ceiling and the job's loop, and scaling, in one run on CUDA.

    python -m bench.gpu OUT_DIR                 # on a machine with CUDA: about 5-8 minutes; OUT_DIR/gpu-bench.json, .md
    python -m bench.gpu OUT_DIR --cpu-fallback  # no GPU: the same steps on the CPU at a tiny scale (a smoke run)

It needs this repository and its Python packages (requirements-dev.txt: torch, MONAI, pydicom, itk, psutil) on the
GPU machine; nothing is downloaded. It generates 2,000 training + 400 validation synthetic images at 256x256, then
measures, each in a process of its own: the loaders (a) with the sample's GPU settings (10 DataLoader workers,
pinned memory, batches copied to the GPU) and (b) (batches built and augmented on the GPU); the training loops
(a) and (b) with time to 0.95 validation accuracy; the ceiling (bench/ceiling.py: the bare training step with the
job's AdamW on an in-memory batch, fp32 and the GPU's best autocast type, contiguous and channels_last) before and
after the job's own loop (`python -m training` on the GPU, its images_per_second lines), with the loop's phases when
its share is under the target; and scaling (bench/scaling.py: data at 1x, 4x and 16x of 500 images, memory and disk
cache, on the GPU; decoding at 256, 512 and 2048). Target: the loop >= 80 % of the best ceiling variant; above
100 % + the ceiling's spread fails. Exit status: 0 all targets met, 1 one missed or the share impossible, 2 a
measurement failed, 3 no CUDA without --cpu-fallback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.__main__ import ceiling_benchmark, scaling_benchmark
from bench.child import BenchError, run_case
from bench.datasets import make_set
from bench.measure import load_average, machine

Runner = Callable[[str, dict[str, Any]], dict[str, Any]]

# Sized for well under 5 minutes on one GPU: enough images that an epoch of (b) lasts a fraction of a second.
GPU_SCALE: dict[str, Any] = {
    "size": 256,
    "train_count": 2000,
    "validation_count": 400,
    "batch_size": 100,
    "loader_epochs": 3,
    "loader_epochs_ours": 10,
    "train_epochs": 5,
    "image_size": (108, 96),  # the ceiling's, the loop's and scaling's (the public sample's)
    "ceiling_steps": 20,
    "loop_epochs": 4,
    "scaling_base": 500,  # scaling's 1x; 16x is 8,000 images
    "decode_count": 24,
    "job": {},  # the job's own defaults
}
# The CPU fallback: the same steps on a handful of images, to keep the script working where no GPU is.
CPU_FALLBACK_SCALE: dict[str, Any] = {
    "size": 64,
    "train_count": 8,
    "validation_count": 4,
    "batch_size": 4,
    "loader_epochs": 2,
    "loader_epochs_ours": 2,
    "train_epochs": 1,
    "image_size": (32, 32),
    "ceiling_steps": 1,
    "loop_epochs": 2,
    "scaling_base": 4,
    "decode_count": 4,
    "job": {"precise_bn": "0", "bootstrap_samples": "0", "torchscript": "false", "threads": "1", "workers": "1"},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for gpu-bench.json and gpu-bench.md (created)")
    parser.add_argument(
        "--cpu-fallback", action="store_true", help="without CUDA, run the steps on the CPU at a tiny scale"
    )
    return parser.parse_args(argv)


def run(out: Path, *, device: str, scale: dict[str, Any], runner: Runner | None = None) -> dict[str, Any]:
    """Generate the data, run (a), (b), the ceiling and the loop, and scaling on device; write OUT/gpu-bench.json, .md.

    Args:
        out: the output directory (created).
        device: 'cuda' or 'cpu'.
        scale: GPU_SCALE or CPU_FALLBACK_SCALE (or a variant of them).
        runner: runs one case and returns its figures; default: bench.child.run_case (a process per case).

    Returns:
        The results document (also written to out).
    """
    run_one: Runner = runner or (lambda name, kwargs: run_case(name, kwargs))
    started = time.perf_counter()
    batch = scale["batch_size"]
    results: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench.gpu", *sys.argv[1:]]),
        "device": _device_name(device),
        "settings": {**scale, "target_accuracy": 0.95},
        "machine": machine(),
        "versions": _versions(),
        "load": {"start": load_average()},
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-data-") as scratch:
        data = make_set(
            Path(scratch),
            size=scale["size"],
            train_count=scale["train_count"],
            validation_count=scale["validation_count"],
        )
        loader_args = {"train_dir": str(data.train), "batch_size": batch, "device": device}
        train_args = {
            **loader_args,
            "val_dir": str(data.validation),
            "epochs": scale["train_epochs"],
            "target_accuracy": 0.95,
        }
        results["sizes"][str(scale["size"])] = {
            "data_seconds": round(data.seconds, 1),
            "loader": {
                "a": run_one("loader_public_sample", {**loader_args, "epochs": scale["loader_epochs"]}),
                "b": run_one("loader_ours", {**loader_args, "epochs": scale["loader_epochs_ours"]}),
            },
            "training": {
                "a": run_one("train_public_sample", train_args),
                "b": run_one("train_ours", train_args),
            },
        }
        sized = _sized(run_one, device=device, scale=scale)
        common = {"sizes": [scale["size"]], "validation_count": scale["validation_count"]}
        ceiling_args = argparse.Namespace(
            **common, train_count=scale["train_count"], ceiling_steps=scale["ceiling_steps"],
            loop_epochs=scale["loop_epochs"],
        )
        results["ceiling"] = ceiling_benchmark(ceiling_args, Path(scratch), sized)
        scaling_args = argparse.Namespace(**common, train_count=scale["scaling_base"])
        results["scaling"] = scaling_benchmark(scaling_args, Path(scratch), sized, serving=False)  # serving: CPU
    results["load"]["end"] = load_average()
    target = report.GPU_LOOP_SHARE if device == "cuda" else report.LOOP_SHARE
    results["targets"] = report.targets(results, loop_target=target)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["settings"]["loader_epochs"] = scale["loader_epochs"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "gpu-bench.md").write_text(report.markdown(results), encoding="utf-8")
    return results


def main(args: argparse.Namespace) -> int:
    """Run on CUDA, or on the CPU with --cpu-fallback; print the table.

    Returns:
        0 targets met, 1 a target missed, 2 a measurement failed, 3 no CUDA and no --cpu-fallback.
    """
    import torch

    if torch.cuda.is_available():
        device, scale = "cuda", GPU_SCALE
    elif args.cpu_fallback:
        device, scale = "cpu", CPU_FALLBACK_SCALE
    else:
        print("error: CUDA is not available here; run on a GPU machine, or add --cpu-fallback", file=sys.stderr)
        return 3
    try:
        results = run(args.out, device=device, scale=scale)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "gpu-bench.md").read_text(encoding="utf-8"))
    missed = [c for c in results["targets"] if not c["met"]]
    for c in missed:
        print(f"target missed: {c['target']}: {c['value']:.2f} (required {c['required']})")
    impossible = report.impossible_message(results)
    if impossible:
        print(f"error: {impossible}", file=sys.stderr)
    return 1 if missed or impossible else 0


def _sized(run_one: Runner, *, device: str, scale: dict[str, Any]) -> Runner:
    """run_one with the scale's batch, image size and steps, and the device, for the ceiling's and scaling's cases
    (the job of loop_job picks the GPU itself)."""
    shape = {"batch_size": scale["batch_size"], "image_size": list(scale["image_size"])}
    steps = {"steps": scale["ceiling_steps"], "device": device}
    extra: dict[str, dict[str, Any]] = {
        "ceiling": {**shape, **steps},
        "loop_job": {**shape, "hyperparameters": scale["job"]},
        "loop_phases": {**shape, **steps},
        "scaling_data": {**shape, **steps},
        "scaling_decode": {"count": scale["decode_count"], "image_size": list(scale["image_size"])},
    }
    return lambda name, kwargs: run_one(name, {**kwargs, **extra.get(name, {})})


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return "cpu (fallback, tiny scale: the figures mean nothing)"


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("torch", "monai", "itk", "pydicom", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.exit(main(parse_args()))

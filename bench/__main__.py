"""The benchmarks: the public sample's pipeline and loop (a) against ours (b), on the same synthetic data.

    make bench                                  # = python -m bench: every benchmark, about 20-25 min on 2 cores
    python -m bench --quick                     # a small set and few epochs (about 5 min), for a first look
    python -m bench --only loader --sizes 256   # one benchmark, one source size
    python -m bench --only ceiling              # the ceiling and the job's loop against it (about 4 min)
    python -m bench --only volumes              # the 3-D benchmark alone (about 5 min on 2 cores)
    python -m bench --only scaling              # cost per unit as work grows (about 4 min; budget 10 min)

For each source size (256x256 and 512x512 16-bit DICOM, generated into a temporary directory) it measures the loader
(a) vs (b) and the training loop (a) vs (b); once, the ceiling (bench/ceiling.py: DenseNet121's bare training step with
the job's AdamW on an in-memory batch, fp32 and bf16, contiguous and channels_last, before and after the loop) and the
job's own loop (`python -m training`, its images_per_second metric lines) as a share of it, with a per-phase breakdown
when the share is under the target; once, serving: requests per second and p50/p99 latency of training/serve.py's
server for one 512x512 file (the largest --sizes when 512 is not among them), with a bundle the real job trains for
it; once, volumes (bench/volumes.py): synthetic CT series through the pipeline a MONAI user writes first (ITK reads
each series folder every epoch) against ours (prepare_volumes' cache, BatchLoader, the job's epoch step): loader and
training of ResNet18 and DenseNet121 in 3-D (no target is set); scaling (bench/scaling.py): the loader and training
step at 1x, 4x and 16x --train-count with the cache in memory and on disk, decoding at 256, 512 and 2048 pixels.
Each measurement runs in a process of its own (bench/child.py) for its peak memory. Figures go to
bench/results/bench.json and bench/results/bench.md (the table the README's "Performance" section quotes); the
command exits 1 when a target is missed or the loop beats its ceiling by more than the ceiling's spread (serving,
volumes and scaling have no target).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report, scaling_report
from bench.child import ROOT, BenchError, run_case, wait_for_quiet
from bench.datasets import make_set, make_volume_set
from bench.measure import load_average, machine
from training.job.config import NETWORKS, check_image_size, check_network_input

BENCHMARKS = ("loader", "training", "ceiling", "serving", "runtimes", "volumes", "scaling")
SERVING_SIZE = 512  # the source size serving is measured at (the "one 512x512 file")
Runner = Callable[[str, dict[str, Any]], dict[str, Any]]
RESULTS = ROOT / "bench" / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (defaults: the full run `make bench` does)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="source sizes (default 256 512)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        default=list(BENCHMARKS),
        help="benchmarks to run (default all); scaling alone takes about 4 min on 2 cores, budget 10 min",
    )
    parser.add_argument("--train-count", type=int, default=500, help="training images per size (default 500)")
    parser.add_argument("--validation-count", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--loader-epochs", type=int, default=4, help="loader epochs of (a) (default 4)")
    parser.add_argument("--loader-epochs-ours", type=int, default=20, help="loader epochs of (b) (default 20)")
    parser.add_argument("--train-epochs", type=int, default=6, help="training epochs of each (default 6)")
    parser.add_argument(
        "--ceiling-steps", type=int, default=6, help="timed steps per ceiling variant, >= 6 (default 6)"
    )
    parser.add_argument(
        "--loop-epochs", type=int, default=4, help="epochs of the job whose loop is set against the ceiling (default 4)"
    )
    parser.add_argument("--target-accuracy", type=float, default=0.95, help="for time-to-accuracy (default 0.95)")
    parser.add_argument("--serving-requests", type=int, default=200, help="timed serving requests (default 200)")
    parser.add_argument("--serving-concurrency", type=int, default=8, help="concurrent serving clients (default 8)")
    parser.add_argument(
        "--serving-workers", type=int, default=0, help="server worker processes; 0: one per core (default)"
    )
    parser.add_argument(
        "--serving-epochs", type=int, default=1, help="epochs of the job that trains the served bundle (default 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of every measurement (OMP_NUM_THREADS); 0: PyTorch's default, one per core (default)",
    )
    parser.add_argument(
        "--basis",
        choices=("wall", "cpu"),
        default="wall",
        help="judge the targets on images per wall-clock second (default) or per CPU second (a shared machine)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this many seconds for other jobs to leave the CPU (default 30)",
    )
    parser.add_argument(
        "--volume-grid", type=int, nargs=3, default=[32, 64, 64], help="3-D: training grid D H W (default 32 64 64)"
    )
    parser.add_argument(
        "--volume-source", type=int, nargs=2, default=[40, 96], help="3-D: slices and size of a series (default 40 96)"
    )
    parser.add_argument("--volume-count", type=int, default=16, help="3-D: synthetic CT series (default 16)")
    parser.add_argument(
        "--volume-networks",
        nargs="+",
        choices=NETWORKS,
        default=["resnet18", "densenet121"],
        help="3-D: networks trained (default resnet18 densenet121)",
    )
    parser.add_argument("--volume-batch-size", type=int, default=4, help="3-D: volumes a batch (default 4)")
    parser.add_argument("--volume-loader-epochs", type=int, default=3, help="3-D: loader epochs of (a) (default 3)")
    parser.add_argument(
        "--volume-loader-epochs-ours", type=int, default=5, help="3-D: loader epochs of (b) (default 5)"
    )
    parser.add_argument(
        "--volume-train-epochs", type=int, default=3, help="3-D: training epochs (default 3: the median of two counts)"
    )
    parser.add_argument(
        "--volume-accuracy-epochs", type=int, default=8,
        help="3-D: epochs of the job's fit on the order-only set for the time to --target-accuracy (default 8)",
    )
    parser.add_argument(
        "--volume-precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",  # the job's: fp32 for volumes on the CPU, whose bf16 conv3d gradients are not finite (2026-12)
        help="3-D: (b)'s precision (default auto, the job's: fp32 for volumes on a CPU, bf16 refused there)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where bench.json and bench.md go")
    parser.add_argument(
        "--quick", action="store_true", help="100 + 60 images at 256 only, 2 training epochs; 8 series of 32x64x64"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.train_count, args.validation_count = [256], 100, 60
        args.loader_epochs, args.loader_epochs_ours, args.train_epochs, args.loop_epochs = 3, 5, 2, 3
        args.volume_count, args.volume_source = 8, [32, 64]
    for name in ("train_count", "validation_count"):
        if getattr(args, name) < 4:
            parser.error(f"--{name.replace('_', '-')} must be >= 4; got {getattr(args, name)}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0; got {args.threads}")
    for name in (
        "loader_epochs",
        "loader_epochs_ours",
        "train_epochs",
        "serving_requests",
        "serving_concurrency",
        "serving_epochs",
        "volume_batch_size",
        "volume_loader_epochs",
        "volume_loader_epochs_ours",
        "volume_train_epochs",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.ceiling_steps < 6:
        parser.error(f"--ceiling-steps must be >= 6 (the median of at least 6 steps); got {args.ceiling_steps}")
    if args.loop_epochs < 2:
        parser.error(f"--loop-epochs must be >= 2 (the first is warm-up); got {args.loop_epochs}")
    if args.volume_count < 4:
        parser.error(f"--volume-count must be >= 4; got {args.volume_count}")
    try:
        check_image_size(args.volume_grid)  # the job's rule: each axis in range, the volume within MAX_VOXELS
    except ValueError as exc:
        parser.error(f"--volume-grid: {exc}")
    if args.serving_workers < 0:
        parser.error(f"--serving-workers must be >= 0; got {args.serving_workers}")
    return args


def run(args: argparse.Namespace, runner: Runner = run_case) -> dict[str, Any]:
    """Generate the data and run every requested measurement.

    Args:
        args: from parse_args.
        runner: runs one case and returns its figures: bench.child.run_case (a process per case) for
            measurements, bench.child.run_in_process in the smoke tests.

    Returns:
        The results document.
    """
    started = time.perf_counter()
    if args.threads:  # the children inherit the environment; torch reads these at start
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    def _case(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        busy = wait_for_quiet(args.settle)
        _say(f"  {name} ..." + (f" (machine busy {busy:.1f} cores before it)" if args.settle else ""))
        figures = runner(name, kwargs)
        process = figures.get("process", {})
        rate, requests = figures.get("images_per_second"), figures.get("requests_per_second")
        where = (
            f", {process['wall_seconds']:.0f} s, other load {process['other_load_cores']:.1f} cores" if process else ""
        )
        speed = "" if rate is None else f"{rate:,.1f} images/s, "
        if requests is not None:
            speed = f"{requests:,.1f} requests/s, p50 {figures['p50_ms']:,.0f} ms, p99 {figures['p99_ms']:,.0f} ms, "
        _say(f"  {name}: {speed}{figures['peak_rss_mib']:,.0f} MiB peak{where}")
        return figures

    results: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "device": "cpu",
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "quick")
        },
        "machine": machine(),
        "versions": {name: _version(name) for name in ("torch", "monai", "itk", "pydicom", "numpy")},
        "load": {"start": load_average()},
        "sizes": {},
    }
    serving_size, serving_note = serving_size_of(args.sizes)
    per_size = {"loader", "training"} & set(args.only)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        for size in args.sizes:
            serve_here = bool({"serving", "runtimes"} & set(args.only)) and size == serving_size
            if not (per_size or serve_here):
                continue  # --only serving (and limit): no data at the other sizes
            data = make_set(
                Path(scratch), size=size, train_count=args.train_count, validation_count=args.validation_count
            )
            _say(f"{size}x{size}: {data.train_count} + {data.validation_count} images made in {data.seconds:.0f} s")
            entry: dict[str, Any] = {"data_seconds": round(data.seconds, 1)}
            if "loader" in args.only:
                common = {"train_dir": str(data.train)}
                a = _case("loader_public_sample", {**common, "epochs": args.loader_epochs})
                b = _case("loader_ours", {**common, "epochs": args.loader_epochs_ours})
                entry["loader"] = {"a": a, "b": b}
            if "training" in args.only:
                common = {
                    "train_dir": str(data.train),
                    "val_dir": str(data.validation),
                    "epochs": args.train_epochs,
                    "target_accuracy": args.target_accuracy,
                }
                entry["training"] = {"a": _case("train_public_sample", common), "b": _case("train_ours", common)}
            results["sizes"][str(size)] = entry
            if serve_here and "runtimes" in args.only:  # where a request's time goes; PyTorch, ONNX Runtime, OpenVINO
                from bench import serving_runtimes  # torch: imported when used (the parent stays small)

                results["runtimes"] = serving_runtimes.benchmark(args, data, _case)
            if serve_here and "serving" in args.only:
                if serving_note:
                    _say(f"  serving: {serving_note}")
                kwargs = {
                    "train_dir": str(data.train),
                    "val_dir": str(data.validation),
                    "requests": args.serving_requests,
                    "concurrency": args.serving_concurrency,
                    "workers": args.serving_workers,
                    "epochs": args.serving_epochs,
                }
                results["serving"] = {
                    **_case("serving", kwargs),
                    "source_size": size,
                    "train_images": data.train_count,
                    "note": serving_note,
                }
        if "volumes" in args.only:
            results["volumes"] = volume_benchmark(args, Path(scratch), _case)
        if "ceiling" in args.only:
            results["ceiling"] = ceiling_benchmark(args, Path(scratch), _case)
        if "scaling" in args.only:
            results["scaling"] = scaling_benchmark(args, Path(scratch), _case)
    results["load"]["end"] = load_average()
    results["targets"] = report.targets(results, basis=args.basis)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def volume_benchmark(args: argparse.Namespace, scratch: Path, case: Runner) -> dict[str, Any]:
    """The 3-D benchmark (bench/volumes.py): one synthetic CT set; loader (a) and (b), then each network's training
    (a) and (b), side by side. A network whose smallest input (config.SMALLEST_SIZE) exceeds the grid is left out,
    with the reason."""
    slices, size = args.volume_source
    data = make_volume_set(scratch, count=args.volume_count, slices=slices, size=size)
    _say(f"volumes: {data.count} series of {slices} slices of {size}x{size} made in {data.seconds:.0f} s")
    common = {"train_dir": str(data.train), "grid": list(args.volume_grid), "batch_size": args.volume_batch_size}
    entry: dict[str, Any] = {
        "count": data.count,
        "slices": slices,
        "size": size,
        "grid": list(args.volume_grid),
        "batch_size": args.volume_batch_size,
        "data_seconds": round(data.seconds, 1),
        "loader": {
            "a": case("loader_volumes_monai", {**common, "epochs": args.volume_loader_epochs}),
            "b": case("loader_volumes_ours", {**common, "epochs": args.volume_loader_epochs_ours}),
        },
        "training": {},
        "left_out": {},
    }
    for network in args.volume_networks:
        try:
            check_network_input(network, args.volume_grid)
        except ValueError as exc:
            entry["left_out"][network] = str(exc)
            _say(f"  {network} left out: {exc}")
            continue
        train = {**common, "network": network, "epochs": args.volume_train_epochs, "precision": args.volume_precision}
        entry["training"][network] = {"a": case("train_volumes_monai", train), "b": case("train_volumes_ours", train)}
    entry["accuracy"] = case("accuracy_volumes_ours", {"epochs": args.volume_accuracy_epochs,
                                                      "target_accuracy": args.target_accuracy})
    return entry


def ceiling_benchmark(args: argparse.Namespace, scratch: Path, case: Runner) -> dict[str, Any]:
    """The ceiling before the loop, the job's loop on a set of --train-count images at the smallest size, the ceiling
    after it, and the loop's phases when its share is under the target (bench/ceiling.py)."""
    size = min(args.sizes)
    data = make_set(
        scratch / "ceiling", size=size, train_count=args.train_count, validation_count=args.validation_count
    )
    steps = {"steps": args.ceiling_steps}
    entry: dict[str, Any] = {"source_size": size, "train_images": data.train_count, "before": case("ceiling", steps)}
    loop = {"train_dir": str(data.train), "val_dir": str(data.validation), "epochs": args.loop_epochs}
    entry["loop"] = case("loop_job", loop)
    entry["after"] = case("ceiling", steps)
    share = report.loop_share(entry)
    if share is not None and not share["met"]:
        entry["phases"] = case("loop_phases", {"train_dir": str(data.train)})
    return entry


def scaling_benchmark(args: argparse.Namespace, scratch: Path, case: Runner, *, serving: bool = True) -> dict[str, Any]:
    """bench/scaling.py's cases: data at 1x, 4x and 16x --train-count (256x256, or the smallest --sizes), each with
    the cache in memory and on disk; decoding at 256, 512 and 2048; with `serving`, the server at 1, 8 and 32
    clients (bench/serving_runtimes.py scaling_serving, a bundle trained on the 1x set)."""
    started, size = time.perf_counter(), min(args.sizes)
    entry: dict[str, Any] = {"base_images": args.train_count, "source_size": size, "data": []}
    for scale in scaling_report.SCALES:
        data = make_set(scratch / f"scaling-{scale}x", size=size, train_count=scale * args.train_count,
                        validation_count=4)
        for cache in ("memory", "disk"):
            row = case("scaling_data", {"train_dir": str(data.train), "cache": cache})
            entry["data"].append({"scale": scale, **row})
        if scale == 1 and serving:
            served = case("scaling_serving", {"train_dir": str(data.train), "val_dir": str(data.validation),
                                              "workers": args.serving_workers})
            entry["serving"] = [{"clients": r["concurrency"], **r} for r in served["rows"]]
        shutil.rmtree(scratch / f"scaling-{scale}x")
    entry["decode"] = case("scaling_decode", {})
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


def serving_size_of(sizes: Sequence[int]) -> tuple[int, str | None]:
    """The source size serving is measured at: SERVING_SIZE when it is among sizes, else the largest, with a note
    saying so (None when SERVING_SIZE is there)."""
    if SERVING_SIZE in sizes:
        return SERVING_SIZE, None
    size = max(sizes)
    return size, f"{SERVING_SIZE} is not among --sizes; measured on a {size}x{size} file (the largest size given)"


def main(args: argparse.Namespace) -> int:
    """Run, write bench.json and bench.md, print the table.

    Returns:
        0 when every target is met, 1 when one is missed (or the loop beats its ceiling), 2 when a measurement failed.
    """
    try:
        results = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return finish(results, args.out)


def finish(results: dict[str, Any], out: Path) -> int:
    """Write bench.json and bench.md to out, print the table and what was missed.

    Returns:
        0 when every target is met; 1 when one is missed, or the loop's share of the ceiling is impossible.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = report.markdown(results)
    (out / "bench.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"written: {out / 'bench.json'}, {out / 'bench.md'}")
    missed = [c for c in results["targets"] if not c["met"]]
    for c in missed:
        print(f"target missed: {c['target']} at {c['size']}: {c['value']:.2f} (required {c['required']})")
    impossible = report.impossible_message(results)
    if impossible:
        print(f"error: {impossible}", file=sys.stderr)
    return 1 if missed or impossible else 0


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(parse_args()))

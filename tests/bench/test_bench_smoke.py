"""Smoke tests of bench/: every benchmark function, the CLI's run, the child runner and the GPU script's CPU fallback,
on a few tiny images for one or two steps, so that bench/ keeps working as training/ changes; serving on a bundle the
real job trains for one epoch at 32x32 and a few requests; the ceiling against the real job's loop (two epochs at
32x32), and the verdict on a share no loop can reach. No timing assertions: the figures of such runs mean nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import __main__ as cli
from bench import cases, ceiling, gpu, public_sample, report, scaling
from bench.child import run_case, run_in_process
from bench.datasets import BenchSet, make_set

pytestmark = pytest.mark.slow
ONE_VARIANT = [{"precision": "fp32", "channels_last": False}]
# The serving case's job, small: 32x32, batches of 4, no precise BN, bootstrap or TorchScript export, one thread.
TINY_JOB = {
    "image_size": "32,32",
    "batch_size": "4",
    "precise_bn": "0",
    "bootstrap_samples": "0",
    "torchscript": "false",
    "threads": "1",
    "workers": "1",
}
TINY_STEP = {"batch_size": 4, "image_size": [32, 32], "steps": 1, "warmup": 1}  # the ceiling's, phases' and scaling's


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """One torch thread for every test here (tests/bench/conftest.py)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BenchSet:
    """8 training and 4 validation images at 64x64, in the aws-samples layout (meta-data.json)."""
    return make_set(tmp_path_factory.mktemp("bench-data"), size=64, train_count=8, validation_count=4)


def test_the_public_sample_reads_the_same_files_as_ours(tiny: BenchSet) -> None:
    files, labels, classes = public_sample.file_list(tiny.train)
    assert len(files) == 8 and all(Path(f).is_file() for f in files)
    assert sorted(classes) == ["abnormal", "normal"] and set(labels) == {0, 1}
    image = public_sample.train_transforms(seed=0)(files[0])
    assert tuple(image.shape) == (1, *public_sample.SPATIAL_SIZE)  # channel-first, as the sample expects


def test_loaders_deliver_every_image(tiny: BenchSet) -> None:
    a = cases.loader_public_sample(train_dir=str(tiny.train), epochs=2, batch_size=4)
    b = cases.loader_ours(train_dir=str(tiny.train), epochs=2, batch_size=4)
    for figures in (a, b):
        assert figures["images"] == 8 and len(figures["epochs"]) == 2 and figures["images_per_second"] > 0
    assert b["prepare_seconds"] > 0 and b["decode"]["files"] == 8


@pytest.mark.parametrize("case", ["train_public_sample", "train_ours"])
def test_training_runs_report_throughput_and_accuracy(tiny: BenchSet, case: str) -> None:
    figures = cases.CASES[case](
        train_dir=str(tiny.train), val_dir=str(tiny.validation), epochs=1, batch_size=4, target_accuracy=0.0
    )
    (row,) = figures["epochs"]
    assert row["images"] in (4, 8) and row["train_seconds"] > 0 and 0.0 <= row["val_accuracy"] <= 1.0
    assert figures["epochs_to_target"] == 1 and figures["seconds_to_target"] is not None  # target 0: epoch 1


def test_a_case_runs_in_a_child_process_with_its_own_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child's torch threads (see one_thread)
    kwargs = {"batch_size": 2, "image_size": [32, 32], "warmup": 1, "steps": 1, "variants": ONE_VARIANT}
    figures = run_case("ceiling", kwargs)
    assert figures["peak_rss_mib"] > 0 and figures["process"]["wall_seconds"] > 0
    assert figures["threads"] == 1  # the child's thread count is the environment's, as the job's is


@pytest.fixture(scope="module")
def fallback(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """bench/gpu.py's CPU fallback at a tiny scale, once for the tests below: (a) and (b), the ceiling before and after
    the real job's loop (2 epochs at 32x32, batch 4, as the ceiling), the phases when the share is under the target,
    and scaling (1x, 4x and 16x of 4 images, memory and disk cache; decoding at 256, 512 and 2048)."""
    scale = {**gpu.CPU_FALLBACK_SCALE, "train_count": 4, "validation_count": 4, "batch_size": 2}
    out = tmp_path_factory.mktemp("gpu-out")
    return {"results": gpu.run(out, device="cpu", scale=scale, runner=_small_batches), "out": out}


def test_the_gpu_script_falls_back_to_the_cpu(fallback: dict[str, Any]) -> None:
    results, out = fallback["results"], fallback["out"]
    saved = json.loads((out / "gpu-bench.json").read_text(encoding="utf-8"))
    assert saved["device"].startswith("cpu") and (out / "gpu-bench.md").is_file()
    assert {c["target"] for c in results["targets"]} >= {"loop / best ceiling", report.IMPOSSIBLE}
    assert all(math.isfinite(c["value"]) for c in results["targets"])


def test_the_ceiling_is_set_against_the_jobs_own_loop(fallback: dict[str, Any]) -> None:
    results = fallback["results"]
    entry = results["ceiling"]
    for when in ("before", "after"):
        variants = entry[when]["variants"]
        assert {(v["precision"], v["channels_last"]) for v in variants} == {
            ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)
        }
        assert all(v["images_per_second"] > 0 and v["spread"] >= 0 and len(v["steps"]) == 1 for v in variants)
    assert len(entry["loop"]["epochs"]) == 2  # the job's two metric lines (its repeat of the best one left out)
    assert entry["loop"]["images_per_second"] == pytest.approx(entry["loop"]["epochs"][1], abs=0.01)
    assert entry["loop"]["flags"]["image_size"] == "32,32"
    share = report.loop_share(entry)
    assert share is not None and share["job_default"] == f"{ceiling.best_precision()} channels_last"
    assert ("phases" in entry) == (not share["met"])  # the breakdown comes with a share under the target
    checks = {c["target"]: c for c in results["targets"]}
    assert checks["loop / best ceiling"]["required"] == report.LOOP_SHARE
    assert checks[report.IMPOSSIBLE]["required"] == pytest.approx(1 + share["spread"], abs=1e-4)
    table = report.markdown(results)
    assert "Ceiling: DenseNet121's training step alone" in table and "Loop: the job's own" in table
    assert "| fp32 | contiguous |" in table and "| bf16 | channels_last |" in table
    assert any(line.startswith(f"| {report.IMPOSSIBLE} |") and "| <= " in line for line in table.splitlines())


def test_a_loop_above_its_ceiling_fails_the_run(fallback: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    results = json.loads(json.dumps(fallback["results"]))
    best = report.best_ceiling(results["ceiling"])
    assert best is not None
    results["ceiling"]["loop"]["images_per_second"] = 2 * best["images_per_second"]  # no loop beats its bare step
    results["targets"] = report.targets(results)
    assert cli.finish(results, tmp_path) == 1
    captured = capsys.readouterr()
    assert "the ceiling is wrong" in captured.err and "200%" in captured.err
    assert "FAILED: above 100 % + the spread" in (tmp_path / "bench.md").read_text(encoding="utf-8")
    assert not {c["target"]: c for c in results["targets"]}[report.IMPOSSIBLE]["met"]
    results["ceiling"]["loop"]["images_per_second"] = 0.95 * best["images_per_second"]  # a loop that can be
    results["targets"] = [c for c in report.targets(results) if "ceiling" in c["target"]]  # (a)/(b) apart
    assert cli.finish(results, tmp_path) == 0
    assert "ceiling is wrong" not in capsys.readouterr().err


def test_scaling_gives_the_cost_per_unit_at_each_size_and_cache(fallback: dict[str, Any]) -> None:
    scaling = fallback["results"]["scaling"]
    rows = {(row["scale"], row["cache"]): row for row in scaling["data"]}
    assert set(rows) == {(s, c) for s in (1, 4, 16) for c in ("memory", "disk")}  # the disk rows spilled
    for (scale, _), row in rows.items():
        assert row["images"] == 4 * scale
        assert min(row[k] for k in ("prepare_ms_per_image", "loader_ms_per_image", "step_ms_per_image")) > 0
    assert [r["size"] for r in scaling["decode"]["sizes"]] == [256, 512, 2048]
    assert all(r["files"] == 4 and r["ns_per_pixel"] > 0 for r in scaling["decode"]["sizes"])
    table = report.markdown(fallback["results"])
    assert "Scaling: cost per unit" in table and "| 16x | 64 | disk |" in table and "| 2048x2048 |" in table
    assert "not measured in this run" in table  # the GPU script's scaling serves nothing: the CLI's does, on the CPU


def test_scaling_refuses_decode_work_beyond_its_bounds() -> None:
    with pytest.raises(ValueError, match="count must be in"):
        scaling.scaling_decode(count=1000)
    with pytest.raises(ValueError, match="pixels"):
        scaling.scaling_decode(sizes=(8192,), count=4)


def test_the_help_states_the_scaling_budget(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    assert "scaling alone takes about 4 min on 2 cores, budget 10 min" in " ".join(capsys.readouterr().out.split())


def test_the_cli_refuses_a_ceiling_of_fewer_than_6_steps(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--ceiling-steps", "5"])
    assert "--ceiling-steps must be >= 6" in capsys.readouterr().err


def test_the_cli_run_writes_every_figure_the_report_needs(tiny: BenchSet, tmp_path: Path) -> None:
    args = cli.parse_args(
        ["--sizes", "64", "--train-count", "8", "--validation-count", "4", "--loader-epochs", "1"]
        + ["--loader-epochs-ours", "1", "--train-epochs", "1", "--settle", "0"]
        + ["--only", "loader", "training", "--out", str(tmp_path)]
    )
    results = cli.run(args, runner=_small_batches)
    checks = {c["target"] for c in results["targets"]}
    assert {"loader (b)/(a) images/s", "training (b)/(a) images/s", "training peak RSS (b)/(a)"} <= checks
    table = report.markdown(results)
    assert "| 64x64 |" in table
    json.dumps(results, allow_nan=True)  # the document is JSON


def test_serving_is_measured_at_512_or_else_the_largest_size_with_a_note() -> None:
    assert cli.serving_size_of([256, 512]) == (512, None)
    size, note = cli.serving_size_of([64, 256])
    assert size == 256 and note is not None and "512" in note and "256x256" in note


def test_the_cli_serving_run_trains_a_bundle_serves_it_and_reports_it(tmp_path: Path) -> None:
    args = cli.parse_args(
        ["--sizes", "64", "--train-count", "8", "--validation-count", "4", "--only", "serving"]
        + ["--serving-requests", "4", "--serving-concurrency", "2", "--serving-workers", "1", "--settle", "0"]
        + ["--out", str(tmp_path)]
    )
    results = cli.run(args, runner=_small_batches)
    serving = results["serving"]
    counts = {"requests": 4, "concurrency": 2, "workers": 1, "errors": 0, "source_size": 64, "train_images": 8}
    assert {key: serving[key] for key in counts} == counts
    assert isinstance(serving["cores"], int) and serving["cores"] >= 1
    for key in ("seconds", "requests_per_second", "p50_ms", "p99_ms", "max_ms"):
        assert isinstance(serving[key], float) and math.isfinite(serving[key]), key
    assert serving["p50_ms"] <= serving["p99_ms"] <= serving["max_ms"]
    assert serving["model"]["image_size"] == [32, 32] and serving["model"]["network"] == "densenet121"
    assert serving["model"]["epochs"] == 1
    assert (serving["file"]["rows"], serving["file"]["columns"]) == (64, 64) and serving["file"]["bytes"] > 0
    assert "512" in serving["note"]  # 512 was not among --sizes
    assert results["targets"] == []  # serving has no target: it never fails the command
    table = report.markdown(results)
    assert "Serving: POST /invocations" in table and "| file | model input | requests/s |" in table
    assert "| 64x64, " in table and "| 32x32 densenet121 |" in table
    json.dumps(results, allow_nan=True)


def test_gpu_script_without_cuda_asks_for_the_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if gpu_available():
        pytest.skip("CUDA is available here")
    assert gpu.main(gpu.parse_args([str(tmp_path)])) == 3
    assert "--cpu-fallback" in capsys.readouterr().err


def _small_batches(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The cases in this process, with batches of 4 (the CLI keeps the sample's 100), a tiny job for serving and the
    loop, and one or two tiny steps for the ceiling, the phases and scaling."""
    extra: dict[str, Any] = {"batch_size": 4}
    if name in ("ceiling", "loop_phases", "scaling_data"):
        extra = TINY_STEP
    elif name == "loop_job":
        extra = {"batch_size": 4, "image_size": [32, 32], "hyperparameters": TINY_JOB}
    elif name == "serving":
        extra = {"hyperparameters": TINY_JOB}
    elif name == "scaling_decode":
        extra = {"count": 4, "image_size": [32, 32]}
    return run_in_process(name, {**kwargs, **extra})


def gpu_available() -> bool:

    return torch.cuda.is_available()

"""Smoke tests of bench/: every benchmark function, the CLI's run, the child runner and the GPU script's CPU fallback,
on a few tiny images for one or two steps, so that bench/ keeps working as training/ changes; serving on a bundle the
real job trains for one epoch at 32x32 and a few requests. No timing assertions: the figures of such runs mean nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import __main__ as cli
from bench import cases, gpu, public_sample, report
from bench.child import run_case, run_in_process
from bench.datasets import BenchSet, make_set

pytestmark = pytest.mark.slow
ONE_VARIANT = [{"precision": "fp32", "channels_last": False, "optimizer": False}]
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


def test_compute_limit_covers_fp32_and_the_best_precision() -> None:
    variants = cases.default_variants("cpu")
    assert {"fp32", cases.best_precision("cpu")} <= {v["precision"] for v in variants}
    assert [v for v in variants if v["optimizer"]] == [variants[-1]]  # the diagnostic comes last
    figures = cases.compute_limit(batch_size=2, steps=1, variants=[variants[-1]])
    assert figures["variants"][0]["images_per_second"] > 0 and len(figures["variants"][0]["steps"]) == 2


def test_a_case_runs_in_a_child_process_with_its_own_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child's torch threads (see one_thread)
    figures = run_case("compute_limit", {"batch_size": 2, "steps": 1, "variants": ONE_VARIANT})
    assert figures["peak_rss_mib"] > 0 and figures["process"]["wall_seconds"] > 0


def test_the_cli_run_writes_every_figure_the_report_needs(tiny: BenchSet, tmp_path: Path) -> None:
    args = cli.parse_args(
        ["--sizes", "64", "--train-count", "8", "--validation-count", "4", "--loader-epochs", "1"]
        + ["--loader-epochs-ours", "1", "--train-epochs", "1", "--limit-steps", "1", "--settle", "0"]
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


def test_the_gpu_script_falls_back_to_the_cpu(tmp_path: Path) -> None:
    scale = {**gpu.CPU_FALLBACK_SCALE, "train_count": 4, "validation_count": 4, "batch_size": 2}
    results = gpu.run(tmp_path, device="cpu", scale=scale, runner=_small_batches)
    saved = json.loads((tmp_path / "gpu-bench.json").read_text(encoding="utf-8"))
    assert saved["device"].startswith("cpu") and (tmp_path / "gpu-bench.md").is_file()
    assert {c["target"] for c in results["targets"]} >= {"training (b)/best limit"}
    assert all(math.isfinite(c["value"]) for c in results["targets"])


def test_gpu_script_without_cuda_asks_for_the_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if gpu_available():
        pytest.skip("CUDA is available here")
    assert gpu.main(gpu.parse_args([str(tmp_path)])) == 3
    assert "--cpu-fallback" in capsys.readouterr().err


def _small_batches(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The cases in this process, with batches of 4 (the CLI keeps the sample's 100), a one-variant limit and a tiny
    job for serving."""
    extra: dict[str, Any] = {"batch_size": 4}
    if name == "compute_limit":
        extra = {"batch_size": 2, "steps": 1, "variants": ONE_VARIANT}
    elif name == "serving":
        extra = {"hyperparameters": TINY_JOB}
    return run_in_process(name, {**kwargs, **extra})


def gpu_available() -> bool:

    return torch.cuda.is_available()

"""bench/serving_runtimes.py on tiny data: the session's tiny trained bundle (tests/conftest.py `tiny_job`), a few
64x64 files, every runtime in process, and one server forced to ONNX Runtime at 1 and 2 clients. No timing
assertions (the figures of such runs mean nothing); the probability differences and labels are asserted: they are
what lets a runtime serve.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench import serving_runtimes
from bench.cases import CASES
from bench.datasets import make_set
from tests.conftest import TinyJob
from training.serving import runtimes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def figures(tiny_job: TinyJob, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Any]:
    data = make_set(tmp_path_factory.mktemp("runtimes-data"), size=64, train_count=4, validation_count=6)
    return CASES["serving_runtimes"](  # type: ignore[no-any-return]
        train_dir=str(data.train), val_dir=str(data.validation), bundle_dir=str(tiny_job.model_dir), single_runs=3,
        repeats=3, requests_per_client=2, workers=1, concurrencies=(1, 2), served=("onnxruntime",))


def test_the_shares_of_one_request_cover_its_steps(figures: dict[str, Any]) -> None:
    shares = figures["shares"]
    assert list(shares["ms"]) == ["header", "decode", "preprocessing", "forward", "encoding"]
    assert all(v > 0 for v in shares["ms"].values()) and sum(shares["share"].values()) == pytest.approx(1, abs=1e-3)
    assert shares["total_ms"] == pytest.approx(sum(shares["ms"].values()), abs=0.01)


def test_every_runtime_answers_the_same_labels_within_the_tolerance(figures: dict[str, Any]) -> None:
    rows = {row["runtime"]: row for row in figures["runtimes"]}
    assert list(rows) == ["pytorch", "onnxruntime", "openvino"]
    assert rows["pytorch"]["max_probability_difference"] == 0.0
    for row in rows.values():
        assert row["images"] == 6 and row["labels_differing"] == 0
        assert row["max_probability_difference"] <= runtimes.TOLERANCE
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["images_per_second"] > 0
    assert figures["model"] == {"network": "resnet18", "image_size": [32, 32]}


def test_the_server_runs_forced_at_each_load_without_errors(figures: dict[str, Any]) -> None:
    rows = figures["server"]["onnxruntime"]
    assert [(r["concurrency"], r["requests"], r["errors"], r["runtime"], r["workers"]) for r in rows] == [
        (1, 2, 0, "onnxruntime", 1), (2, 4, 0, "onnxruntime", 1)]
    for row in rows:
        assert row["p50_ms"] <= row["p99_ms"] and math.isfinite(row["core_ms_per_request"])


def test_the_report_has_a_row_per_runtime_and_per_server_run(figures: dict[str, Any]) -> None:
    table = serving_runtimes.markdown(figures)
    assert "### Serving runtimes (resnet18 at 32x32, one 64x64 file of " in table and "forward" in table
    assert figures["file"]["rows"] == figures["file"]["columns"] == 64 and "name" not in figures["file"]
    for name in ("pytorch", "onnxruntime", "openvino"):
        assert f"\n| {name} | " in table
    assert "| onnxruntime | 1 | " in table and "| onnxruntime | 2 | " in table


def test_scaling_refuses_an_empty_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrencies and requests_per_client must be >= 1"):
        serving_runtimes.serving_scaling(tmp_path, tmp_path / "x.dcm", concurrencies=())


def test_the_scaling_case_serves_one_bundle_to_each_number_of_clients(tiny_job: TinyJob, tmp_path: Path) -> None:
    data = make_set(tmp_path, size=64, train_count=4, validation_count=4)
    rows = CASES["scaling_serving"](train_dir=str(data.train), val_dir=str(data.validation),
                                    bundle_dir=str(tiny_job.model_dir), requests_per_client=1, workers=1,
                                    concurrencies=(1, 3))["rows"]
    assert [(r["concurrency"], r["requests"], r["errors"]) for r in rows] == [(1, 1, 0), (3, 3, 0)]
    assert all(r["requests_per_second"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)

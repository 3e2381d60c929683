"""Two processes under torchrun on the CPU (gloo), as SageMaker's Torchrun distribution starts the job, against one.

Tolerance: the two runs are not the same computation. Each rank shuffles and augments its own half of the data, so
the global batches are made up differently, and BatchNorm normalises over each rank's half-batch. On the synthetic
set both must still learn the task and agree on it: the best epoch's validation accuracy and the test accuracy
within 0.05 (two images of 40), the AUCs within 0.02, each run at least 0.9 accurate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.local_demo import make_demo_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "training" / "train_entry.py"  # the file SageMaker's drivers run
SETTINGS = [
    "--network", "resnet18", "--image_size", "32,32", "--epochs", "4", "--batch_size", "16", "--threads", "1",
    "--precision", "fp32", "--workers", "1", "--patience", "0", "--bootstrap_samples", "100",
]  # fmt: skip
TRAIN_IMAGES = 160


def _run(command: list[str], workdir: Path, channels: dict[str, Path]) -> tuple[str, dict[str, Any]]:
    arguments = [f"--train={channels['train']}", f"--test={channels['test']}", f"--model-dir={workdir / 'model'}",
                 f"--output-dir={workdir / 'output'}", *SETTINGS]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, str(ENTRY), *arguments], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    return output, json.loads((workdir / "output" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict[str, Any], Path]]:
    channels = make_demo_data(tmp_path_factory.mktemp("dist-data"), train_images=TRAIN_IMAGES + 40, test_images=40)
    results = {}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    for name, command in {
        "one": [sys.executable],
        "two": [torchrun, "--standalone", "--nnodes=1", "--nproc-per-node=2"],
    }.items():
        workdir = tmp_path_factory.mktemp(name)
        output, metrics = _run(command, workdir, channels)
        results[name] = (output, metrics, workdir)
    return results


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_each_rank_prepares_and_trains_on_half_of_the_data(runs: dict) -> None:
    _, metrics, _ = runs["two"]
    spread = metrics["distributed"]
    assert spread["world_size"] == 2 and spread["backend"] == "gloo"
    train, validation = spread["images_per_rank"]["train"], spread["images_per_rank"]["validation"]
    assert sum(train) == TRAIN_IMAGES and max(train) - min(train) <= 1
    assert max(validation) - min(validation) <= 1
    assert "distributed" not in runs["one"][1]


def test_only_rank_0_writes_and_reports(runs: dict) -> None:
    output_one, _, one = runs["one"]
    output_two, _, two = runs["two"]
    for name in ("model", "output"):
        assert _files(two / name) == _files(one / name), name  # one set of artifacts, nothing from rank 1
    epoch_lines = [line for line in output_two.splitlines() if line.startswith("epoch=")]
    assert [line.split()[0] for line in epoch_lines] == ["epoch=1", "epoch=2", "epoch=3", "epoch=4"]
    assert len([line for line in output_two.splitlines() if line.startswith("test_accuracy=")]) == 1
    assert "on rank 0 of 2 (batches of 8 a rank)" in output_two


def test_two_processes_agree_with_one_within_the_stated_tolerance(runs: dict) -> None:
    one, two = runs["one"][1], runs["two"][1]
    for metrics in (one, two):
        assert metrics["validation"]["metrics"]["accuracy"]["value"] >= 0.9
        assert metrics["test"]["metrics"]["accuracy"]["value"] >= 0.9
    for split in ("validation", "test"):
        first, second = one[split]["metrics"], two[split]["metrics"]
        images_apart = abs(second["accuracy"]["value"] - first["accuracy"]["value"]) * one[split]["n"]
        assert round(images_apart) <= 2, split  # 0.05 of 40 images
        assert second["auc"]["value"] == pytest.approx(first["auc"]["value"], abs=0.02), split
    assert one["test"]["n"] == two["test"]["n"]  # the gathered test set is the whole test set
    print("\n1 process:  " + json.dumps({s: {k: v["value"] for k, v in one[s]["metrics"].items()}
                                           for s in ("validation", "test")}))
    print("2 processes: " + json.dumps({s: {k: v["value"] for k, v in two[s]["metrics"].items()}
                                           for s in ("validation", "test")}))

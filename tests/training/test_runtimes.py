"""training/serving/runtimes.py on a real small bundle (tests/conftest.py `tiny_job`: the real job, ResNet18 at
32x32): ONNX Runtime's self-check passes and it serves the bundle's own labels; a runtime whose answers differ falls
back to PyTorch with one log line; DICOM_SERVING_RUNTIME=pytorch forces PyTorch in model_fn; 3-D bundles stay on
PyTorch; the graph cache is reused and refused when others may write to it; a zip request is one forward pass a batch.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TinyJob
from tests.training.volume_bundles import write_volume_bundle
from training import inference
from training.job.bundle import load_network, read_bundle
from training.serving import runtimes


@pytest.fixture(scope="module")
def bundle(tiny_job: TinyJob) -> dict[str, Any]:
    spec = read_bundle(tiny_job.model_dir)
    return {"spec": spec, "network": load_network(spec), "shape": (1, *spec.image_size),
            "digest": runtimes.file_digest(spec.weights)}


def test_auto_times_the_runtimes_that_pass_and_picks_the_fastest(bundle: dict[str, Any]) -> None:
    name, logits, report = runtimes.choose(bundle["network"], bundle["shape"], setting="auto",
                                           weights_digest=bundle["digest"])
    assert set(report["one_file_ms"]) == {"pytorch", "onnxruntime"} and report["dropped"] == {}
    assert name == min(report["one_file_ms"], key=report["one_file_ms"].get) == report["runtime"]
    assert (logits is None) == (name == "pytorch")
    assert 0 <= report["difference"]["onnxruntime"] <= runtimes.TOLERANCE


class Shifted:
    """ONNX Runtime's real answers for the bundle made wrong: logits shifted (probabilities off) or swapped (labels)."""

    def __init__(self, real: runtimes.Logits, *, swap: bool) -> None:
        self.real, self.swap = real, swap

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.real(images)
        return logits.flip(1) if self.swap else logits + torch.tensor([0.05, 0.0])


@pytest.mark.parametrize(("swap", "reason"), [(False, "probabilities differ"), (True, "labels differ")])
def test_a_mismatch_falls_back_to_pytorch_with_one_log_line(bundle: dict[str, Any], caplog: pytest.LogCaptureFixture,
                                                            swap: bool, reason: str) -> None:
    def broken(name: str, *args: Any, **kwargs: Any) -> runtimes.Logits:
        return Shifted(runtimes.candidate(name, *args, **kwargs), swap=swap)

    with caplog.at_level(logging.INFO, logger="training.serving.runtimes"):
        name, logits, report = runtimes.choose(bundle["network"], bundle["shape"], setting="onnxruntime",
                                               weights_digest=bundle["digest"], make=broken)
    assert (name, logits) == ("pytorch", None)
    assert reason in report["dropped"]["onnxruntime"]
    (line,) = [r for r in caplog.records if r.name == "training.serving.runtimes" and "serving runtime" in r.message]
    assert line.levelno == logging.WARNING and "onnxruntime fell back to PyTorch" in line.getMessage()


def test_the_setting_forces_pytorch_and_a_wrong_one_is_refused_naming_the_variable(
    tiny_job: TinyJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runtimes.RUNTIME_VARIABLE, "PyTorch")
    model = inference.model_fn(tiny_job.model_dir)
    assert (model.runtime, model.runtime_logits) == ("pytorch", None)
    monkeypatch.setenv(runtimes.RUNTIME_VARIABLE, "tensorrt")
    with pytest.raises(ValueError, match=r"DICOM_SERVING_RUNTIME='tensorrt' .*auto, pytorch, onnxruntime"):
        inference.model_fn(tiny_job.model_dir)
    assert runtimes.check_setting(None) == runtimes.check_setting("") == "auto"  # the server's default


def test_a_3d_bundle_stays_on_pytorch(tmp_path: Path) -> None:
    bundle, _ = write_volume_bundle(tmp_path / "model")
    assert inference.Predictor.from_bundle(bundle, runtime="onnxruntime").runtime == "pytorch"


def test_the_graph_is_exported_once_and_a_folder_others_may_write_is_refused(bundle: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    """The server's cache (the temp dir's, as from_bundle uses it): a second start finds the graph and keeps it."""
    first = runtimes.cached_graph(bundle["network"], bundle["shape"], weights_digest=bundle["digest"])
    made = first.stat().st_mtime_ns
    again = runtimes.cached_graph(bundle["network"], bundle["shape"], weights_digest=bundle["digest"])
    assert again == first and again.stat().st_mtime_ns == made
    assert oct(first.parent.stat().st_mode & 0o777) == "0o700"
    other = runtimes.graph_name(bundle["network"], bundle["shape"], weights_digest="0" * 64)
    assert other != first.name  # other weights, another graph
    assert runtimes.graph_name(bundle["network"], (1, 64, 64), weights_digest=bundle["digest"]) != first.name
    os.chmod(runtimes.cache_dir(tmp_path), 0o777)
    with pytest.raises(PermissionError, match="not this user's own folder.*DICOM_SERVING_RUNTIME=pytorch"):
        runtimes.cache_dir(tmp_path)


def test_onnxruntime_passes_its_self_check_and_one_zip_request_makes_one_forward_pass_per_batch(
    tiny_job: TinyJob,
) -> None:
    """The bundle under ONNX Runtime answers PyTorch's labels; 8 files in one zip, batch size 3: predict_fn calls the
    runtime 3 times (3, 3, 2 images), not once a file."""
    eager = inference.Predictor.from_bundle(tiny_job.model_dir)
    model = inference.Predictor.from_bundle(tiny_job.model_dir, runtime="onnxruntime")
    assert (eager.runtime, model.runtime) == ("pytorch", "onnxruntime") and model.network is not None  # for gradients
    model.batch_size = 3
    real, batches = model.logits, []
    assert real is not None

    def counted(images: torch.Tensor) -> torch.Tensor:
        batches.append(len(images))
        return real(images)

    model.logits = counted
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as archive:
        for number, file in enumerate(tiny_job.test_files):
            archive.write(file, f"file-{number}.dcm")
    results = inference.predict_fn(inference.input_fn(body.getvalue(), inference.ZIP), model)
    assert batches == [3, 3, 2] and [r["file"] for r in results] == [f"file-{n}.dcm" for n in range(8)]
    expected = eager.predict(tiny_job.test_files)
    assert [r["label"] for r in results] == [p.label for p in expected]
    for got, want in zip(results, expected, strict=True):
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)

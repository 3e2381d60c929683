"""training/job/bundle_writer.py, training/job/bundle.py and training/inference.py: the trained model as a MONAI
bundle that loads offline.

The bundle is the one the session's SageMaker-driver run wrote (conftest.py, `job_bundle`). Every way of loading it
must predict the same classes for the same files: MONAI's ConfigParser (inference.json), `monai.bundle.load`,
MONAI's bundle runner, TorchScript, and a fresh MONAI network with model.pt (what an older PyTorch can do).
"""

from __future__ import annotations

import csv
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, load, verify_metadata
from monai.networks.nets import DenseNet121

from training.dataset.dicom import load_image
from training.inference import Predictor, find_dicom_files
from training.job import bundle as bundle_module

SCHEMA = Path(__file__).parent / "schemas" / "meta_schema_20240725.json"  # a stored copy: validation stays offline

pytestmark = pytest.mark.slow


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any attempt to open a network connection."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture(scope="module")
def job_reference(job_bundle: Path, job_test_files: list[str]) -> tuple[list[str], np.ndarray]:
    """The predicted classes of the test files through the notebook's path (Predictor over inference.json)."""
    predictions = Predictor.from_bundle(job_bundle, device="cpu").predict(job_test_files)
    probabilities = np.array([[p.probabilities[c] for c in ("abnormal", "normal")] for p in predictions])
    return [p.label for p in predictions], probabilities


def _images(files: list[str], size: int = 96) -> torch.Tensor:
    return torch.stack([torch.from_numpy(load_image(f, image_size=(size, size))) for f in files])


def _calibrated(bundle: Path, logits: torch.Tensor) -> np.ndarray:
    """softmax(logits / the bundle's temperature): what every inference path answers."""
    temperature = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))["temperature"]
    return torch.softmax(logits.float() / temperature, 1).numpy()


def _labels(logits: torch.Tensor, threshold: float = 0.5) -> list[str]:
    p_abnormal = torch.softmax(logits.float(), dim=1)[:, 0]
    return ["abnormal" if p >= threshold else "normal" for p in p_abnormal.tolist()]


def test_layout_follows_the_bundle_specification(job_bundle: Path) -> None:
    for relative in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (job_bundle / relative).is_file(), relative


def test_metadata_validates_against_the_schema_offline(job_bundle: Path, tmp_path: Path, offline: None) -> None:
    meta = json.loads((job_bundle / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["schema"].endswith(SCHEMA.name)
    schema_copy = tmp_path / SCHEMA.name
    schema_copy.write_bytes(SCHEMA.read_bytes())
    verify_metadata(meta_file=str(job_bundle / "configs" / "metadata.json"), filepath=str(schema_copy))  # MONAI's
    assert meta["classes"] == ["abnormal", "normal"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [96, 96]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "abnormal", "1": "normal"}
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert "pydicom" in meta["required_packages_version"]
    assert set(meta["eval_metrics"]) == {"accuracy", "auc", "sensitivity", "specificity"}


def test_model_pt_is_a_plain_state_dict(job_bundle: Path) -> None:
    state = torch.load(job_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}


def test_fresh_monai_network_with_the_state_dict_predicts_the_same(
    job_bundle: Path, job_test_files: list[str], job_reference: tuple[list[str], np.ndarray]
) -> None:
    network = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)  # no TorchScript, no bundle code
    network.load_state_dict(torch.load(job_bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    with torch.inference_mode():
        logits = network.eval()(_images(job_test_files))
    assert _labels(logits) == job_reference[0]
    assert np.allclose(_calibrated(job_bundle, logits), job_reference[1], atol=1e-4)


def test_torchscript_predicts_the_same_and_carries_the_metadata(
    job_bundle: Path, job_test_files: list[str], job_reference: tuple[list[str], np.ndarray]
) -> None:
    extra = {"metadata.json": "", "inference.json": ""}
    module = torch.jit.load(str(job_bundle / "models" / "model.ts"), map_location="cpu", _extra_files=extra)
    with torch.inference_mode():
        logits = module(_images(job_test_files))
    assert _labels(logits) == job_reference[0]
    assert np.allclose(_calibrated(job_bundle, logits), job_reference[1], atol=1e-4)
    assert json.loads(extra["metadata.json"])["classes"] == ["abnormal", "normal"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "monai.networks.nets.DenseNet121"


def test_monai_bundle_load_offline(
    job_bundle: Path, job_test_files: list[str], job_reference: tuple[list[str], np.ndarray], offline: None
) -> None:
    network = load(name=job_bundle.name, bundle_dir=job_bundle.parent, workflow_type="inference", device="cpu")
    with torch.inference_mode():
        logits = network.eval()(_images(job_test_files))  # type: ignore[union-attr,operator]
    assert _labels(logits) == job_reference[0]


def test_monai_bundle_workflow_runs_inference_offline(
    job_bundle: Path,
    job_sagemaker_run: object,
    job_test_files: list[str],
    job_reference: tuple[list[str], np.ndarray],
    tmp_path: Path,
    offline: None,
) -> None:
    folder = tmp_path / "dicom"
    folder.mkdir()
    for index, file in enumerate(job_test_files):
        (folder / f"{index:03d}").write_bytes(Path(file).read_bytes())  # no suffix: found by the DICM marker
    workflow = ConfigWorkflow(
        config_file=str(job_bundle / "configs" / "inference.json"),
        meta_file=str(job_bundle / "configs" / "metadata.json"),
        workflow_type="inference",
        logging_file=False,
        bundle_root=str(job_bundle),
        dataset_dir=str(folder),
        output_file=str(tmp_path / "predictions.csv"),
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])  # the inference workflow's required properties are there
    workflow.run()
    workflow.finalize()
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["label"] for row in rows] == job_reference[0]
    assert list(rows[0]) == ["file", "label", "p_abnormal", "p_normal"]


def test_predictor_reads_bytes_like_paths(job_bundle: Path, job_test_files: list[str]) -> None:
    predictor = Predictor.from_bundle(job_bundle, device="cpu")
    from_bytes = predictor.predict([Path(f).read_bytes() for f in job_test_files[:4]])
    from_paths = predictor.predict(job_test_files[:4])
    assert [p.label for p in from_bytes] == [p.label for p in from_paths]
    assert from_bytes[0].file == "<bytes #0>" and from_paths[0].file == job_test_files[0]


def test_load_network_helper(
    job_bundle: Path, job_test_files: list[str], job_reference: tuple[list[str], np.ndarray]
) -> None:
    network = bundle_module.load_network(job_bundle)
    with torch.inference_mode():
        assert _labels(network(_images(job_test_files))) == job_reference[0]


def test_find_dicom_files_uses_the_marker(tmp_path: Path, job_test_files: list[str]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "scan").write_bytes(Path(job_test_files[0]).read_bytes())
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert find_dicom_files(tmp_path) == [str(tmp_path / "a" / "scan")]
    with pytest.raises(ValueError, match="not a directory"):
        find_dicom_files(tmp_path / "missing")

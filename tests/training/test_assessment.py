"""Issue 22 items 2-5 through the real job: calibrated scores, an operating point chosen for a target sensitivity,
test metrics per subgroup, and the model card, on a synthetic set whose structure the test made.

The set: the demo's synthetic DICOM (a lesion or none), whose test channel the test splits by patient between two
manufacturers, ACME and HARDCO, and makes HARDCO's cases harder: 40% of its labels are flipped (no model can get
them right), so HARDCO must be the subgroup reported weaker. The job runs once (module fixture, about 10 s) with
`--target_sensitivity 0.9`; the calibration's own claim (the ECE falls on a set where the raw model is
over-confident) is checked on outputs the test makes over-confident, through the same `assess` the job calls.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch

from tests.conftest import THREADS
from training.inference import Predictor
from training.job.assessment import assess
from training.job.config import TrainConfig
from training.job.loop import Evaluation
from training.job.train import main as train_main
from training.local_demo import demo_arguments, make_demo_data

TARGET = 0.9


@pytest.fixture(scope="module")
def structured_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real job on the two-manufacturer set; its metrics.json, bundle and the flipped test files."""
    work = tmp_path_factory.mktemp("assessment")
    channels = make_demo_data(work / "data", train_images=160, test_images=80, size=64)
    flipped = _two_manufacturers(channels["test"])
    overrides = ["--image_size", "32,32", "--epochs", "3", "--network", "resnet18", "--bootstrap_samples", "300",
                 "--target_sensitivity", str(TARGET), "--threads", str(THREADS), "--torchscript", "false"]
    assert train_main(demo_arguments(work, channels, overrides)) == 0
    metrics = json.loads((work / "output" / "metrics.json").read_text(encoding="utf-8"))
    return {"work": work, "metrics": metrics, "model": work / "model", "flipped": flipped, "test": channels["test"]}


def _two_manufacturers(test: Path) -> set[str]:
    """Give each test patient's files one of two manufacturers (alternating by patient) and flip 40% of HARDCO's
    labels in labels.csv; returns the flipped files."""
    with open(test / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    patients = sorted({str(pydicom.dcmread(test / r["file"], stop_before_pixels=True).PatientID) for r in rows})
    hard = set(patients[1::2])
    rng = np.random.default_rng(5)
    flipped = set()
    for row in rows:
        path = test / row["file"]
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "HARDCO" if str(ds.PatientID) in hard else "ACME"
        ds.save_as(path, enforce_file_format=True)
        if ds.Manufacturer == "HARDCO" and rng.random() < 0.4:
            row["label"] = "normal" if row["label"] == "abnormal" else "abnormal"
            flipped.add(row["file"])
    with open(test / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return flipped


def test_the_threshold_reaches_the_target_sensitivity_on_validation_and_the_test_figures_are_reported(
    structured_run: dict[str, Any],
) -> None:
    metrics = structured_run["metrics"]
    point = metrics["operating_point"]
    assert point["method"] == "target_sensitivity" and point["target"] == TARGET and point["chosen_on"] == "validation"
    assert point["validation_sensitivity"] >= TARGET
    assert metrics["validation"]["metrics"]["sensitivity"]["value"] >= TARGET  # the report agrees, at that threshold
    assert metrics["test"]["threshold"] == point["threshold"]
    for name in ("sensitivity", "specificity"):
        entry = metrics["test"]["metrics"][name]
        low, high = entry["ci95"]
        assert low <= entry["value"] <= high
    inference = json.loads((structured_run["model"] / "configs" / "inference.json").read_text(encoding="utf-8"))
    meta = json.loads((structured_run["model"] / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert inference["threshold"] == point["threshold"] and meta["operating_point"] == point
    assert (structured_run["work"] / "output" / "roc_pr.png").read_bytes().startswith(b"\x89PNG")


def test_the_manufacturer_made_harder_is_the_subgroup_reported_weaker(structured_run: dict[str, Any]) -> None:
    report = structured_run["metrics"]["subgroups"]
    assert report["split"] == "test"
    groups = {g["value"]: g for g in report["attributes"]["Manufacturer"]}
    assert set(groups) == {"ACME", "HARDCO"}
    assert sum(g["n"] for g in groups.values()) == structured_run["metrics"]["test"]["n"]
    acme, hard = (groups[name]["metrics"]["accuracy"] for name in ("ACME", "HARDCO"))
    assert hard["value"] < acme["value"], (acme, hard)
    assert hard["ci95"][0] <= hard["value"] <= hard["ci95"][1]
    modalities = {g["value"] for g in report["attributes"]["Modality"]}
    assert modalities <= {"CT", "CR", "other"} and modalities  # the synthetic set's two modalities


def test_the_model_card_holds_the_data_metrics_calibration_operating_point_and_subgroups_without_identifiers(
    structured_run: dict[str, Any],
) -> None:
    card = (structured_run["model"] / "docs" / "README.md").read_text(encoding="utf-8")
    for heading in ("## Intended use and limits", "## Data", "## Metrics (test set", "## Operating point",
                    "## Calibration", "## Subgroups (test set)", "## Use"):
        assert heading in card
    assert "HARDCO" in card and "target sensitivity 0.9" in card and "sha256" in card
    threshold = structured_run["metrics"]["operating_point"]["threshold"]
    assert f"{threshold:.4f}" in card
    ids = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in structured_run["test"].rglob("*.dcm")}
    assert ids and not any(identifier in card for identifier in ids)  # SYN-0xxx: no PatientID in the card


def test_the_bundle_applies_the_fitted_temperature_on_every_path(structured_run: dict[str, Any]) -> None:
    metrics = structured_run["metrics"]
    temperature = metrics["calibration"]["temperature"]
    predictor = Predictor.from_bundle(structured_run["model"], device="cpu")
    assert predictor.temperature == temperature
    files = sorted(structured_run["test"].rglob("*.dcm"))[:4]
    images = np.stack([np.asarray(predictor.preprocessing(str(f))) for f in files])
    logits = predictor.logits(torch.from_numpy(images)).float()
    expected = torch.softmax(logits / temperature, dim=1).numpy()
    assert np.allclose(predictor.probabilities(torch.from_numpy(images)), expected, atol=1e-6)
    calibration = metrics["calibration"]
    assert calibration["measured_on"] == "test" and {"before", "after"} <= set(calibration)
    assert (structured_run["work"] / "output" / "reliability.png").read_bytes().startswith(b"\x89PNG")


def test_temperature_scaling_lowers_the_test_ece_of_an_over_confident_model() -> None:
    """Outputs of a calibrated model (logits whose softmax is the true probability) made over-confident by x4: the
    fitted temperature comes out near 4 and the test ECE falls."""
    rng = np.random.default_rng(0)

    def outputs(n: int) -> Evaluation:
        true_logits = rng.normal(0.0, 1.5, size=(n, 2))
        p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
        labels = (rng.random(n) < p[:, 1]).astype(np.int64)
        logits = 4.0 * true_logits
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return Evaluation(0.0, probs, labels, logits)

    judged = assess(TrainConfig(bootstrap_samples=50), ["normal", "abnormal"], outputs(2000), outputs(2000))
    before, after = judged.calibration["before"]["ece"], judged.calibration["after"]["ece"]
    assert 3.0 < judged.temperature < 5.0
    assert after < before / 2, (before, after)
    assert judged.calibration["after"]["brier"] < judged.calibration["before"]["brier"]

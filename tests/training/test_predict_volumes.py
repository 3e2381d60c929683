"""Inference per series with a 3-D bundle (issue 21 item 5): `python -m training.predict` and the Predictor on real
series nobody here wrote (pydicom's dicomdirtests: CT5N is the one whole volume, the others are bad for their own
reasons), and MONAI's bundle runner following the bundle's mode. The bundle is untrained
(tests/training/volume_bundles.py): what is held is one answer per series, equal to the network on read_volume's
output, and bad series reported."""

from __future__ import annotations

import csv
import json
import re
import socket
from pathlib import Path

import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.training.volume_bundles import CLASSES, SIZE, write_volume_bundle
from training import predict
from training.dataset.series import assemble
from training.dataset.volume import read_volume
from training.inference import Predictor, find_dicom_files
from training.job.bundle import load_network, read_bundle

DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_volume_bundle(tmp_path_factory.mktemp("volume") / "model")[0]


def _uids(folder: Path) -> set[str]:
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in find_dicom_files(folder)]
    return {str(h.SeriesInstanceUID) for h in headers if "SeriesInstanceUID" in h}


def test_predict_answers_once_per_series_and_reports_the_bad_ones(bundle: Path, capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    assert predict.main([str(bundle), str(DICOMDIR_TESTS)]) == 0
    out, err = capsys.readouterr()
    answers = json.loads(out)
    (answer,) = answers["predictions"]  # CT5N: the one whole volume among pydicom's series
    assert answer["location"].endswith("98892001/CT5N") and answer["slices"] == 5
    assert answer["series"].startswith("series ")
    assert {answer["SeriesInstanceUID"]} == _uids(CT5N)  # in the answer body
    assert answer["label"] in CLASSES and sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    reasons = " ".join(entry["reason"] for entry in answers["bad"])
    assert "a slice is missing" in reasons and "a localizer series?" in reasons
    every_uid = _uids(DICOMDIR_TESTS)
    reported = json.dumps(answers["bad"]) + err
    assert not [uid for uid in every_uid if uid in reported]  # bad series are named by position and location
    # The same as the network on the one preprocessing (read_volume at the bundle's size and window).
    (series,) = assemble(sorted(str(f) for f in CT5N.iterdir())).series
    volume = torch.from_numpy(read_volume(series, size=SIZE, window=(40.0, 400.0)).array).float() / 255
    with torch.inference_mode():
        temperature = read_bundle(bundle).temperature  # calibration: every inference path divides by it
        expected = torch.softmax(load_network(bundle)(volume[None, None]) / temperature, dim=1)[0]
    assert [answer["probabilities"][c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)


def test_predict_exits_2_when_no_series_can_be_predicted(bundle: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "ct"
    broken.mkdir()
    for file in sorted(CT5N.iterdir())[:-1]:  # a CT5N with its last slice's pixel data cut
        (broken / file.name).write_bytes(file.read_bytes())
    last = sorted(CT5N.iterdir())[-1].read_bytes()
    (broken / "last").write_bytes(last[: len(last) - 200])
    assert predict.main([str(bundle), str(broken)]) == 2
    out, err = capsys.readouterr()
    (entry,) = json.loads(out)["bad"]
    assert entry["series"] == "series 1"
    assert re.search(r"slice \d of 5: its pixel data cannot be decoded", entry["reason"])
    assert "no series could be predicted" in err and not [u for u in _uids(CT5N) if u in out + err]


def test_predict_volumes_and_predict_series_agree(bundle: Path) -> None:
    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert predictor.spatial_dims == 3
    (series,) = assemble(sorted(str(f) for f in CT5N.iterdir())).series
    predictions, bad = predictor.predict_volumes(sorted(CT5N.iterdir()), root=CT5N.parent)
    assert bad == [] and predictions[0].location == "CT5N"
    assert predictions[0].probabilities == pytest.approx(predictor.predict_series(series).probabilities, abs=1e-6)
    assert predictions[0].series_instance_uid not in repr(predictions[0])


def test_monai_bundle_runner_follows_the_mode_offline(bundle: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network access attempted"))
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"),
                              meta_file=str(bundle / "configs" / "metadata.json"), workflow_type="inference",
                              logging_file=False, bundle_root=str(bundle), dataset_dir=str(CT5N.parent),
                              output_file=str(tmp_path / "predictions.csv"))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(row["location"], row["slices"]) for row in rows] == [(str(CT5N), "5")]
    assert list(rows[0]) == ["series", "location", "slices", "label", "p_abnormal", "p_normal"]


def test_a_3d_predictor_refuses_files_one_by_one_and_says_what_to_call(bundle: Path) -> None:
    predictor = Predictor.from_bundle(bundle, device="cpu")
    with pytest.raises(ValueError, match=r"classifies series.*predict_volumes"):
        predictor.predict(sorted(CT5N.iterdir()))

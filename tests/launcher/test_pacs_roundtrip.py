"""The PACS round trip end to end (issue 20): a labelled pull trains with the real job, and its predictions pushed back
are found in the original studies (launcher/pacs/roundtrip.py, labels.py; the transports' own tests are
test_pacs_pull.py, test_pacs_dimse.py and test_pacs_push.py).

A real Orthanc (demo/orthanc.py) holds the synthetic set as `make demo` seeds it (demo/pacs.py: one study
per image, labels CSV by AccessionNumber), with a patient's name, ID, birth date and accession numbers written in by
the test. The train channel is pulled over DICOMweb with its CSV by AccessionNumber; the test channel over DIMSE
(C-GET) with a CSV by StudyInstanceUID; `python -m training.check` accepts both as they are; the real job trains on
them; `training.predict`'s JSON for the test channel goes back over STOW-RS and is read back from each original
study with highdicom. Bad labels CSVs stop before anything is pulled, naming rows."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from demo.orthanc import Orthanc, orthanc_missing, register_modality, start_orthanc
from demo.pacs import seed_synthetic
from launcher.pacs.__main__ import main as pacs_main
from launcher.pacs.deidentify import read_link
from launcher.pacs.dimse import DimseAddress
from launcher.pacs.labels import LabelsError
from launcher.pacs.roundtrip import Pulled, pull, push
from training import check
from training.job import train
from training.predict import predict_json

KEY = bytes(range(1, 33))
NAME, MRN, BIRTH = "Garibaldi^Philomena", "MRN-4242424", "19580214"


def _identify(dataset: pydicom.Dataset, number: int) -> None:
    """What a hospital's file carries: the patient's name and ID (one per synthetic patient), birth date, accession."""
    patient = str(dataset.PatientID).removeprefix("SYN-")
    dataset.PatientName, dataset.PatientID = f"{NAME}{patient}", f"{MRN}{patient}"
    dataset.PatientBirthDate, dataset.AccessionNumber = BIRTH, f"ACC{number:07d}"


@dataclass
class Pacs:
    server: Orthanc
    csvs: dict[str, Path]  # channel -> labels CSV by AccessionNumber (demo/pacs.py)
    studies: dict[str, str]  # AccessionNumber -> original StudyInstanceUID


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    missing = orthanc_missing()
    if missing:
        pytest.fail(missing)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        register_modality(server, "pull", "MONAI-PULL", 1)  # a real PACS lets only known callers retrieve (C-GET)
        csvs = seed_synthetic(server.dicomweb, tmp_path_factory.mktemp("seed"), train_images=24, test_images=8,
                              rewrite=_identify)
        found = DICOMwebClient(server.dicomweb).search_for_studies(fields=["AccessionNumber"])
        studies = {item["00080050"]["Value"][0]: item["0020000D"]["Value"][0] for item in found}
        yield Pacs(server, csvs, studies)
    finally:
        server.stop()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def channels(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pulled]:
    """train over DICOMweb by AccessionNumber, test over DIMSE (C-GET) by StudyInstanceUID."""
    base = tmp_path_factory.mktemp("pulled")
    by_uid = base / "test-by-uid.csv"
    with open(by_uid, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", "label"])
        writer.writerows((pacs.studies[row["AccessionNumber"]], row["label"]) for row in _rows(pacs.csvs["test"]))
    dimse = DimseAddress("127.0.0.1", pacs.server.dicom_port, "PACSTEST")
    return {"train": pull(pacs.server.dicomweb, base / "data" / "train", key=KEY, labels=pacs.csvs["train"]),
            "test": pull(dimse, base / "data" / "test", key=KEY, labels=by_uid, progress=False)}


def test_a_labelled_pull_is_a_channel_the_job_checks_as_it_is(pacs: Pacs, channels: dict[str, Pulled]) -> None:
    for name, images in (("train", 24), ("test", 8)):
        pulled = channels[name]
        assert pulled.labels is not None and (pulled.labels.files, pulled.labels.studies) == (images, images)
        assert pulled.report.written == images and pulled.link.parent == pulled.out.parent
        rows = _rows(pulled.out / "labels.csv")
        assert sorted(r["label"] for r in rows) == sorted(r["label"] for r in _rows(pacs.csvs[name]))
        assert all((pulled.out / r["file"]).is_file() for r in rows)
        text = (pulled.out / "labels.csv").read_text()
        assert not [s for s in [*pacs.studies, *pacs.studies.values(), MRN, "Garibaldi"] if s in text]
    assert check.main(check.parse_args([str(channels["train"].out), "--test", str(channels["test"].out)])) == 0


def test_the_job_trains_and_its_predictions_go_back_to_the_original_studies(
        pacs: Pacs, channels: dict[str, Pulled], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "model"
    argv = [f"--train={channels['train'].out}", f"--test={channels['test'].out}", f"--model-dir={model}",
            f"--output-dir={tmp_path / 'output'}", "--network=resnet18", "--image_size=32,32", "--epochs=1",
            "--batch_size=8", "--workers=1", "--bootstrap_samples=20", "--torchscript=false", "--precision=fp32"]
    assert train.main(argv, environ={}) == 0
    predictions = tmp_path / "predictions.json"
    predictions.write_text(predict_json(str(model), [str(channels["test"].out)]))
    caplog.set_level(logging.DEBUG)
    report = push(pacs.server.dicomweb, predictions, model=model, link_path=channels["test"].link)
    assert (report.stored, report.studies) == (8, 8)
    links = read_link(channels["test"].link)
    expected = {links[p["SOPInstanceUID"]].original_sop_instance_uid: (p["label"], p["probabilities"][p["label"]])
                for p in json.loads(predictions.read_text())["predictions"]}
    client = DICOMwebClient(pacs.server.dicomweb)
    for row in _rows(pacs.csvs["test"]):
        study = pacs.studies[row["AccessionNumber"]]
        (item,) = client.search_for_instances(study_instance_uid=study, search_filters={"Modality": "SR"})
        sr = hd.sr.Comprehensive3DSR.from_dataset(client.retrieve_instance(
            study, item["0020000E"]["Value"][0], item["00080018"]["Value"][0]))
        assert sr.PatientID.startswith(MRN) and sr.AccessionNumber == row["AccessionNumber"]
        (group,) = sr.content.get_image_measurement_groups()
        (source,) = group.source_images
        (probability,) = group.get_measurements()
        label, p = expected.pop(source.referenced_sop_instance_uid)
        assert group.finding_type.meaning == label and abs(probability.value - p) < 1e-6
    assert expected == {}  # every prediction found, once, in its original study
    assert not [s for s in [*pacs.studies, *pacs.studies.values(), MRN, "Garibaldi"] if s in caplog.text]


def test_labels_naming_unknown_or_conflicting_studies_stop_before_anything_is_pulled(pacs: Pacs,
                                                                                     tmp_path: Path) -> None:
    rows = _rows(pacs.csvs["train"])[:3]
    bad = tmp_path / "bad.csv"
    bad.write_text("AccessionNumber,label\n" + "".join(f"{r['AccessionNumber']},{r['label']}\n" for r in rows)
                   + "ACC-NOT-THERE,normal\n")
    with pytest.raises(LabelsError, match=r"rows 5 of the labels CSV name no study on the PACS") as raised:
        pull(pacs.server.dicomweb, tmp_path / "out", key=KEY, labels=bad)
    assert "ACC-NOT-THERE" not in str(raised.value) and not (tmp_path / "out").exists()
    twice = tmp_path / "twice.csv"
    study = pacs.studies[rows[0]["AccessionNumber"]]
    twice.write_text(f"AccessionNumber,StudyInstanceUID,label\n{rows[0]['AccessionNumber']},,normal\n"
                     f",{study},abnormal\n")
    with pytest.raises(LabelsError, match=r"rows 2, 3 of the labels CSV give one study different labels"):
        pull(pacs.server.dicomweb, tmp_path / "out", key=KEY, labels=twice)
    assert not (tmp_path / "out").exists()


def test_command_line_pull_with_labels(pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "test"
    argv = ["pull", "--dimse", f"127.0.0.1:{pacs.server.dicom_port}:PACSTEST", str(out), "--labels",
            str(pacs.csvs["test"]), "--pseudonym-key-file", str(_key_file(tmp_path))]
    assert pacs_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["written"] == 8 and printed["labels"]["files"] == 8
    assert printed["not_images"] == 8  # the SRs the push before stored in these studies: listed, not retrieved
    assert check.main(check.parse_args([str(out)])) in (0, 1)  # 8 images: usable; the check says what is thin
    bad = tmp_path / "bad.csv"
    bad.write_text("AccessionNumber,label\nACC-NOT-THERE,normal\n")
    assert pacs_main([*argv[:4], "--labels", str(bad), *argv[6:]]) == 2
    assert "rows 2 of the labels CSV name no study" in capsys.readouterr().err


def _key_file(folder: Path) -> Path:
    path = folder / "key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    return path

"""Pushing predictions back as DICOM SR (launcher/pacs/push.py and sr.py, issue 20 item 4) to a real Orthanc started
here (demo/orthanc.py), seeded over STOW-RS with real files nobody here wrote (pydicom's CT_small and
MR_small) with identifying values written in by the test. The files are pulled with `pull_dicomweb`, classified by the
session's tiny bundle (`tiny_job`, through training.predict's `predict_json`, the JSON `python -m training.predict`
prints), and the predictions pushed over STOW-RS and over C-STORE; the SRs are found again with QIDO-RS in the
ORIGINAL studies and read back with highdicom. Without Orthanc these tests fail with how to install it, never skip."""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from demo.orthanc import Orthanc, free_port
from launcher.datasets.checksums import sha256_file
from launcher.pacs.__main__ import main
from launcher.pacs.deidentify import Link, LinkFile, read_link
from launcher.pacs.dimse import DimseAddress
from launcher.pacs.pull import pull_dicomweb
from launcher.pacs.push import PushError, push_predictions, read_predictions
from launcher.pacs.sr import BundleIdentityError, ModelIdentity
from tests.conftest import TinyJob
from tests.launcher.flaky import start_proxy
from tests.launcher.pacs_checks import seeded_orthanc
from training.predict import predict_json

KEY = bytes(range(32, 64))
PATIENTS = {
    "CT_small.dcm": {"PatientName": "Featherstonehaugh^Imelda", "PatientID": "MRN-4242424",
                     "PatientBirthDate": "19610203", "AccessionNumber": "ACC-9090901",
                     "InstitutionName": "Saint Swithin Infirmary"},
    "MR_small.dcm": {"PatientName": "Quarrington^Ambrose", "PatientID": "MRN-7373737", "PatientBirthDate": "19770405",
                     "AccessionNumber": "ACC-6060602", "InstitutionName": "Bramblewood General"},
}
NEEDLES = ["Featherstonehaugh", "Imelda", "4242424", "9090901", "Swithin", "Quarrington", "Ambrose", "7373737",
           "6060602", "Bramblewood", "19610203", "19770405"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, list[Dataset]]]:
    """Orthanc with CT (two instances of one series) and MR, each its own patient and study."""
    ct, ct2, mr = (pydicom.dcmread(get_testdata_file(name)) for name in ("CT_small.dcm", "CT_small.dcm",
                                                                          "MR_small.dcm"))
    ct2.SOPInstanceUID = ct2.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for dataset, name in ((ct, "CT_small.dcm"), (ct2, "CT_small.dcm"), (mr, "MR_small.dcm")):
        for keyword, value in PATIENTS[name].items():
            setattr(dataset, keyword, value)
    with seeded_orthanc(tmp_path_factory.mktemp("orthanc"), [ct, ct2, mr]) as server:
        yield server, [ct, ct2, mr]


@pytest.fixture(scope="module")
def pulled(orthanc: tuple[Orthanc, list[Dataset]], tiny_job: TinyJob, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, Path, Path]:
    """The pull (OUT, its default link file OUT.link.jsonl) and the predictions JSON for its files."""
    server, _ = orthanc
    base = tmp_path_factory.mktemp("push")
    out, link = base / "out", base / "out.link.jsonl"
    assert pull_dicomweb(server.dicomweb, out, key=KEY, link_path=link).written == 3
    predictions = base / "predictions.json"
    predictions.write_text(predict_json(str(tiny_job.model_dir), [str(out)]))
    return out, link, predictions


def _srs(server: Orthanc, study: str) -> list[dict[str, Any]]:
    return DICOMwebClient(server.dicomweb).search_for_instances(study_instance_uid=study,
                                                                search_filters={"Modality": "SR"})


def _sr_count(server: Orthanc, originals: list[Dataset]) -> int:
    """The SRs in the original studies (the two CT instances share one study)."""
    return sum(len(_srs(server, study)) for study in {str(d.StudyInstanceUID) for d in originals})


def _clear_srs(server: Orthanc) -> None:
    """Delete every SR (Orthanc's REST API), so that each test pushes into a PACS holding none."""
    client = DICOMwebClient(server.dicomweb)
    for item in client.search_for_instances(search_filters={"Modality": "SR"}):
        sop = item["00080018"]["Value"][0]
        request = urllib.request.Request(f"{server.url}/tools/lookup", data=sop.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            (found,) = json.load(answer)
        with urllib.request.urlopen(urllib.request.Request(f"{server.url}/instances/{found['ID']}",
                                                           method="DELETE"), timeout=10):
            pass


def _identifiers(originals: list[Dataset], link: Path) -> list[str]:
    """Every identifier and UID, original or pseudonym, a log or error must not show."""
    records = read_link(link).values()
    uids = {u for r in records for u in (r.sop_instance_uid, r.original_study_uid, r.original_series_uid,
                                         r.original_sop_instance_uid)}
    return NEEDLES + sorted(uids | {str(d.StudyInstanceUID) for d in originals})


def _tree(items: Any) -> dict[str, str]:
    """The SR content tree flattened: concept name's meaning to the item's value, as text."""
    found: dict[str, str] = {}
    for item in items:
        value = {"CODE": lambda i: i.ConceptCodeSequence[0].CodeMeaning, "TEXT": lambda i: i.TextValue,
                 "UIDREF": lambda i: i.UID}.get(item.ValueType, lambda i: "")(item)
        found[item.ConceptNameCodeSequence[0].CodeMeaning] = str(value)
        found.update(_tree(item.get("ContentSequence", [])))
    return found


def _check_srs(server: Orthanc, originals: list[Dataset], predictions: Path, model_dir: Path) -> int:
    """One SR per prediction in each original study, with the original patient, the referenced original instance,
    the predicted label and probability, and the model's name, version and weights' sha256; the number of SRs."""
    links = read_link(predictions.parent / "out.link.jsonl")
    expected = {links[p["SOPInstanceUID"]].original_sop_instance_uid: (p["label"], p["probabilities"][p["label"]])
                for p in json.loads(predictions.read_text())["predictions"]}
    meta = json.loads((model_dir / "configs" / "metadata.json").read_text())
    digest = sha256_file(model_dir / "models" / "model.pt").hex()
    client, seen = DICOMwebClient(server.dicomweb), {}
    for original in originals:
        for item in _srs(server, original.StudyInstanceUID):
            if item["00080018"]["Value"][0] in seen.values():
                continue  # the CT's second instance: same study
            sr = hd.sr.Comprehensive3DSR.from_dataset(client.retrieve_instance(
                original.StudyInstanceUID, item["0020000E"]["Value"][0], item["00080018"]["Value"][0]))
            assert (sr.PatientID, str(sr.PatientName), sr.PatientBirthDate, sr.AccessionNumber) == (
                original.PatientID, str(original.PatientName), original.PatientBirthDate, original.AccessionNumber)
            assert sr.Modality == "SR" and sr.SeriesInstanceUID not in {d.SeriesInstanceUID for d in originals}
            (group,) = sr.content.get_image_measurement_groups()
            (source,) = group.source_images
            target = next(d for d in originals if d.SOPInstanceUID == source.referenced_sop_instance_uid)
            assert target.StudyInstanceUID == sr.StudyInstanceUID == original.StudyInstanceUID
            assert source.referenced_sop_class_uid == target.SOPClassUID
            (probability,) = group.get_measurements()
            label, p = expected.pop(target.SOPInstanceUID)
            assert group.finding_type.meaning == label and abs(probability.value - p) < 1e-6
            assert probability.unit.value == "{probability}"
            tree = _tree(sr.ContentSequence)
            assert (tree["Algorithm Name"], tree["Algorithm Version"], tree["Algorithm Parameters"]) == (
                meta["name"], meta["version"], f"sha256:{digest}")
            assert (tree["Observer Type"], tree["Device Observer Model Name"]) == ("Device", meta["name"])
            assert (sr.ManufacturerModelName, sr.SoftwareVersions) == (meta["name"], meta["version"])
            seen[target.SOPInstanceUID] = sr.SOPInstanceUID
    assert expected == {}  # every prediction was found, once
    return len(seen)


@pytest.mark.parametrize("transport", ["STOW-RS", "C-STORE"])
def test_push_puts_one_sr_per_prediction_in_the_original_study(
        transport: str, orthanc: tuple[Orthanc, list[Dataset]], pulled: tuple[Path, Path, Path], tiny_job: TinyJob,
        caplog: pytest.LogCaptureFixture) -> None:
    server, originals = orthanc
    _, link, predictions = pulled
    _clear_srs(server)
    caplog.set_level(logging.DEBUG)
    where: dict[str, Any] = ({"dicomweb": server.dicomweb} if transport == "STOW-RS" else
                             {"dimse": ("127.0.0.1", server.dicom_port, "PACSTEST")})
    report = push_predictions(predictions, link_path=link, model=tiny_job.model_dir, **where)
    assert (report.predictions, report.stored, report.studies) == (3, 3, 2)
    assert _check_srs(server, originals, predictions, tiny_job.model_dir) == 3
    again = push_predictions(predictions, link_path=link, model=tiny_job.model_dir, **where)
    assert again.stored == 3 and _sr_count(server, originals) == 3  # no new instance
    assert caplog.records and [s for s in _identifiers(originals, link) if s in caplog.text] == []
    libraries = [r for r in caplog.records if r.name.split(".")[0] in ("pynetdicom", "highdicom")]
    assert [r for r in libraries if r.levelno < logging.WARNING] == []


def _document(predictions: Path) -> dict[str, Any]:
    return json.loads(predictions.read_text())  # type: ignore[no-any-return]


def test_a_prediction_not_in_the_link_stops_the_push_before_anything_is_sent(
        orthanc: tuple[Orthanc, list[Dataset]], pulled: tuple[Path, Path, Path], tiny_job: TinyJob,
        caplog: pytest.LogCaptureFixture) -> None:
    server, originals = orthanc
    _, link, predictions = pulled
    _clear_srs(server)
    caplog.set_level(logging.DEBUG)
    document = _document(predictions)
    stranger = generate_uid()
    document["predictions"][1]["SOPInstanceUID"] = stranger
    with pytest.raises(PushError, match=r"1 of 3 predictions are not in the link file .*, the first prediction 2 of "
                                        r"3: .*nothing was pushed") as caught:
        push_predictions(document, link_path=link, model=tiny_job.model_dir, dicomweb=server.dicomweb)
    assert stranger not in str(caught.value) and stranger not in caplog.text
    assert _sr_count(server, originals) == 0


def test_an_original_now_of_another_patient_is_not_pushed(orthanc: tuple[Orthanc, list[Dataset]],
                                                           pulled: tuple[Path, Path, Path], tiny_job: TinyJob,
                                                           tmp_path: Path) -> None:
    server, originals = orthanc
    _, link, predictions = pulled
    _clear_srs(server)
    with LinkFile(tmp_path / "link") as other:  # the link as if the PACS had since moved the instances
        for record in read_link(link).values():
            other.add(Link(record.sop_instance_uid, record.original_study_uid, record.original_series_uid,
                           record.original_sop_instance_uid, "MRN-0000001"))
    for target in ({"dicomweb": server.dicomweb}, {"dimse": ("127.0.0.1", server.dicom_port, "PACSTEST")}):
        with pytest.raises(PushError, match="prediction 1 of 3: the PatientID the server holds") as caught:
            push_predictions(predictions, link_path=tmp_path / "link", model=tiny_job.model_dir, **target)  # type: ignore[arg-type]
        assert [n for n in NEEDLES if n in str(caught.value)] == []
    assert _sr_count(server, originals) == 0


def test_a_server_answering_503_once_per_request_still_gets_every_sr(
        orthanc: tuple[Orthanc, list[Dataset]], pulled: tuple[Path, Path, Path], tiny_job: TinyJob) -> None:
    server, originals = orthanc
    _, link, predictions = pulled
    _clear_srs(server)
    proxy, url = start_proxy(server)  # 503 to the first of each request: the metadata reads and the STOW-RS
    try:
        report = push_predictions(predictions, link_path=link, model=tiny_job.model_dir, dicomweb=url, backoff_s=0.01)
    finally:
        proxy.shutdown()
    assert proxy.failures["503"] >= 3 and {method for method, _ in proxy.seen} == {"GET", "POST"}
    assert report.stored == 3 and _check_srs(server, originals, predictions, tiny_job.model_dir) == 3


def test_an_unreachable_server_is_named_with_what_to_check(pulled: tuple[Path, Path, Path], tiny_job: TinyJob) -> None:
    _, link, predictions = pulled
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(PushError, match="could not be reached .*prediction 1 of 3") as caught:
        push_predictions(predictions, link_path=link, model=tiny_job.model_dir, dicomweb=url, retries=1,
                         backoff_s=0.01, timeout_s=2)
    assert url in str(caught.value) and "check the URL" in str(caught.value)
    port = free_port()
    with pytest.raises(PushError, match=rf"127.0.0.1:{port} \(AE title PACS\) could not be reached or did not answer "
                                        "for prediction 1 of 3"):
        push_predictions(predictions, link_path=link, model=tiny_job.model_dir, dimse=("127.0.0.1", port, "PACS"),
                         retries=1, backoff_s=0.01, timeout_s=2)


@pytest.mark.parametrize(("content", "message"), [
    (b"predictions: none", "is not JSON"),
    (b'{"predictions": [{"SOPInstanceUID": "1.2", "label": "a", "probabilities": {"a": NaN}}]}', "is not JSON"),
    (b" " * 2_001, "is over 2000 bytes"),
    (b'{"predictions": {}}', 'not a JSON object {"predictions": [...]}'),
    (b'[{"SOPInstanceUID": "1.2"}]', 'not a JSON object {"predictions": [...]}'),
    (json.dumps({"predictions": [{"SOPInstanceUID": "1.2", "label": "a", "probabilities": {"a": 0.5}}] * 11}).encode(),
     "11 predictions, over the limit of 10"),
    (b'{"predictions": [{"SOPInstanceUID": "1.2", "label": "a", "probabilities": {"a": 0.5}}, 7]}',
     "prediction 2 of 2 is not a JSON object"),
    (b'{"predictions": [{"label": "a", "probabilities": {"a": 0.5}}]}', "prediction 1 of 1 has no SOPInstanceUID"),
    (b'{"predictions": [{"SOPInstanceUID": "1.2", "label": "b", "probabilities": {"a": 0.5}}]}',
     "prediction 1 of 1 has no label that is one of its probabilities' classes"),
    (b'{"predictions": [{"SOPInstanceUID": "1.2", "label": "a", "probabilities": {"a": 1.5}}]}',
     "prediction 1 of 1: the probability of its label is not a number from 0 to 1"),
])
def test_a_bad_predictions_file_is_refused_before_anything_is_sent(tmp_path: Path, content: bytes,
                                                                    message: str) -> None:
    path = tmp_path / "predictions.json"
    path.write_bytes(content)
    with pytest.raises(PushError, match=re.escape(message)):
        read_predictions(path, max_bytes=2_000, max_count=10)


def test_model_identity_and_an_ipv6_dimse_address(tiny_job: TinyJob, tmp_path: Path) -> None:
    identity = ModelIdentity.from_bundle(tiny_job.model_dir)
    assert identity.sha256 == sha256_file(tiny_job.model_dir / "models" / "model.pt").hex()
    with pytest.raises(BundleIdentityError, match="cannot be read .*pass the model directory"):
        ModelIdentity.from_bundle(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"name": "a\nb", "version": "1"}))
    with pytest.raises(BundleIdentityError, match="field 'name' must be a printable text"):
        ModelIdentity.from_bundle(tmp_path)
    address = DimseAddress.parse("::1:11112:ORTHANC")  # push --dimse parses as pull does (test_pacs_dimse.py)
    assert (address.host, address.port, address.called_aet) == ("::1", 11112, "ORTHANC")


def test_command_line_push(orthanc: tuple[Orthanc, list[Dataset]], pulled: tuple[Path, Path, Path],
                           tiny_job: TinyJob, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server, originals = orthanc
    _, _, predictions = pulled
    _clear_srs(server)
    model = str(tiny_job.model_dir)
    assert main(["push", server.dicomweb, str(predictions), "--model", model]) == 0  # the link found beside OUT
    assert json.loads(capsys.readouterr().out)["stored"] == 3
    assert _check_srs(server, originals, predictions, tiny_job.model_dir) == 3
    dimse = f"127.0.0.1:{server.dicom_port}:PACSTEST"
    assert main(["push", "--dimse", dimse, str(predictions), "--model", model]) == 0
    assert json.loads(capsys.readouterr().out)["stored"] == 3
    assert _sr_count(server, originals) == 3
    moved = tmp_path / "predictions.json"
    document = _document(predictions)
    for item in document["predictions"]:
        item["file"] = str(tmp_path / "elsewhere.dcm")
    moved.write_text(json.dumps(document))
    for argv, message in (
            (["push", "--dimse", "pacs:104", str(predictions), "--model", model], "a DIMSE address is HOST:PORT:AET"),
            (["push", server.dicomweb, str(moved), "--model", model], "no link file was found"),
            (["push", "--dimse", dimse, server.dicomweb, str(predictions), "--model", model], "give the DICOMweb URL"),
            (["push", server.dicomweb, str(predictions), "--model", str(tmp_path)], "cannot be read")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err

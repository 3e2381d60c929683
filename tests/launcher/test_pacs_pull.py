"""Pulling over DICOMweb (launcher/pacs/pull.py, issue 20 item 1) from a real Orthanc started here (tests/launcher/
orthanc.py), seeded over STOW-RS with real files nobody here wrote (pydicom's CT_small and MR_small) with identifying
values written in by the test. The pulled files' bytes and names are searched for every identifier and every
original UID. Without Orthanc these tests fail with how to install it (`make setup` as root), never skip."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from demo.orthanc import Orthanc, free_port
from launcher.pacs.__main__ import default_link_path, main
from launcher.pacs.deidentify import Deidentifier, LinkFileError, read_link
from launcher.pacs.pull import PullError, PullReport, pull_dicomweb
from tests.launcher.flaky import start_proxy
from tests.launcher.pacs_checks import original_uids, seeded_orthanc

KEY = bytes(range(32))
PATIENTS = {
    "CT_small.dcm": {"PatientName": "Quimby^Harriet", "PatientID": "MRN-8675309", "AccessionNumber": "ACC-5551234",
                     "InstitutionName": "Saint Elsewhere Hospital", "ReferringPhysicianName": "Kildare^Bartholomew",
                     "PatientAddress": "12 Wisteria Lane"},
    "MR_small.dcm": {"PatientName": "Ozymandias^Tobit", "PatientID": "MRN-3141592", "AccessionNumber": "ACC-2718281",
                     "InstitutionName": "Mercy Plainview Clinic", "ReferringPhysicianName": "Zhivago^Yuri",
                     "PatientAddress": "7 Juniper Court"},
}
NEEDLES = ["Quimby", "Harriet", "8675309", "5551234", "Elsewhere", "Kildare", "Bartholomew", "Wisteria",
           "Ozymandias", "Tobit", "3141592", "2718281", "Plainview", "Zhivago", "Juniper"]


def _seed() -> list[Dataset]:
    """CT (two instances of one series), MR, and a burned-in MR of a third study; identifiers written in."""
    ct, mr = (pydicom.dcmread(get_testdata_file(name)) for name in PATIENTS)
    for dataset, name in ((ct, "CT_small.dcm"), (mr, "MR_small.dcm")):
        for keyword, value in PATIENTS[name].items():
            setattr(dataset, keyword, value)
    ct2 = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in PATIENTS["CT_small.dcm"].items():
        setattr(ct2, keyword, value)
    ct2.SOPInstanceUID = ct2.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    burned = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    burned.StudyInstanceUID, burned.SeriesInstanceUID = generate_uid(), generate_uid()
    burned.SOPInstanceUID = burned.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    burned.BurnedInAnnotation = "YES"
    return [ct, ct2, mr, burned]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, list[Dataset]]]:
    datasets = _seed()
    with seeded_orthanc(tmp_path_factory.mktemp("orthanc"), datasets) as server:
        yield server, datasets
    assert server.process.poll() is not None


@pytest.fixture(scope="module")
def pulled(orthanc: tuple[Orthanc, list[Dataset]], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, Path, PullReport]:
    server, _ = orthanc
    base = tmp_path_factory.mktemp("pull")
    out, link = base / "out", base / "out.link.jsonl"
    report = pull_dicomweb(server.dicomweb, out, key=KEY, link_path=link, page_size=1)  # paging, one study a page
    return out, link, report


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def test_pull_deidentifies_keeps_pixels_and_series(orthanc: tuple[Orthanc, list[Dataset]],
                                                    pulled: tuple[Path, Path, PullReport]) -> None:
    _, originals = orthanc
    out, link_path, report = pulled
    assert (report.studies, report.found, report.retrieved, report.written, report.skipped) == (3, 4, 4, 3, 0)
    assert len(report.refused) == 1 and report.refused[0].startswith("instance 1 of study ")
    assert "BurnedInAnnotation is YES" in report.refused[0]
    files = _files(out)
    assert len(files) == 3 and all(f.suffix == ".dcm" for f in files)
    uids = set().union(*(original_uids(d) for d in originals))
    for path in files:
        data = path.read_bytes()
        assert [n for n in NEEDLES if n.encode() in data] == []
        assert [u for u in uids if u.encode() in data or u in str(path.relative_to(out))] == []
    links = read_link(link_path)
    by_sop = {str(d.SOPInstanceUID): d for d in originals}
    series_folders = {}
    for path in files:
        pulled_ds = pydicom.dcmread(path)
        assert path.relative_to(out).parts == (pulled_ds.StudyInstanceUID, pulled_ds.SeriesInstanceUID,
                                               f"{pulled_ds.SOPInstanceUID}.dcm")
        link = links[pulled_ds.SOPInstanceUID]
        original = by_sop[link.original_sop_instance_uid]
        assert (link.original_study_uid, link.original_series_uid) == (original.StudyInstanceUID,
                                                                       original.SeriesInstanceUID)
        assert link.original_patient_id == original.PatientID
        assert pulled_ds.PixelData == original.PixelData
        series_folders.setdefault(original.SeriesInstanceUID, set()).add(path.parent)
    ct_series = originals[0].SeriesInstanceUID
    assert len(series_folders[ct_series]) == 1 and len(list(next(iter(series_folders[ct_series])).iterdir())) == 2
    assert stat.S_IMODE(link_path.stat().st_mode) == 0o600 and out not in link_path.parents


def test_second_pull_transfers_nothing(orthanc: tuple[Orthanc, list[Dataset]],
                                       pulled: tuple[Path, Path, PullReport]) -> None:
    server, _ = orthanc
    out, link, _ = pulled
    before = {p: p.stat().st_mtime_ns for p in _files(out)}
    again = pull_dicomweb(server.dicomweb, out, key=KEY, link_path=link)
    assert (again.retrieved, again.written, again.skipped, len(again.refused)) == (1, 0, 3, 1)  # the refused one
    assert {p: p.stat().st_mtime_ns for p in _files(out)} == before
    assert len(read_link(link)) == 3


def test_pseudonym_uid_is_deidentifys() -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    originals = (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
    deidentifier = Deidentifier(KEY)
    link = deidentifier.deidentify(dataset)
    assert [deidentifier.pseudonym_uid(u) for u in originals] == [dataset.StudyInstanceUID,
                                                                 dataset.SeriesInstanceUID, link.sop_instance_uid]
    assert Deidentifier(bytes(32)).pseudonym_uid(originals[2]) != link.sop_instance_uid


def test_flaky_server_still_gives_a_complete_pull(orthanc: tuple[Orthanc, list[Dataset]], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server, originals = orthanc
    caplog.set_level(logging.DEBUG)
    proxy, url = start_proxy(server)
    try:
        report = pull_dicomweb(url, tmp_path / "out", key=KEY, link_path=tmp_path / "link", timeout_s=1,
                               backoff_s=0.01, retries=3)
    finally:
        proxy.shutdown()
    assert proxy.failures["503"] >= 5 and proxy.failures["stall"] == 1  # search, 3 listings, 4 retrievals
    assert (report.written, len(report.refused)) == (3, 1)
    assert len(_files(tmp_path / "out")) == 3
    uids = set().union(*(original_uids(d) for d in originals))
    assert caplog.records and [u for u in uids | set(NEEDLES) if u in caplog.text] == []  # no identifier logged


def test_a_failure_leaves_nothing_half_written(orthanc: tuple[Orthanc, list[Dataset]], tmp_path: Path) -> None:
    server, originals = orthanc
    proxy, url = start_proxy(server, break_sop=originals[2].SOPInstanceUID)  # the MR
    try:
        with pytest.raises(PullError, match=r"instance 1 of study \d of the 3 found") as caught:
            pull_dicomweb(url, tmp_path / "out", key=KEY, link_path=tmp_path / "link", timeout_s=2, backoff_s=0.01,
                          retries=2, workers=1)
    finally:
        proxy.shutdown()
    assert proxy.failures["broken"] >= 1 and "broke off" in str(caught.value)
    for path in _files(tmp_path / "out"):
        assert path.suffix == ".dcm" and not path.name.startswith(".")
        assert pydicom.dcmread(path).PixelData  # whole


def test_unreachable_server_says_which_url_and_what_to_check(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(PullError, match="could not be reached") as caught:
        pull_dicomweb(url, tmp_path / "out", key=KEY, link_path=tmp_path / "link", retries=1, backoff_s=0.01)
    assert url in str(caught.value) and "check the URL" in str(caught.value)
    assert _files(tmp_path / "out") == []


def test_missing_study_is_named_by_position(orthanc: tuple[Orthanc, list[Dataset]], tmp_path: Path) -> None:
    server, originals = orthanc
    missing = generate_uid()
    with pytest.raises(PullError, match="study 2 of 3 was not found") as caught:
        pull_dicomweb(server.dicomweb, tmp_path / "out", key=KEY, link_path=tmp_path / "link",
                      studies=[originals[0].StudyInstanceUID, missing, originals[2].StudyInstanceUID])
    assert missing not in str(caught.value) and originals[0].StudyInstanceUID not in str(caught.value)
    assert _files(tmp_path / "out") == []


def test_bounds_and_link_outside_out(orthanc: tuple[Orthanc, list[Dataset]], tmp_path: Path) -> None:
    server, _ = orthanc
    with pytest.raises(PullError, match="more than 3 instances"):
        pull_dicomweb(server.dicomweb, tmp_path / "a", key=KEY, link_path=tmp_path / "a.link", max_instances=3)
    small = pull_dicomweb(server.dicomweb, tmp_path / "b", key=KEY, link_path=tmp_path / "b.link",
                          max_instance_bytes=5_000)
    assert small.written == 0 and len(small.refused) == 4
    assert all("over the limit of 5000 bytes" in r or "BurnedIn" in r for r in small.refused)
    with pytest.raises(LinkFileError, match="inside"):
        pull_dicomweb(server.dicomweb, tmp_path / "c", key=KEY, link_path=tmp_path / "c" / "link")


def test_command_line_pull(orthanc: tuple[Orthanc, list[Dataset]], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    server, originals = orthanc
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    out = tmp_path / "out"
    assert main(["pull", server.dicomweb, str(out), "--study", originals[2].StudyInstanceUID]) == 0
    assert '"written": 1' in capsys.readouterr().out
    assert default_link_path(out) == tmp_path / "out.link.jsonl" and len(read_link(tmp_path / "out.link.jsonl")) == 1
    assert main(["pull", f"http://127.0.0.1:{free_port()}/dicom-web", str(out)]) == 2
    assert "could not be reached" in capsys.readouterr().err
    assert os.listdir(tmp_path / "config" / "monai-dicom-sagemaker") == ["pseudonym-key"]


def test_paging_goes_past_a_server_that_answers_fewer_than_asked(tmp_path: Path) -> None:
    """A server with a result limit of 2 (below the page asked for) answers every search page short: the pull keeps
    asking at the next offset until a page comes back empty; a server that ignores the offset ends it too."""
    from launcher.pacs.pull import _Puller

    options = {"page_size": 100, "max_instances": 50, "retries": 0, "backoff_s": 0.0, "timeout_s": 1,
               "max_instance_bytes": 1 << 20}
    puller = _Puller("http://127.0.0.1:9/dicom-web", tmp_path / "out", Deidentifier(KEY), None, options)  # type: ignore[arg-type]
    studies = [{"n": n} for n in range(5)]
    asked: list[int] = []

    def limited(_: DICOMwebClient, offset: int, limit: int) -> list[dict]:
        asked.append(offset)
        return studies[offset:offset + min(limit, 2)]

    assert puller.paged("the studies", limited) == studies and asked == [0, 2, 4, 5]
    assert puller.paged("the studies", lambda _, offset, limit: studies[:2]) == studies[:2]  # offset ignored

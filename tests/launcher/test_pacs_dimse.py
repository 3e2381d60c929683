"""Pulling over DIMSE (launcher/pacs/dimse.py, issue 20 item 1) from a real Orthanc started here (tests/launcher/
orthanc.py), seeded over STOW-RS with real files nobody here wrote (pydicom's CT_small and MR_small, pydicom-data's
enhanced MR, JPEG-LS MR and JPEG 2000 CT) with identifying values written in by the test: five studies, one of two
series, one burned in. Pulled over C-GET and over C-MOVE, the files' bytes and names are searched for every identifier
and original UID, and they are the files a DICOMweb pull writes. Without Orthanc these tests fail, never skip."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from demo.orthanc import Orthanc, free_port, register_modality
from launcher.pacs import dimse
from launcher.pacs.__main__ import main
from launcher.pacs.deidentify import read_link
from launcher.pacs.dimse import DimseAddress, parse_move_to, pull_dimse
from launcher.pacs.pull import PullError, PullReport, find_studies, pull_dicomweb
from tests.launcher.pacs_checks import original_uids, seeded_orthanc
from tests.training.dicom_builders import pydicom_data_dir

KEY = bytes(range(32))
PEOPLE = [("Quimby^Harriet", "MRN-8675309", "ACC-5551234", "Saint Elsewhere Hospital"),
          ("Ozymandias^Tobit", "MRN-3141592", "ACC-2718281", "Mercy Plainview Clinic"),
          ("Fairweather^Ignatius", "MRN-1618033", "ACC-1414213", "Gotham Lakeside Infirmary"),
          ("Pumpernickel^Wilhelmina", "MRN-5772156", "ACC-6931471", "Rivendell General")]
NEEDLES = ["Quimby", "Harriet", "8675309", "5551234", "Elsewhere", "Ozymandias", "Tobit", "3141592", "2718281",
           "Plainview", "Fairweather", "Ignatius", "1618033", "1414213", "Gotham", "Pumpernickel", "Wilhelmina",
           "5772156", "6931471", "Rivendell"]
MOVE_AET = "MONAI-DEST"


def _read(name: str, person: int, *, study: str | None = None, new_series: bool = False) -> Dataset:
    corpus = pydicom_data_dir() / name
    dataset = pydicom.dcmread(corpus if corpus.is_file() else get_testdata_file(name))
    dataset.PatientName, dataset.PatientID, dataset.AccessionNumber, dataset.InstitutionName = PEOPLE[person]
    dataset.StudyInstanceUID = study or generate_uid()
    if new_series:
        dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return dataset


def _seed() -> list[Dataset]:
    """Two CT instances of one series; an MR; an enhanced MR study of two series (one JPEG-LS); a JPEG 2000 CT;
    a burned-in MR. Every UID is new, so the Orthanc of test_pacs_pull.py's files is never confused with these."""
    ct = _read("CT_small.dcm", 0)
    ct2 = _read("CT_small.dcm", 0, study=ct.StudyInstanceUID)
    ct2.SeriesInstanceUID = ct.SeriesInstanceUID
    emri = _read("emri_small.dcm", 2, new_series=True)
    emri_ls = _read("emri_small_jpeg_ls_lossless.dcm", 2, study=emri.StudyInstanceUID, new_series=True)
    burned = _read("MR_small.dcm", 1, new_series=True)
    burned.BurnedInAnnotation = "YES"
    return [ct, ct2, _read("MR_small.dcm", 1, new_series=True), emri, emri_ls, _read("693_J2KR.dcm", 3), burned]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, list[Dataset], DimseAddress]]:
    datasets = _seed()
    with seeded_orthanc(tmp_path_factory.mktemp("orthanc"), datasets) as server:
        register_modality(server, "pull", "MONAI-PULL", 1)  # a real PACS lets only known callers retrieve
        yield server, datasets, DimseAddress("127.0.0.1", server.dicom_port, "PACSTEST")


def _pull(orthanc: tuple[Orthanc, list[Dataset], DimseAddress], base: Path, *, workers: int,
          move_to: str | None = None) -> tuple[Path, Path, PullReport]:
    out, link = base / "out", base / "out.link.jsonl"
    report = pull_dimse(orthanc[2], out, key=KEY, link_path=link, progress=False, workers=workers, move_to=move_to)
    return out, link, report


@pytest.fixture(scope="module")
def by_get(orthanc: tuple[Orthanc, list[Dataset], DimseAddress], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, Path, PullReport]:
    return _pull(orthanc, tmp_path_factory.mktemp("get"), workers=2)


@pytest.fixture(scope="module")
def move_to(orthanc: tuple[Orthanc, list[Dataset], DimseAddress]) -> str:
    """The C-MOVE destination, AET:PORT, as the PACS knows it."""
    port = free_port()
    register_modality(orthanc[0], "dest", MOVE_AET, port)
    return f"{MOVE_AET}:{port}"


@pytest.fixture(scope="module")
def by_move(orthanc: tuple[Orthanc, list[Dataset], DimseAddress], move_to: str,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PullReport]:
    return _pull(orthanc, tmp_path_factory.mktemp("move"), workers=3, move_to=move_to)


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def _content(path: Path) -> tuple[Dataset, bytes, str, str]:
    """A pulled file's elements, pixel bytes and the file meta that names what it is. Orthanc sends a stored
    DataSetTrailingPadding (FFFC,FFFC) over DICOMweb only, an encapsulated PixelData as OB over DIMSE (as OW where it
    was stored so over DICOMweb), and each transport's file meta names the software that wrote it."""
    dataset = pydicom.dcmread(path)
    dataset.pop("DataSetTrailingPadding", None)
    pixels = dataset.pop("PixelData").value
    meta, dataset.file_meta = dataset.file_meta, FileMetaDataset()
    return dataset, pixels, str(meta.TransferSyntaxUID), str(meta.MediaStorageSOPInstanceUID)


def _check_pull(originals: list[Dataset], out: Path, link_path: Path, report: PullReport) -> None:
    assert (report.studies, report.found, report.retrieved, report.written, report.skipped) == (5, 7, 7, 6, 0)
    assert len(report.refused) == 1 and "BurnedInAnnotation is YES" in report.refused[0]
    assert report.refused[0].startswith("instance 1 of study ")
    files = _files(out)
    uids = set().union(*(original_uids(d) for d in originals))
    assert len(files) == 6 and len(uids) > 15
    for path in files:
        data = path.read_bytes()
        assert [n for n in NEEDLES if n.encode() in data] == []
        assert [u for u in uids if u.encode() in data or u in str(path.relative_to(out))] == []
    links, by_sop = read_link(link_path), {str(d.SOPInstanceUID): d for d in originals}
    folders: dict[str, set[Path]] = {}
    for path in files:
        pulled = pydicom.dcmread(path)
        original = by_sop[links[pulled.SOPInstanceUID].original_sop_instance_uid]
        assert path.relative_to(out).parts == (pulled.StudyInstanceUID, pulled.SeriesInstanceUID,
                                               f"{pulled.SOPInstanceUID}.dcm")
        assert pulled.PixelData == original.PixelData
        assert pulled.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        folders.setdefault(original.SeriesInstanceUID, set()).add(path.parent)
    ct, emri, emri_ls = originals[0], originals[3], originals[4]
    (ct_folder,) = folders[ct.SeriesInstanceUID]
    assert len(list(ct_folder.iterdir())) == 2
    two = folders[emri.SeriesInstanceUID] | folders[emri_ls.SeriesInstanceUID]
    assert len(two) == 2 and len({p.parent for p in two}) == 1  # two series folders in one study folder


def test_c_get_pull_deidentifies_keeps_pixels_and_series(orthanc: tuple[Orthanc, list[Dataset], DimseAddress],
                                                          by_get: tuple[Path, Path, PullReport]) -> None:
    _check_pull(orthanc[1], *by_get)


def test_c_move_pull_deidentifies_keeps_pixels_and_series(orthanc: tuple[Orthanc, list[Dataset], DimseAddress],
                                                           by_move: tuple[Path, Path, PullReport]) -> None:
    _check_pull(orthanc[1], *by_move)


def test_the_transports_agree_and_a_second_pull_transfers_nothing(
        orthanc: tuple[Orthanc, list[Dataset], DimseAddress], by_get: tuple[Path, Path, PullReport],
        by_move: tuple[Path, Path, PullReport], move_to: str, tmp_path: Path) -> None:
    web = tmp_path / "web"
    pull_dicomweb(orthanc[0].dicomweb, web, key=KEY, link_path=tmp_path / "web.link", progress=False)
    names = [p.relative_to(web) for p in _files(web)]
    assert len(names) == 6
    for out, _, _ in (by_get, by_move):
        assert [p.relative_to(out) for p in _files(out)] == names
        for name in names:
            assert _content(out / name) == _content(web / name)
    for (out, link, _), destination in ((by_get, None), (by_move, move_to)):
        before = {p: p.stat().st_mtime_ns for p in _files(out)}
        again = pull_dimse(orthanc[2], out, key=KEY, link_path=link, progress=False, move_to=destination)
        assert (again.retrieved, again.written, again.skipped, len(again.refused)) == (1, 0, 6, 1)  # the refused one
        assert {p: p.stat().st_mtime_ns for p in _files(out)} == before and len(read_link(link)) == 6


class _Cutter(socketserver.ThreadingTCPServer):
    """A TCP proxy before Orthanc's DICOM port: it closes its first connection at once (the listing's first
    association fails) and cuts its third (with one worker: the first C-GET association, after the listing's) once
    4 kB came from Orthanc, in mid-instance."""

    daemon_threads = allow_reuse_address = True

    def __init__(self, upstream: int) -> None:
        self.upstream, self.connections, self.cut = upstream, 0, 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Pipe)


class _Pipe(socketserver.BaseRequestHandler):
    server: _Cutter

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
            number = self.server.connections
        if number == 1:
            self.request.shutdown(socket.SHUT_RDWR)
            return
        upstream = socket.create_connection(("127.0.0.1", self.server.upstream), timeout=10)
        threading.Thread(target=self._copy, args=(self.request, upstream, False), daemon=True).start()
        self._copy(upstream, self.request, number == 3)

    def _copy(self, source: socket.socket, target: socket.socket, may_cut: bool) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                sent += len(data)
                with self.server.lock:
                    cut = may_cut and sent > 4096 and self.server.cut == 0
                    self.server.cut += cut
                if cut:
                    break
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):  # shutdown, not just close: it wakes the other thread's recv and sends FIN
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()


def test_dropped_associations_are_retried_and_nothing_is_logged(orthanc: tuple[Orthanc, list[Dataset], DimseAddress],
                                                                 tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    server, originals, _ = orthanc
    caplog.set_level(logging.DEBUG)
    proxy = _Cutter(server.dicom_port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        report = pull_dimse(DimseAddress("127.0.0.1", proxy.server_address[1], "PACSTEST"), tmp_path / "out",
                            key=KEY, link_path=tmp_path / "link", workers=1, retries=2, backoff_s=0.01, timeout_s=5)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proxy.connections >= 4 and proxy.cut == 1
    assert (report.written, len(report.refused)) == (6, 1) and len(_files(tmp_path / "out")) == 6
    uids = set().union(*(original_uids(d) for d in originals))
    assert caplog.records and [u for u in uids | set(NEEDLES) if u in caplog.text] == []


def test_wrong_ae_title_unreachable_and_missing_study(orthanc: tuple[Orthanc, list[Dataset], DimseAddress],
                                                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, originals, address = orthanc
    caplog.set_level(logging.DEBUG)
    wrong = DimseAddress("127.0.0.1", server.dicom_port, "NOT-THE-PACS")
    with pytest.raises(PullError, match=r"rejected the association: check its AE title"):
        pull_dimse(wrong, tmp_path / "a", key=KEY, link_path=tmp_path / "a.link", retries=3, backoff_s=5)
    nowhere = DimseAddress("127.0.0.1", free_port(), "PACSTEST")
    with pytest.raises(PullError, match=r"could not be reached.*while asking for the studies: check the host"):
        pull_dimse(nowhere, tmp_path / "b", key=KEY, link_path=tmp_path / "b.link", retries=1, backoff_s=0.01)
    missing = generate_uid()
    studies = [originals[0].StudyInstanceUID, missing, originals[2].StudyInstanceUID]
    with pytest.raises(PullError, match="study 2 of 3 was not found") as caught:
        pull_dimse(address, tmp_path / "c", key=KEY, link_path=tmp_path / "c.link", studies=studies)
    assert [u for u in studies if u in str(caught.value)] == []
    assert [_files(tmp_path / name) for name in "abc"] == [[], [], []]
    assert [u for u in studies + NEEDLES if u in caplog.text] == []


def test_bounds(orthanc: tuple[Orthanc, list[Dataset], DimseAddress], move_to: str, tmp_path: Path) -> None:
    address = orthanc[2]
    for name, destination in (("get", None), ("move", move_to)):
        small = pull_dimse(address, tmp_path / name, key=KEY, link_path=tmp_path / f"{name}.link", move_to=destination,
                           max_instance_bytes=2_000, retries=0)
        assert (small.retrieved, small.written, len(small.refused)) == (0, 0, 7)
        assert all("over the limit of 2000 bytes" in r for r in small.refused)  # some cut off while they came
    with pytest.raises(PullError, match="more than 3 results"):
        pull_dimse(address, tmp_path / "c", key=KEY, link_path=tmp_path / "c.link", max_instances=3)
    with pytest.raises(PullError, match="'NoSuchKeyword' is not a DICOM attribute keyword"):
        pull_dimse(address, tmp_path / "d", key=KEY, link_path=tmp_path / "d.link", query={"NoSuchKeyword": "x"})


def test_find_studies_over_both_transports(orthanc: tuple[Orthanc, list[Dataset], DimseAddress]) -> None:
    server, originals, address = orthanc
    for source in (address, server.dicomweb):
        assert find_studies(source, {"AccessionNumber": "ACC-1414213"}) == [originals[3].StudyInstanceUID]
        assert find_studies(source, {"AccessionNumber": "ACC-0000000"}) == []
        assert sorted(find_studies(source, {"PatientID": "MRN-8675309"})) == [originals[0].StudyInstanceUID]


def test_addresses_parse_or_say_their_shape() -> None:
    assert DimseAddress.parse("pacs.example.org:104:PACS") == DimseAddress("pacs.example.org", 104, "PACS")
    assert parse_move_to("MONAI-PULL:11113") == ("MONAI-PULL", 11113, "127.0.0.1")
    assert parse_move_to("MONAI-PULL@10.0.3.7:11113") == ("MONAI-PULL", 11113, "10.0.3.7")  # a PACS elsewhere
    for text, shape in (("MRN-8675309", "HOST:PORT:AET"), ("host:notaport:PACS", "PORT"),
                        ("host:104:A-TITLE-LONGER-THAN-16", "1 to 16"), ("host:104:", "1 to 16")):
        with pytest.raises(ValueError, match=shape) as caught:
            DimseAddress.parse(text)
        assert text not in str(caught.value)
    with pytest.raises(ValueError, match="AET:PORT"):
        parse_move_to("11113")


def test_command_line_pull_over_dimse(orthanc: tuple[Orthanc, list[Dataset], DimseAddress], move_to: str,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    server, originals, _ = orthanc
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    dimse, out = f"127.0.0.1:{server.dicom_port}:PACSTEST", tmp_path / "out"
    assert main(["pull", "--dimse", dimse, str(out), "--study", originals[2].StudyInstanceUID]) == 0
    assert '"written": 1' in capsys.readouterr().out and len(read_link(tmp_path / "out.link.jsonl")) == 1
    on_loopback = move_to.replace(":", "@127.0.0.1:", 1)  # AET@HOST:PORT: the address it listens on, given
    assert main(["pull", "--dimse", dimse, "--move-to", on_loopback, str(out), "--query",
                 "AccessionNumber=ACC-5551234"]) == 0
    assert '"written": 2' in capsys.readouterr().out and len(_files(out)) == 3
    assert main(["pull", "--dimse", f"127.0.0.1:{server.dicom_port}:WRONG", str(tmp_path / "x")]) == 2
    assert "rejected the association" in capsys.readouterr().err
    for argv, says in (([str(out)], "exactly one"), ([server.dicomweb, "--dimse", dimse, str(out)], "exactly one"),
                       ([server.dicomweb, "--move-to", move_to, str(out)], "--move-to is for a pull over DIMSE"),
                       (["--dimse", "MRN-8675309", str(out)], "HOST:PORT:AET")):
        with pytest.raises(SystemExit):
            main(["pull", *argv])
        error = capsys.readouterr().err
        assert says in error and "8675309" not in error


def test_a_listing_short_of_the_pacs_count_is_asked_again_then_refused(
        orthanc: tuple[Orthanc, list[Dataset], DimseAddress], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS's own count (NumberOfStudyRelatedInstances) holds the listing: an answer lost once (seen under load)
    is asked again on a new association; lost every time, the pull stops naming the study by position."""
    server, originals, address = orthanc
    listed, losses = dimse._Puller._listed, {"left": 1}

    def lossy(self: dimse._Puller, study: str, what: str) -> list[tuple[str, Dataset]]:
        found = listed(self, study, what)
        if losses["left"] and len(found) > 1:
            losses["left"] -= 1
            return found[1:]
        return found

    monkeypatch.setattr(dimse._Puller, "_listed", lossy)
    ct = originals[0]
    report = pull_dimse(address, tmp_path / "once", key=KEY, link_path=tmp_path / "once.link", progress=False,
                        studies=[ct.StudyInstanceUID])
    assert (report.found, report.written, losses["left"]) == (2, 2, 0)
    losses["left"] = 10**6
    with pytest.raises(PullError, match=r"listed 1 instances of study 1 of 1 but counts 2: pull again"):
        pull_dimse(address, tmp_path / "always", key=KEY, link_path=tmp_path / "always.link", progress=False,
                   studies=[ct.StudyInstanceUID])

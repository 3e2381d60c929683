"""Pulling over DIMSE (launcher/pacs/dimse.py, issue 20 item 1) from a real Orthanc started here (tests/launcher/
orthanc.py), seeded over STOW-RS with real files nobody here wrote (pydicom's CT_small and MR_small, pydicom-data's
enhanced MR, JPEG-LS MR and JPEG 2000 CT) with identifying values written in by the test: five studies, one of two
series, one burned in. Pulled over C-GET and over C-MOVE, the files' bytes and names are searched for every identifier
and original UID, and they are the files a DICOMweb pull writes. Without Orthanc these tests fail, never skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from launcher.pacs.deidentify import read_link
from launcher.pacs.dimse import DimseAddress, pull_dimse
from launcher.pacs.pull import PullReport, pull_dicomweb
from tests.launcher.orthanc import Orthanc, free_port, orthanc_missing, register_modality, start_orthanc
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


def _original_uids(dataset: Dataset) -> set[str]:
    found: set[str] = set()

    def visit(ds: Dataset, element: pydicom.DataElement) -> None:
        if element.VR == "UI" and element.value and not element.keyword.endswith("ClassUID"):
            found.update(str(v) for v in (element.value if element.VM > 1 else [element.value]))

    dataset.walk(visit)
    return found


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, list[Dataset], DimseAddress]]:
    missing = orthanc_missing()
    if missing:
        pytest.fail(missing)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        datasets = _seed()
        DICOMwebClient(server.dicomweb).store_instances(datasets=datasets)
        register_modality(server, "pull", "MONAI-PULL", 1)  # a real PACS lets only known callers retrieve
        yield server, datasets, DimseAddress("127.0.0.1", server.dicom_port, "PACSTEST")
    finally:
        server.stop()


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
    uids = set().union(*(_original_uids(d) for d in originals))
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

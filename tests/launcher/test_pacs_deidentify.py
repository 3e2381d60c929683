"""De-identification on the way in (launcher/pacs/deidentify.py, issue 20 item 2), on real DICOM nobody here wrote:
pydicom's own test files and the pydicom-data corpus (CT, MR, ultrasound, secondary capture), with identifying
values written into them by the test. Each file is written to bytes after de-identification, and the bytes are
searched, so no element the checks do not name can hide an identifier."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from launcher.pacs.deidentify import (
    DeidentificationError,
    Deidentifier,
    Link,
    LinkFile,
    LinkFileError,
    import_refusal,
    read_link,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
FILES = ["CT_small.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm", "SC_rgb.dcm"]  # the last two from pydicom-data
IDENTIFIERS = {
    "PatientName": "Quimby^Harriet^Odalys", "PatientID": "MRN-8675309", "PatientBirthDate": "19610412",
    "AccessionNumber": "ACC-5551234", "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "Kildare^Bartholomew", "OtherPatientIDs": "OTHER-424242",
    "IssuerOfPatientID": "ELSEWHERE-MRN-ISSUER", "PatientAddress": "12 Wisteria Lane Fairview",
    "StudyDescription": "Quimby follow-up", "PatientComments": "Harriet prefers mornings",
}
PRIVATE_NAME = "Harriet Odalys Quimby private"
NESTED_ID = "NESTED-7770777"
# Each value's most telling part: none may stand anywhere in a de-identified file's bytes.
NEEDLES = ["Quimby", "Harriet", "Odalys", "8675309", "19610412", "5551234", "Elsewhere", "Kildare", "Bartholomew",
           "424242", "ELSEWHERE-MRN", "Wisteria", "7770777"]
KEPT = {"PatientSex": "F", "PatientAge": "063Y", "PatientSize": "1.68", "PatientWeight": "61.5"}


def _identified(name: str) -> Dataset:
    """A real file with a patient's identifiers written into it (a private tag and a nested ID included)."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in {**IDENTIFIERS, **KEPT}.items():
        setattr(dataset, keyword, value)
    dataset.private_block(0x0011, "ACME HOSPITAL 1.1", create=True).add_new(0x01, "LO", PRIVATE_NAME)
    item = Dataset()
    item.PatientID = NESTED_ID
    item.private_block(0x0013, "ACME NESTED", create=True).add_new(0x02, "LO", PRIVATE_NAME)
    dataset.OtherPatientIDsSequence = [item]
    dataset.BurnedInAnnotation = "NO"
    dataset.DataSetTrailingPadding = f"{IDENTIFIERS['PatientName']} {IDENTIFIERS['PatientID']} ".encode()
    return dataset


def _uids(dataset: Dataset) -> list[str]:
    return [str(dataset[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                            "FrameOfReferenceUID") if k in dataset]


def _bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pulled() -> list[tuple[Dataset, Link, list[str], bytes]]:
    """Each file de-identified: (dataset read back from its bytes, link, original UIDs, original pixel bytes)."""
    deidentifier = Deidentifier(KEY)
    out = []
    for name in FILES:
        dataset = _identified(name)
        originals, pixels = _uids(dataset), dataset.PixelData
        link = deidentifier.deidentify(dataset)
        out.append((pydicom.dcmread(io.BytesIO(_bytes(dataset))), link, originals, pixels))
    return out


def test_no_identifier_or_original_uid_remains_in_the_bytes(pulled: list) -> None:
    for dataset, _, originals, _ in pulled:
        written = _bytes(dataset)
        assert [n for n in NEEDLES + [PRIVATE_NAME] if n.encode() in written] == []
        assert [u for u in originals if u.encode() in written] == []
        assert dataset.PatientBirthDate == ""
        assert "StudyDescription" not in dataset and "IssuerOfPatientID" not in dataset


def test_profile_keeps_patient_characteristics_and_pixels_and_marks_the_file(pulled: list) -> None:
    for dataset, _, _, pixels in pulled:
        assert {k: str(dataset[k].value) for k in KEPT} == KEPT
        assert dataset.PixelData == pixels
        assert dataset.PatientIdentityRemoved == "YES"
        assert "PS3.15 Basic Profile" in dataset.DeidentificationMethod
        assert {c.CodeValue for c in dataset.DeidentificationMethodCodeSequence} == {"113100", "113107", "113108"}


def test_private_tags_are_removed_at_every_depth(pulled: list) -> None:
    for dataset, _, _, _ in pulled:
        private: list[int] = []
        dataset.walk(lambda _, element, found=private: found.append(element.tag) if element.tag.is_private else None)
        assert private == []
        assert dataset.OtherPatientIDsSequence[0].PatientID not in ("", NESTED_ID)


def test_dates_shift_back_by_one_offset_per_patient(pulled: list) -> None:
    shifts = []
    for name, (shifted, _, _, _) in zip(FILES[:2], pulled[:2], strict=True):  # CT and MR of one patient
        original = pydicom.dcmread(get_testdata_file(name))
        shifts.append(_when(original) - _when(shifted))
    assert timedelta(days=62) <= shifts[0] <= timedelta(days=730) and shifts[0] == shifts[1]
    deidentifier = Deidentifier(KEY)
    assert deidentifier.shift_hours("MRN-8675309") == Deidentifier(KEY).shift_hours("MRN-8675309")
    assert len({deidentifier.shift_hours(f"patient-{i}") for i in range(20)}) > 15


def _when(dataset: Dataset) -> datetime:
    return datetime.strptime(dataset.StudyDate + dataset.StudyTime[:6], "%Y%m%d%H%M%S")


def _series_of_two(key: bytes) -> list[str]:
    """Two instances of one series (the second a copy with its own SOPInstanceUID) de-identified with `key`: their
    pseudonymous SOPInstanceUIDs, then the series' and the study's."""
    first, second = _identified("MR2_UNCR.dcm"), _identified("MR2_UNCR.dcm")
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["second"])
    deidentifier = Deidentifier(key)
    links = [deidentifier.deidentify(first), deidentifier.deidentify(second)]
    assert first.SeriesInstanceUID == second.SeriesInstanceUID and first.StudyInstanceUID == second.StudyInstanceUID
    assert first.PatientID == second.PatientID
    return [link.sop_instance_uid for link in links] + [str(first.SeriesInstanceUID), str(first.StudyInstanceUID)]


def test_uids_are_stable_per_key_in_every_process_and_differ_between_keys() -> None:
    once, again, other = _series_of_two(KEY), _series_of_two(KEY), _series_of_two(OTHER_KEY)
    assert once == again and len(set(once)) == 4
    assert set(once).isdisjoint(other)
    code = ("import json; from tests.launcher.test_pacs_deidentify import KEY, _series_of_two; "
            "print(json.dumps(_series_of_two(KEY)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == once


def test_burned_in_annotation_and_secondary_capture_are_refused_unless_allowed() -> None:
    flagged = _identified("CT_small.dcm")
    flagged.BurnedInAnnotation = "YES"
    capture, ultrasound = _identified("SC_rgb.dcm"), _identified("US1_UNCR.dcm")
    reasons = [import_refusal(d) for d in (flagged, capture, ultrasound)]
    assert "BurnedInAnnotation is YES" in str(reasons[0])
    assert "Secondary Capture Image Storage" in str(reasons[1]) and "Ultrasound" in str(reasons[2])
    assert [n for n in NEEDLES + list(IDENTIFIERS.values()) + _uids(capture) if n in "".join(map(str, reasons))] == []
    assert [import_refusal(d, allow_burned_in=True) for d in (flagged, capture)] == [None, None]
    assert import_refusal(_identified("CT_small.dcm")) is None
    Deidentifier(KEY).deidentify(flagged)
    assert flagged.PatientIdentityRemoved == "NO"  # the header is clean; the pixels may not be


def test_link_file_is_owner_only_idempotent_and_round_trips(tmp_path: Path) -> None:
    dataset = _identified("CT_small.dcm")
    originals = _uids(dataset)
    link = Deidentifier(KEY).deidentify(dataset)
    path = tmp_path / "link.jsonl"
    with LinkFile(path) as links:
        assert links.add(link) and not links.add(link)
    with LinkFile(path) as links:  # a second pull of the same instance
        assert not links.add(link)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(path.read_text().splitlines()) == 1
    assert read_link(path) == {str(dataset.SOPInstanceUID): link}
    assert link.original_patient_id == IDENTIFIERS["PatientID"]
    assert [link.original_study_uid, link.original_series_uid, link.original_sop_instance_uid] == originals[:3]


def test_hostile_link_files_are_refused_naming_no_content(tmp_path: Path) -> None:
    shared = tmp_path / "shared.jsonl"
    shared.write_text("")
    shared.chmod(0o644)
    with pytest.raises(LinkFileError, match="mode 0644"):
        LinkFile(shared)
    target = tmp_path / "target.jsonl"
    target.write_text("")
    target.chmod(0o600)
    (tmp_path / "symlink.jsonl").symlink_to(target)
    with pytest.raises(LinkFileError, match="cannot be opened"):
        LinkFile(tmp_path / "symlink.jsonl")
    with pytest.raises(LinkFileError, match="inside"):
        LinkFile(tmp_path / "out" / "link.jsonl", outside=[tmp_path / "out"])
    for text, reason in [("MRN-8675309 not json\n", "line 1 is not JSON"), ('{"PatientID": "MRN-8675309"}\n',
                         "line 1 is not a link record"), ("x" * 5000 + "8675309\n", "line 1 is longer")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(LinkFileError, match=reason) as caught:
            read_link(bad)
        assert "8675309" not in str(caught.value)


def test_hostile_instances_fail_or_pass_without_quoting_a_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    long_id, bad_date = _identified("CT_small.dcm"), _identified("CT_small.dcm")
    hostile = [(long_id, "PatientID", "MRN-8675309" * 20), (bad_date, "StudyDate", "1961XX12"),
               (bad_date, "StudyTime", "Quimby"), (bad_date, "PatientName", "Quimby^" * 20),
               (bad_date, "SeriesInstanceUID", "1.2.840.8675309.Quimby")]  # pydicom's warning would quote this UID
    with config.disable_value_validation():  # a file as a PACS may hold it: values pydicom calls invalid
        for dataset, keyword, value in hostile:
            delattr(dataset, keyword)
            setattr(dataset, keyword, value)
        long_id, bad_date = (pydicom.dcmread(io.BytesIO(_bytes(d))) for d in (long_id, bad_date))  # read lazily
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with pytest.raises(DeidentificationError, match="PatientID is longer") as caught:
            Deidentifier(KEY).deidentify(long_id)
        Deidentifier(KEY).deidentify(bad_date)  # an unreadable date is emptied, never kept
    assert "8675309" not in str(caught.value)
    assert (bad_date.StudyDate, bad_date.StudyTime) == ("", "") and "Quimby" not in _bytes(bad_date).decode("latin-1")
    said = " ".join([str(w.message) for w in warned] + [r.getMessage() for r in caplog.records])
    assert "8675309" not in said and "1961XX12" not in said and "Quimby" not in said
    with pytest.raises(ValueError, match="32 bytes"):
        Deidentifier(KEY[:16])


def test_no_identifier_reaches_any_log_record(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    deidentifier = Deidentifier(KEY)
    with LinkFile(tmp_path / "link.jsonl") as links:
        for name in FILES:
            dataset = _identified(name)
            import_refusal(dataset)
            links.add(deidentifier.deidentify(dataset))
            _bytes(dataset)
    read_link(tmp_path / "link.jsonl")
    logged = " ".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert [n for n in NEEDLES + [PRIVATE_NAME] if n in logged] == []


def test_validation_is_restored_after_threads_overlap(tmp_path: Path) -> None:
    """Four pull workers de-identifying at once leave pydicom's value validation as it was (pydicom's own
    disable_value_validation() did not: the last thread out restored what the first had set, and validation stayed
    off for the rest of the process). A file with an invalid value warns again afterwards."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pydicom import config

    from launcher.pacs.validation import no_value_validation

    before = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    assert config.IGNORE not in before
    lock, arrived, turns = threading.Lock(), [], [threading.Event() for _ in range(4)]
    inside = threading.Barrier(4)

    def overlap(_: int) -> None:
        with no_value_validation():
            with lock:
                place = len(arrived)
                arrived.append(place)
            inside.wait(timeout=10)  # all four inside at once
            assert config.settings.reading_validation_mode == config.IGNORE
            if place:
                assert turns[place - 1].wait(timeout=10)  # they leave in the order they came: the first first
        turns[place].set()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(overlap, range(4)))
    assert (config.settings.reading_validation_mode, config.settings.writing_validation_mode) == before
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        Dataset().SOPInstanceUID = "not-a-uid"

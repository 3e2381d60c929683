"""De-identification on the way in from a PACS (issue 20 item 2): what a pull does to each instance before writing it.

What: the DICOM PS3.15 Basic Application Level Confidentiality Profile with the Retain Patient Characteristics option
and the Retain Longitudinal Temporal Information with Modified Dates option, applied to a pydicom Dataset in place.
`dicognito` (a well-kept library, not a hand-made list) replaces every person name, UID, ID, address, institution and
date; on top of it this module

- removes every private element (dicognito keeps them; the basic profile removes them), recursively;
- removes the free-text elements the basic profile removes that dicognito keeps (descriptions, comments, ...), with
  dicognito's own stripper;
- keeps PatientSex, PatientAge, PatientSize and PatientWeight (Retain Patient Characteristics), so that subgroup
  evaluation stays possible; PatientBirthDate and PatientBirthTime are emptied (the age is kept instead);
- shifts every other date (DA, DT, and the TM paired with a DA) back by a per-patient offset of 62 to 730 days (in
  hours, as dicognito does), so intervals within one patient's studies are kept while no offset is shared between
  patients; a date it cannot read is emptied, never kept;
- leaves the pixel data's bytes as they are (burned-in text is `import_refusal`'s matter), and sets
  PatientIdentityRemoved (YES, or NO where BurnedInAnnotation is YES) and DeidentificationMethod with its codes.

Why keyed: pseudonyms must be stable (a re-pull is idempotent, a series stays one series) yet unguessable from a
list of record numbers. dicognito's pseudonyms are MD5(seed + original); its seed here is an HMAC-SHA256 of the
deployment's 32-byte pseudonym key (training/dataset/pseudonym_key.py), never the key itself, so the same original
with the same key gives the same pseudonym in every run and process, and another key gives others. The date offset
is an HMAC of the key and the original PatientID.

The link back (pseudonymous SOPInstanceUID to the original study, series, instance and PatientID) is what a push
needs to put a result in the original study; `LinkFile` writes it as JSON lines, owner-only (0600), and it belongs
outside the folder that gets uploaded. No error or log here names an identifier: they name attributes and line numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import dicognito
from dicognito.anonymizer import Anonymizer
from dicognito.datetimeanonymizer import DateTimeAnonymizer
from dicognito.randomizer import Randomizer
from dicognito.uianonymizer import UIAnonymizer
from dicognito.unwantedelements import UnwantedElementsStripper
from pydicom import uid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from launcher.pacs.validation import no_value_validation
from training.dataset.pseudonym_key import KEY_BYTES

__all__ = ["Deidentifier", "DeidentificationError", "Link", "LinkFile", "LinkFileError", "import_refusal", "read_link"]

MAX_VALUE_CHARS = 64  # a UI's and a LO's (PatientID's) maximum length in PS3.5
MAX_LINE_BYTES = 1024  # a link record is under 400 bytes
MAX_LINK_RECORDS = 10_000_000
MIN_SHIFT_DAYS, MAX_SHIFT_DAYS = 62, 730  # dicognito's own range
TRAILING_PADDING = 0xFFFCFFFC  # DataSetTrailingPadding: dicognito keeps it, and Orthanc sends it over WADO-RS

# The basic profile's X (remove) elements that dicognito leaves as they are: free text that may name a patient.
ALSO_REMOVED = (
    "AdditionalPatientHistory", "AdmittingDiagnosesDescription", "Allergies", "DerivationDescription",
    "DeviceSerialNumber", "EthnicGroup", "ImageComments", "IssuerOfPatientID", "MedicalAlerts", "PatientComments",
    "PatientState", "PerformedProcedureStepDescription", "ProtocolName", "RequestAttributesSequence",
    "RequestedProcedureDescription", "ScheduledProcedureStepDescription", "SeriesDescription", "StudyComments",
    "StudyDescription", "AcquisitionComments", "FrameComments", "InterpretationText",
)
EMPTIED = ("PatientBirthDate", "PatientBirthTime")
KEPT = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
METHOD = [f"dicognito {dicognito.__version__}", "PS3.15 Basic Profile", "Retain Patient Characteristics",
          "Retain Modified Dates"]
METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                ("113108", "Retain Patient Characteristics Option"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))

# Kinds known to carry burned-in text: secondary capture (screenshots, scanned forms) and ultrasound.
BURNED_IN_KINDS = frozenset({
    uid.SecondaryCaptureImageStorage, uid.MultiFrameSingleBitSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage, uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage, uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage, uid.EnhancedUSVolumeStorage,
    uid.UID("1.2.840.10008.5.1.4.1.1.6"), uid.UID("1.2.840.10008.5.1.4.1.1.3"),  # the retired ultrasound classes
})


class DeidentificationError(ValueError):
    """An instance that cannot be de-identified; the message names attributes, never their values."""


class LinkFileError(ValueError):
    """A link file that is not owner-only, not a regular file, or not made of link records."""


@dataclass(frozen=True)
class Link:
    """One imported instance: its pseudonymous SOPInstanceUID and the originals a push needs."""

    sop_instance_uid: str
    original_study_uid: str
    original_series_uid: str
    original_sop_instance_uid: str
    original_patient_id: str


def import_refusal(dataset: Dataset, *, allow_burned_in: bool = False) -> str | None:
    """Why this instance may not be imported (its pixels may show identifiers as text), or None when it may."""
    if allow_burned_in:
        return None
    with no_value_validation():  # its warnings quote the value
        return _refusal(dataset)


def _refusal(dataset: Dataset) -> str | None:
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return ("BurnedInAnnotation is YES: its pixels show text that may identify the patient; import it only "
                "after checking, with allow_burned_in=True")
    sop_class = uid.UID(str(dataset.get("SOPClassUID", "")))
    if sop_class in BURNED_IN_KINDS:
        return (f"its kind, {sop_class.name}, often carries burned-in text that may identify the patient; "
                "import it only after checking, with allow_burned_in=True")
    return None


class _PatientDates(DateTimeAnonymizer):
    """dicognito's date shift with one patient's offset; a date it cannot read is emptied (with its time)."""

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        try:
            return super().__call__(dataset, data_element)
        except (ValueError, TypeError, OverflowError):
            data_element.value = ""
            time_keyword = data_element.keyword.replace("Date", "Time")
            if data_element.VR == "DA" and time_keyword in dataset:
                dataset.data_element(time_keyword).value = ""  # type: ignore[union-attr]
            return True


class Deidentifier:
    """De-identifies datasets with pseudonyms keyed by the deployment's 32-byte pseudonym key."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"a pseudonym key is {KEY_BYTES} bytes")
        self._key = key
        self._seed = self._mac(b"dicognito-seed").hex()

    def _mac(self, purpose: bytes, value: str = "") -> bytes:
        message = b"monai-dicom-sagemaker/pacs/v1\x1f" + purpose + b"\x1f" + value.encode("utf-8", "replace")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def shift_hours(self, patient_id: str) -> int:
        """The (negative) shift of this patient's dates, in hours."""
        span = (MAX_SHIFT_DAYS - MIN_SHIFT_DAYS) * 24
        return -(MIN_SHIFT_DAYS * 24 + int.from_bytes(self._mac(b"date-offset", patient_id)[:8], "big") % span)

    def pseudonym_uid(self, original: str) -> str:
        """The pseudonym `deidentify` gives the UID `original` (study, series or instance), without a dataset.

        A pull knows from it, before retrieving anything, where an instance would be written and whether it is there.
        """
        element = DataElement(0x00080018, "UI", original)
        UIAnonymizer(Randomizer(self._seed))(Dataset(), element)
        return str(element.value)

    def _anonymizer(self, patient_id: str) -> Anonymizer:
        anonymizer = Anonymizer(seed=self._seed)
        # Handlers added later run first, and the first that takes an element ends its handling.
        anonymizer.add_element_handler(_PatientDates(self.shift_hours(patient_id)))
        anonymizer.add_element_handler(UnwantedElementsStripper(*ALSO_REMOVED))
        return anonymizer

    def deidentify(self, dataset: Dataset) -> Link:
        """De-identify `dataset` in place; return its link record (pseudonym to originals) for a `LinkFile`.

        pydicom's value validation is off meanwhile: its warnings and log records quote the invalid value.
        """
        with no_value_validation():
            return self._deidentify(dataset)

    def _deidentify(self, dataset: Dataset) -> Link:
        originals = [_original(dataset, keyword) for keyword in
                     ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")]
        if getattr(dataset, "file_meta", None) is None:
            dataset.file_meta = FileMetaDataset()
        try:
            dataset.remove_private_tags()
            if TRAILING_PADDING in dataset:  # any bytes at all, past the data set's end: never read, so never checked
                del dataset[TRAILING_PADDING]
            self._anonymizer(originals[3]).anonymize(dataset)
        except Exception as error:  # its message may quote a value: name only its kind
            raise DeidentificationError(f"de-identification failed ({type(error).__name__})") from None
        for keyword in EMPTIED:
            if keyword in dataset:
                dataset[keyword].value = ""
        burned_in = str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES"
        dataset.PatientIdentityRemoved = "NO" if burned_in else "YES"
        dataset.DeidentificationMethod = METHOD
        dataset.DeidentificationMethodCodeSequence = Sequence([_code(*code) for code in METHOD_CODES])
        return Link(str(dataset.SOPInstanceUID), *originals)


def _original(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    if not isinstance(value, str) or (keyword != "PatientID" and not value):
        raise DeidentificationError(f"the instance has no single {keyword}")
    if len(value) > MAX_VALUE_CHARS:
        raise DeidentificationError(f"the instance's {keyword} is longer than {MAX_VALUE_CHARS} characters")
    return value


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


class LinkFile:
    """The link records of a pull, appended as JSON lines to an owner-only (0600) file; a pseudonym is written once.

    The file is created with mode 0600; an existing one is refused when it is not a regular file of this user with
    no group or other permissions (a symbolic link included), or when `path` lies inside one of `outside`.
    """

    def __init__(self, path: str | Path, *, outside: Iterable[str | Path] = ()) -> None:
        self.path = Path(path)
        for folder in outside:
            root = Path(folder).resolve()
            if self.path.resolve() == root or root in self.path.resolve().parents:
                raise LinkFileError(f"link file {self.path} is inside {folder}: keep it out of what gets uploaded")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as error:
            raise LinkFileError(f"link file {self.path} cannot be opened: {error.strerror}") from None
        try:
            _check_private(self._fd, self.path)
            self._known = set(read_link(self.path))
        except BaseException:
            os.close(self._fd)
            raise

    def add(self, link: Link) -> bool:
        """Append `link` unless its pseudonym is already there; True when it was written."""
        if link.sop_instance_uid in self._known:
            return False
        line = (json.dumps(asdict(link), sort_keys=True) + "\n").encode()
        if len(line) > MAX_LINE_BYTES:
            raise LinkFileError(f"a link record is longer than {MAX_LINE_BYTES} bytes")
        os.write(self._fd, line)  # one write of an O_APPEND file: a whole line or none
        self._known.add(link.sop_instance_uid)
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LinkFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_private(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        raise LinkFileError(f"link file {path} is not a regular file of this user")
    if info.st_mode & 0o077:
        raise LinkFileError(f"link file {path} has mode {stat.S_IMODE(info.st_mode):04o}: others may read it; "
                            f"it must be 0600 (check who read it, then chmod 600 {path})")


def read_link(path: str | Path, *, max_records: int = MAX_LINK_RECORDS) -> dict[str, Link]:
    """The link records of a link file by pseudonymous SOPInstanceUID; errors name the line, never its content."""
    names = [f.name for f in fields(Link)]
    found: dict[str, Link] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise LinkFileError(f"link file {path} line {number} is longer than {MAX_LINE_BYTES} bytes")
            try:
                record = json.loads(raw)
            except ValueError:
                raise LinkFileError(f"link file {path} line {number} is not JSON") from None
            if (not isinstance(record, dict) or sorted(record) != sorted(names)
                    or not all(isinstance(v, str) and len(v) <= MAX_VALUE_CHARS for v in record.values())):
                raise LinkFileError(f"link file {path} line {number} is not a link record")
            if record["sop_instance_uid"] not in found and len(found) >= max_records:
                raise LinkFileError(f"link file {path} holds more than {max_records} records")
            found.setdefault(record["sop_instance_uid"], Link(**record))
    return found

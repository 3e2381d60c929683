"""Push a model's predictions back to the PACS as DICOM SR, in the original studies (issue 20 item 4).

`push_predictions(PREDICTIONS, link_path=..., model=BUNDLE_DIR, dicomweb=URL | dimse=(HOST, PORT, AET))` takes the
JSON that `python -m training.predict MODEL FILES...` prints ({"predictions": [{"file", "SOPInstanceUID", "label",
"probabilities": {class: p}}]}), finds each prediction's original instance through the link file a pull wrote (by the
pseudonymous SOPInstanceUID), fetches that instance's metadata from the PACS (WADO-RS metadata, or a C-FIND at IMAGE
level), makes one SR per prediction (launcher/pacs/sr.py) and stores it (STOW-RS with dicomweb-client, or C-STORE
with pynetdicom). Rules:

- Bounded before work starts: the predictions file's bytes and count, and its shape, are checked before anything is
  sent; a metadata answer over `MAX_METADATA_BYTES` is refused; every request and association has a timeout;
  timeouts, connection errors, 429/5xx (DICOMweb) and aborted or unanswered associations (DIMSE) are retried
  `retries` times with exponential backoff.
- All or nothing on the link: when any prediction is not in the link file (predictions of another pull, another
  link file), nothing is pushed: a partial set in the PACS would look complete to a reader, and the error names the
  first such prediction by position ("prediction 3 of 10") and how many there are.
- The original is checked: the PatientID the PACS holds now for the original instance must be the one the link
  recorded at pull time, or the prediction is not pushed (a result never goes to another patient).
- Idempotent: each SR's UIDs are derived from the original instance, the weights' sha256 and the label, so a second
  push of the same predictions stores the same instances again, and Orthanc (OverwriteInstances false, its default)
  keeps the one it has and answers success; a C-STORE answered "duplicate" (0x0111) counts as stored.
- A failure part way stops the push (what was stored stays; a re-push completes it, by the rule above).
- No identifier in errors or logs: predictions by position, the server by its URL or address. dicomweb-client's and
  urllib3's debug records (request URLs hold UIDs) are silenced by launcher.pacs.pull; pynetdicom's and highdicom's
  records below WARNING (pynetdicom dumps datasets, highdicom names the original's SOPInstanceUID) are dropped here,
  and their exception records lose their text.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pynetdicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID, Comprehensive3DSRStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from launcher.pacs.deidentify import Link, read_link
from launcher.pacs.intake import PullError, retrying
from launcher.pacs.pull import bounded_session, retriable_http
from launcher.pacs.receive import NO_DELAY
from launcher.pacs.sr import MAX_TEXT, ModelIdentity, classification_sr
from launcher.pacs.validation import no_value_validation

__all__ = ["MAX_PREDICTIONS", "MAX_PREDICTIONS_BYTES", "Prediction", "PushError", "PushReport",
           "push_predictions", "read_predictions"]

LOG = logging.getLogger(__name__)
MAX_PREDICTIONS_BYTES = 64 << 20  # a prediction is about 300 bytes of JSON
MAX_PREDICTIONS = 100_000  # as many as a pull may list (launcher.pacs.pull.MAX_INSTANCES)
MAX_METADATA_BYTES = 16 << 20  # one instance's metadata (no bulk data)
MAX_UID = 64
CALLING_AE_TITLE = "MONAI-PUSH"
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")  # pynetdicom.sop_class makes its names at run time: untyped
STORED = frozenset({0x0000, 0x0111, 0xB000, 0xB006, 0xB007})  # success, duplicate, and the coercion warnings
# What a C-FIND asks for: the Patient and General Study modules' attributes highdicom copies, and the instance's kind.
FIND_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
             "PatientSize", "PatientWeight", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
             "ReferringPhysicianName", "StudyDescription", "SOPClassUID", "SpecificCharacterSet", "Modality",
             "Manufacturer")
T = TypeVar("T")


class PushError(RuntimeError):
    """A push that cannot go on; the message says what and what to do, and names no identifier."""


@dataclass(frozen=True)
class Prediction:
    """One prediction of the predictions file: the pseudonymous instance, the label and its probability, and the
    file predicted (as named in the file: a pulled file's path)."""

    sop_instance_uid: str
    label: str
    probability: float
    file: str = ""


@dataclass
class PushReport:
    """What a push did: predictions read, SRs stored (a re-store of the same SR counts), studies they went to."""

    predictions: int = 0
    stored: int = 0
    studies: int = 0
    seconds: float = 0.0


class _QuietLibraries(logging.Filter):
    """Drops pynetdicom's and highdicom's records below WARNING (they name UIDs, pynetdicom dumps datasets) and the
    text of their exception records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if record.exc_info or record.exc_text:
            record.msg, record.args = f"{record.name}: an exception (its text is withheld: it may quote values)", ()
            record.exc_info, record.exc_text = None, None
        return True


_QUIET = _QuietLibraries()
for _name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("pynetdicom", "highdicom")]:
    logging.getLogger(_name).addFilter(_QUIET)  # a filter sees only its own logger's records: each module's
for _name in ("pynetdicom", "highdicom"):  # and a module's logger made later inherits the level
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


def read_predictions(source: str | Path | Mapping[str, Any] | Sequence[Prediction], *,
                     max_bytes: int = MAX_PREDICTIONS_BYTES, max_count: int = MAX_PREDICTIONS) -> list[Prediction]:
    """The predictions of `source` (the predictions JSON file, or its parsed document), checked in size and shape
    (a sequence of Predictions is taken as it is, counted).

    Raises:
        PushError: the file is missing, over `max_bytes`, not JSON, holds more than `max_count` predictions, or a
            prediction (named by its position) lacks a field or has one of the wrong type or range.
    """
    if isinstance(source, Sequence) and not isinstance(source, str):
        if len(source) > max_count or not all(isinstance(p, Prediction) for p in source):
            raise PushError(f"pass at most {max_count} Predictions (read_predictions), or the predictions file")
        return list(source)
    if isinstance(source, Mapping):
        document: Any = source
    else:
        document = _load_json(Path(source), max_bytes)
    items = document.get("predictions") if isinstance(document, Mapping) else None
    if not isinstance(items, list):
        raise PushError('the predictions are not a JSON object {"predictions": [...]}: pass what '
                        "`python -m training.predict MODEL FILES...` prints")
    if len(items) > max_count:
        raise PushError(f"the predictions hold {len(items)} predictions, over the limit of {max_count}: push them in "
                        "parts")
    return [_prediction(item, f"prediction {n} of {len(items)}") for n, item in enumerate(items, 1)]


def _load_json(path: Path, max_bytes: int) -> Any:
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise PushError(f"the predictions file {path} cannot be read ({error.strerror})") from None
    if len(data) > max_bytes:
        raise PushError(f"the predictions file {path} is over {max_bytes} bytes: push the predictions in parts")
    try:
        return _strict_json(data)
    except ValueError:
        raise PushError(f"the predictions file {path} is not JSON: pass what `python -m training.predict` "
                        "prints") from None


def _strict_json(data: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    return json.loads(data, parse_constant=refuse)  # NaN and Infinity are not JSON


def _prediction(item: Any, where: str) -> Prediction:
    if not isinstance(item, Mapping):
        raise PushError(f"{where} is not a JSON object with SOPInstanceUID, label and probabilities")
    uid, label, probabilities = item.get("SOPInstanceUID"), item.get("label"), item.get("probabilities")
    if not isinstance(uid, str) or not 0 < len(uid) <= MAX_UID:
        raise PushError(f"{where} has no SOPInstanceUID of 1 to {MAX_UID} characters: was its file DICOM?")
    if not isinstance(label, str) or not isinstance(probabilities, Mapping) or label not in probabilities:
        raise PushError(f"{where} has no label that is one of its probabilities' classes")
    if not label.strip() or len(label) > MAX_TEXT or not label.isprintable():
        raise PushError(f"{where}: its label is not a printable text of 1 to {MAX_TEXT} characters")
    probability = probabilities[label]
    if isinstance(probability, bool) or not isinstance(probability, int | float) or not (
            math.isfinite(probability) and 0 <= probability <= 1):
        raise PushError(f"{where}: the probability of its label is not a number from 0 to 1")
    file = item.get("file", "")
    return Prediction(uid, label, float(probability), file if isinstance(file, str) and len(file) <= 4096 else "")


class _Target(Protocol):
    def metadata(self, link: Link, where: str) -> Dataset: ...

    def store(self, sr: Dataset, where: str) -> None: ...

    def close(self) -> None: ...


class _DicomWeb:
    """A DICOMweb server: WADO-RS metadata and STOW-RS, with pull.py's bounded session and retries."""

    def __init__(self, url: str, *, timeout_s: float, retries: int, backoff_s: float) -> None:
        self.url, self.retries, self.backoff_s = url.rstrip("/"), retries, backoff_s
        self.session = bounded_session(MAX_METADATA_BYTES)
        self.client = DICOMwebClient(self.url, session=self.session, timeout=timeout_s)
        self.client.set_http_retry_params(retry=False)  # ours retries timeouts and connection errors too

    def _request(self, what: str, call: Callable[[], T], *, if_missing: str = "check the URL") -> T:
        try:
            return retrying(call, retries=self.retries, backoff_s=self.backoff_s, retriable=retriable_http)
        except PullError as error:  # an answer over the limit
            raise PushError(f"{what}: {error}") from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            raise PushError(f"the DICOMweb server at {self.url} could not be reached ({type(error).__name__}) for "
                            f"{what}: check the URL (the DICOMweb root, e.g. http://host:8042/dicom-web), that the "
                            "server runs and answers from here") from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else "?"
            hint = if_missing if status == 404 else "check the URL and your access to it"
            raise PushError(f"the DICOMweb server at {self.url} answered HTTP {status} for {what}: {hint}") from None

    def metadata(self, link: Link, where: str) -> Dataset:
        document = self._request(f"{where} (its original instance's metadata)", lambda: (
            self.client.retrieve_instance_metadata(link.original_study_uid, link.original_series_uid,
                                                   link.original_sop_instance_uid)),
            if_missing="its original instance is not on the server (deleted, or another PACS?)")
        plain = {tag: element for tag, element in document.items() if "BulkDataURI" not in element}
        with no_value_validation():
            return Dataset.from_json(plain, bulk_data_uri_handler=lambda *_: None)

    def store(self, sr: Dataset, where: str) -> None:
        answer = self._request(f"{where} (storing its SR)", lambda: self.client.store_instances(
            [sr], study_instance_uid=str(sr.StudyInstanceUID)))
        if answer is not None and answer.get("FailedSOPSequence"):
            reason = answer.FailedSOPSequence[0].get("FailureReason", "?")
            raise PushError(f"the DICOMweb server at {self.url} refused the SR of {where} (failure reason {reason}): "
                            "check that it accepts Comprehensive 3D SR")

    def close(self) -> None:
        self.session.close()


class _Retry(Exception):
    """A DIMSE exchange that got no answer (timeout, abort, no association): worth another association."""


class _Dimse:
    """A DIMSE server: C-FIND (IMAGE level, study root) for the metadata and C-STORE, over one association that is
    opened again after an abort or a timeout."""

    def __init__(self, address: tuple[str, int, str], *, calling_ae_title: str, timeout_s: float, retries: int,
                 backoff_s: float) -> None:
        self.host, self.port, self.called = address
        self.retries, self.backoff_s = retries, backoff_s
        self.name = f"the DICOM server at {self.host}:{self.port} (AE title {self.called})"
        self.ae = pynetdicom.AE(ae_title=calling_ae_title)
        self.ae.add_requested_context(STUDY_ROOT_FIND)
        self.ae.add_requested_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        self.ae.connection_timeout = timeout_s
        self.association: pynetdicom.association.Association | None = None

    def _associated(self) -> pynetdicom.association.Association:
        if self.association is None or not self.association.is_established:
            self.association = self.ae.associate(self.host, self.port, ae_title=self.called, evt_handlers=[NO_DELAY])
            if self.association.is_rejected:
                raise PushError(f"{self.name} rejected the association (calling AE title {self.ae.ae_title}): check "
                                "the called AE title, and that the PACS knows ours (its list of modalities)")
            if not self.association.is_established:
                raise _Retry()
        return self.association

    def _exchange(self, what: str, call: Callable[[pynetdicom.association.Association], T]) -> T:
        def attempt() -> T:
            try:
                return call(self._associated())
            except _Retry:
                self.close()  # the next attempt opens a new association
                raise

        try:
            return retrying(attempt, retries=self.retries, backoff_s=self.backoff_s,
                            retriable=lambda error: isinstance(error, _Retry))
        except _Retry:
            pass
        raise PushError(f"{self.name} could not be reached or did not answer for {what}: check HOST:PORT:AET, that "
                        "the server runs and accepts associations from here")

    def metadata(self, link: Link, where: str) -> Dataset:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID, query.SeriesInstanceUID = link.original_study_uid, link.original_series_uid
        query.SOPInstanceUID = link.original_sop_instance_uid
        for keyword in FIND_KEYS:
            setattr(query, keyword, "")
        what = f"{where} (finding its original instance)"
        matches = self._exchange(what, lambda association: self._find(association, query, what))
        if len(matches) != 1:
            problem = "it is not on the server (deleted, or another PACS?)" if not matches else "more than one"
            raise PushError(f"{self.name} found {len(matches)} instances for the original of {where}: {problem}")
        match = matches[0]
        for keyword in ("QueryRetrieveLevel", "RetrieveAETitle"):
            if keyword in match:
                delattr(match, keyword)
        return match

    def store(self, sr: Dataset, where: str) -> None:
        status = self._exchange(f"{where} (storing its SR)", lambda association: _status(
            association.send_c_store(sr)))
        if status not in STORED:
            raise PushError(f"{self.name} refused the SR of {where} (C-STORE status 0x{status:04X}): check that it "
                            "accepts Comprehensive 3D SR and has room")

    def _find(self, association: pynetdicom.association.Association, query: Dataset, what: str) -> list[Dataset]:
        """The matches of a C-FIND; a second one ends it (one is wanted)."""
        matches: list[Dataset] = []
        with no_value_validation():
            for status, identifier in association.send_c_find(query, STUDY_ROOT_FIND):
                code = _status(status)
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    matches.append(identifier)
                    if len(matches) > 1:
                        association.abort()
                        break
                elif code != 0x0000:
                    raise PushError(f"{self.name} refused the C-FIND for {what} (status 0x{code:04X}): check that it "
                                    "allows our queries (Orthanc: DicomAlwaysAllowFind, or our AE in DicomModalities)")
        return matches

    def close(self) -> None:
        if self.association is not None and self.association.is_established:
            self.association.release()
        self.association = None


def _status(answer: Dataset) -> int:
    """A DIMSE response's status; an empty one (no answer: timeout, abort) is worth another try."""
    if "Status" not in answer:
        raise _Retry()
    return int(answer.Status)


def push_predictions(predictions: str | Path | Mapping[str, Any] | Sequence[Prediction], *, link_path: str | Path,
                     model: str | Path | ModelIdentity, dicomweb: str | None = None,
                     dimse: tuple[str, int, str] | None = None, calling_ae_title: str = CALLING_AE_TITLE,
                     timeout_s: float = 30, retries: int = 3, backoff_s: float = 0.5,
                     max_bytes: int = MAX_PREDICTIONS_BYTES, max_predictions: int = MAX_PREDICTIONS) -> PushReport:
    """Store one SR per prediction in the original study, over DICOMweb (`dicomweb`, the root URL) or DIMSE
    (`dimse`, (host, port, called AE title)).

    Args:
        predictions: the predictions JSON file `python -m training.predict` printed, its parsed document, or what
            `read_predictions` made of it.
        link_path: the link file the pull wrote (pseudonymous SOPInstanceUID to the originals).
        model: the bundle directory that made the predictions, or its identity.

    Raises:
        PushError: exactly one of dicomweb and dimse is not given; the predictions are over a bound or malformed;
            a prediction is not in the link, or its original is gone or now of another PatientID; the server cannot
            be reached or refuses. Each names predictions by position, never by UID.
        LinkFileError: the link file is not made of link records.
        BundleIdentityError: the bundle has no name, version or weights.
    """
    started = time.monotonic()
    if (dicomweb is None) == (dimse is None):
        raise PushError("push to one server: give dicomweb (a URL) or dimse ((host, port, AE title)), not both")
    identity = model if isinstance(model, ModelIdentity) else ModelIdentity.from_bundle(model)
    todo = _linked(read_predictions(predictions, max_bytes=max_bytes, max_count=max_predictions), Path(link_path))
    target: _Target = (
        _DicomWeb(dicomweb, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s) if dicomweb is not None
        else _Dimse(dimse or ("", 0, ""), calling_ae_title=calling_ae_title, timeout_s=timeout_s, retries=retries,
                    backoff_s=backoff_s))
    report = PushReport(predictions=len(todo), studies=len({link.original_study_uid for _, link in todo}))
    try:
        for n, (prediction, link) in enumerate(todo, 1):
            where = f"prediction {n} of {len(todo)}"
            target.store(_sr(target.metadata(link, where), prediction, link, identity, where), where)
            report.stored += 1
            LOG.debug("%s stored", where)
    finally:
        target.close()
    report.seconds = time.monotonic() - started
    LOG.info("pushed %d SRs into %d studies in %.1f s", report.stored, report.studies, report.seconds)
    return report


def _linked(predictions: Sequence[Prediction], link_path: Path) -> list[tuple[Prediction, Link]]:
    """Each prediction with its link record; all or nothing (see the module's docstring)."""
    try:
        links = read_link(link_path)
    except FileNotFoundError:
        raise PushError(f"the link file {link_path} does not exist: pass the one the pull wrote (by default "
                        "OUT.link.jsonl next to the pull's OUT)") from None
    missing = [n for n, p in enumerate(predictions, 1) if p.sop_instance_uid not in links]
    if missing:
        raise PushError(f"{len(missing)} of {len(predictions)} predictions are not in the link file {link_path}, "
                        f"the first prediction {missing[0]} of {len(predictions)}: were they made from another pull's "
                        "files? Pass that pull's link file; nothing was pushed")
    return [(p, links[p.sop_instance_uid]) for p in predictions]


def _sr(evidence: Dataset, prediction: Prediction, link: Link, model: ModelIdentity, where: str) -> Dataset:
    """The SR of `prediction` for its original instance, once that is checked to be the linked patient's."""
    if str(evidence.get("PatientID", "")) != link.original_patient_id:
        raise PushError(f"{where}: the PatientID the server holds for its original instance is not the one "
                        "recorded at the pull: the patient was changed or merged since; check, then pull again")
    if str(evidence.get("SOPInstanceUID", "")) != link.original_sop_instance_uid or "SOPClassUID" not in evidence:
        raise PushError(f"{where}: the server's metadata of its original instance lacks its SOP class or instance")
    try:
        return classification_sr(evidence, label=prediction.label, probability=prediction.probability, model=model)
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # highdicom's text may quote a value
        raise PushError(f"{where}: its SR could not be made from its original's metadata ({type(error).__name__}): "
                        "check the original instance on the server") from None

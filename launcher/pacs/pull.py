"""Pull studies from a PACS over DICOMweb, de-identified on the way in (issue 20 item 1, DICOMweb).

`pull_dicomweb(url, out, key=..., link_path=...)` finds studies with QIDO-RS (the given StudyInstanceUIDs, or a search
paged with offset and limit past the server's result limit), lists each study's instances with QIDO-RS and retrieves
them with WADO-RS (`dicomweb-client`), a few at a time (`workers`). Each instance is

- refused when `import_refusal` says its pixels may show identifiers (listed in the report by position);
- de-identified (`Deidentifier`) in memory, before anything is written;
- linked: its link record appended to the owner-only link file, which must lie outside OUT;
- written as OUT/<study>/<series>/<instance>.dcm (pseudonymous UIDs), through a temporary file in the same folder
  and `os.replace`, so OUT never holds a half-written file.

Resumption: the pseudonyms are keyed and stable, so the file an instance would become is known from its original
UIDs before retrieving it (`Deidentifier.pseudonym_uid`); an instance whose file is there is not retrieved again, and
a second pull transfers nothing. Bounds: a response (an instance) over `max_instance_bytes` is refused while it is read,
a pull lists at most `max_instances` instances, every request has a timeout. Timeouts, connection errors, 429 and 5xx
are retried `retries` times with exponential backoff. Errors and logs name a study by its position ("study 2 of 3"),
never by a UID; the request URLs (which hold UIDs) are kept out of them, dicomweb-client's and urllib3's debug
records included.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from launcher.pacs.deidentify import DeidentificationError, Deidentifier, LinkFile, import_refusal

__all__ = ["MAX_INSTANCE_BYTES", "MAX_INSTANCES", "PullError", "PullReport", "pull_dicomweb"]

LOG = logging.getLogger(__name__)
MAX_INSTANCE_BYTES = 1 << 30  # a response (one instance, or one page of a search) larger than this is refused
MAX_INSTANCES = 100_000  # instances one pull may list
PAGE_SIZE = 100  # QIDO-RS results asked per request
BrokenOff = requests.exceptions.ChunkedEncodingError  # an answer cut short (what requests calls it)
RETRIABLE_STATUS = frozenset({429, 500, 502, 503, 504})
SERIES_UID, SOP_UID, STUDY_UID = "0020000E", "00080018", "0020000D"
T = TypeVar("T")


class PullError(RuntimeError):
    """A pull that cannot go on; the message says what and what to do, and names no identifier."""


class _TooLarge(PullError):
    pass


@dataclass
class PullReport:
    """What a pull did: instances found, retrieved (WADO-RS transfers), written, skipped (already there), refused."""

    studies: int = 0
    found: int = 0
    retrieved: int = 0
    written: int = 0
    skipped: int = 0
    refused: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Instance:
    where: str  # "instance 3 of study 2": what errors and the report say
    study: str
    series: str
    sop: str


class _QuietTransport(logging.Filter):
    """Drops the HTTP libraries' records below WARNING: they quote request URLs, which hold UIDs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_QUIET = _QuietTransport()
for _name in ("dicomweb_client.web", "urllib3.connectionpool"):  # a filter sees only its own logger's records
    logging.getLogger(_name).addFilter(_QUIET)


def _bounded_session(max_bytes: int) -> requests.Session:
    """A session whose responses are read whole (before the client parses them) and refused beyond `max_bytes`."""

    def read_bounded(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            response.close()
            raise _TooLarge(f"a response of {declared} bytes is over the limit of {max_bytes} bytes")
        chunks, total = [], 0
        for chunk in response.iter_content(1 << 20):
            total += len(chunk)
            if total > max_bytes:
                response.close()
                raise _TooLarge(f"a response is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        response._content = b"".join(chunks)
        return response

    session = requests.Session()
    session.hooks["response"].append(read_bounded)
    return session


def _retrying(call: Callable[[], T], *, retries: int, backoff_s: float) -> T:
    """`call()`, again after a timeout, a connection error, 429 or 5xx, waiting backoff_s, 2*backoff_s, ..."""
    for attempt in range(retries + 1):
        try:
            return call()
        except (requests.Timeout, requests.ConnectionError, requests.HTTPError, BrokenOff) as error:
            status = error.response.status_code if error.response is not None else None
            if attempt == retries or (isinstance(error, requests.HTTPError) and status not in RETRIABLE_STATUS):
                raise
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class _Puller:
    """One pull's state: the clients (one per thread), the de-identifier, the link file and the report."""

    def __init__(self, url: str, out: Path, deidentifier: Deidentifier, links: LinkFile, options: dict[str, Any]):
        self.url, self.out, self.deid, self.links, self.options = url, out, deidentifier, links, options
        self.report = PullReport()
        self._local = threading.local()
        self._lock = threading.Lock()

    def client(self) -> DICOMwebClient:
        if not hasattr(self._local, "client"):
            session = _bounded_session(self.options["max_instance_bytes"])
            client = DICOMwebClient(self.url, session=session, timeout=self.options["timeout_s"])
            client.set_http_retry_params(retry=False)  # ours retries timeouts and connection errors too
            self._local.client = client
        return self._local.client  # type: ignore[no-any-return]

    def request(self, what: str, call: Callable[[DICOMwebClient], T]) -> T:
        """`call(client)` with retries; its failure as a PullError naming `what`, never the URL it asked."""
        try:
            return _retrying(lambda: call(self.client()), retries=self.options["retries"],
                             backoff_s=self.options["backoff_s"])
        except (requests.ConnectionError, requests.Timeout) as error:
            raise PullError(f"the DICOMweb server at {self.url} could not be reached ({type(error).__name__}) "
                            f"while asking for {what}: check the URL (the DICOMweb root, e.g. "
                            "http://host:8042/dicom-web), that the server runs and answers from here") from None
        except BrokenOff:
            raise PullError(f"the DICOMweb server at {self.url} broke off its answer to the request for {what}: "
                            "check the server and the network, then pull again (what was pulled is kept)") from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else "?"
            raise PullError(f"the DICOMweb server at {self.url} answered HTTP {status} to the request for {what}: "
                            "check the URL and your access to it") from None

    def paged(self, what: str, search: Callable[[DICOMwebClient, int, int], list[dict[str, Any]]]) -> list[dict]:
        """Every result of a QIDO-RS search, page by page until a page comes back empty. A short page does not end
        it: a server may answer fewer than asked (its own result limit, e.g. Orthanc's LimitFindResults), and the
        next offset then asks for the rest. A page equal to the one before ends it too (a server ignoring offset)."""
        found: list[dict[str, Any]] = []
        page, previous = self.options["page_size"], None
        while True:
            offset = len(found)
            batch = self.request(what, lambda client: search(client, offset, page))  # noqa: B023 (called at once)
            if not batch or batch == previous:
                return found
            found += batch
            previous = batch
            if len(found) > self.options["max_instances"]:
                raise PullError(f"{what} found more than {self.options['max_instances']} results: narrow the query "
                                "or raise max_instances")

    def instances(self, study: str, where: str) -> list[_Instance]:
        items = self.paged(f"the instances of {where}", lambda client, offset, limit: client.search_for_instances(
            study_instance_uid=study, offset=offset, limit=limit, fields=["SeriesInstanceUID"]))
        return [_Instance(f"instance {n} of {where}", study, _value(item, SERIES_UID), _value(item, SOP_UID))
                for n, item in enumerate(items, 1)]

    def target(self, instance: _Instance) -> Path:
        parts = (self.deid.pseudonym_uid(uid) for uid in (instance.study, instance.series, instance.sop))
        study, series, sop = parts
        return self.out / study / series / f"{sop}.dcm"

    def fetch(self, instance: _Instance) -> None:
        """Retrieve, check, de-identify, link and write one instance."""
        try:
            dataset = self.request(instance.where, lambda client: client.retrieve_instance(
                instance.study, instance.series, instance.sop))
        except _TooLarge as error:
            self._refuse(instance, str(error))
            return
        with self._lock:
            self.report.retrieved += 1
        reason = import_refusal(dataset, allow_burned_in=self.options["allow_burned_in"])
        if reason is None:
            try:
                link = self.deid.deidentify(dataset)
            except DeidentificationError as error:
                reason = str(error)
        if reason is not None:
            self._refuse(instance, reason)
            return
        folder = self.out / str(dataset.StudyInstanceUID) / str(dataset.SeriesInstanceUID)
        with self._lock:
            self.links.add(link)  # the link first: a file is never without its way back
        _write_atomically(dataset, folder / f"{link.sop_instance_uid}.dcm")
        with self._lock:
            self.report.written += 1

    def _refuse(self, instance: _Instance, reason: str) -> None:
        LOG.warning("%s refused: %s", instance.where, reason)
        with self._lock:
            self.report.refused.append(f"{instance.where}: {reason}")


def _write_atomically(dataset: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".pulling-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pull_dicomweb(url: str, out: str | Path, *, key: bytes, link_path: str | Path, studies: Iterable[str] = (),
                  query: Mapping[str, str] | None = None, allow_burned_in: bool = False, workers: int = 4,
                  timeout_s: float = 30, retries: int = 3, backoff_s: float = 0.5,
                  max_instances: int = MAX_INSTANCES, max_instance_bytes: int = MAX_INSTANCE_BYTES,
                  page_size: int = PAGE_SIZE) -> PullReport:
    """Pull the given studies (or those `query` finds, or all) from the DICOMweb root `url` into `out`, de-identified.

    Raises:
        PullError: the server cannot be reached or refuses, a given study is not there (named by its position),
            the pull would list more than `max_instances` instances.
        LinkFileError: the link file is inside `out` or readable by others.
    """
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"allow_burned_in": allow_burned_in, "timeout_s": timeout_s, "retries": retries, "backoff_s": backoff_s,
               "max_instances": max_instances, "max_instance_bytes": max_instance_bytes, "page_size": page_size}
    with LinkFile(link_path, outside=[out]) as links:
        puller = _Puller(url.rstrip("/"), out, Deidentifier(key), links, options)
        todo = _listing(puller, list(studies), dict(query or {}))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(puller.fetch, instance) for instance in todo]
            try:
                for done in futures:
                    done.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the first failure ends the pull; finished files stay whole
                raise
    puller.report.seconds = time.monotonic() - started
    LOG.info("pulled %d of %d instances (%d already there, %d refused) in %.1f s", puller.report.written,
             puller.report.found, puller.report.skipped, len(puller.report.refused), puller.report.seconds)
    return puller.report


def _listing(puller: _Puller, studies: list[str], query: dict[str, str]) -> list[_Instance]:
    """The instances to retrieve: those of every study, less those already in OUT (counted as skipped)."""
    if studies:
        named = [(uid, f"study {n} of {len(studies)}") for n, uid in enumerate(studies, 1)]
    else:
        found = puller.paged("the studies", lambda client, offset, limit: client.search_for_studies(
            offset=offset, limit=limit, search_filters=query))
        named = [(_value(item, STUDY_UID), f"study {n} of the {len(found)} found")
                 for n, item in enumerate(found, 1)]
    report, todo = puller.report, []
    report.studies = len(named)
    for uid, where in named:
        instances = puller.instances(uid, where)
        if not instances and studies:
            raise PullError(f"{where} was not found on the server (no instances): check that StudyInstanceUID")
        report.found += len(instances)
        if report.found > puller.options["max_instances"]:
            raise PullError(f"the pull lists more than {puller.options['max_instances']} instances: pull fewer "
                            "studies at a time or raise max_instances")
        for instance in instances:
            if puller.target(instance).is_file():
                report.skipped += 1
            else:
                todo.append(instance)
    return todo

"""Pull studies from a PACS over DICOMweb, de-identified on the way in (issue 20 item 1, DICOMweb), and find studies.

`pull_dicomweb(url, out, key=..., link_path=...)` finds studies with QIDO-RS (the given StudyInstanceUIDs, or a search
paged with offset and limit past the server's result limit), lists each study's instances with QIDO-RS and retrieves
them with WADO-RS (`dicomweb-client`), a few at a time (`workers`). What it does with each instance (refusal,
de-identification, the link file, atomic writes, resumption, the report, errors by position) is intake.py's, shared
with the DIMSE pull (dimse.py). Bounds: a response (an instance) over `max_instance_bytes` is refused while it is read,
a pull lists at most `max_instances` instances, every request has a timeout. Timeouts, connection errors, 429 and 5xx
are retried `retries` times with exponential backoff. The request URLs (which hold UIDs) are kept out of errors and
logs, dicomweb-client's and urllib3's debug records included.

`find_studies(source, filters)` gives the original StudyInstanceUIDs that match, from a DICOMweb root URL (QIDO-RS)
or a `DimseAddress` (C-FIND): what the labels step uses to map an AccessionNumber to its study.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from launcher.pacs.deidentify import Deidentifier, LinkFile
from launcher.pacs.dimse import DimseAddress, dimse_intake
from launcher.pacs.intake import (
    MAX_INSTANCE_BYTES,
    MAX_INSTANCES,
    Instance,
    Intake,
    PullError,
    PullReport,
    TooLarge,
    retrying,
    run_pull,
)

__all__ = ["MAX_INSTANCE_BYTES", "MAX_INSTANCES", "PullError", "PullReport", "find_studies", "pull_dicomweb"]

PAGE_SIZE = 100  # QIDO-RS results asked per request
BrokenOff = requests.exceptions.ChunkedEncodingError  # an answer cut short (what requests calls it)
RETRIABLE_STATUS = frozenset({429, 500, 502, 503, 504})
SERIES_UID, SOP_UID, STUDY_UID, SOP_CLASS = "0020000E", "00080018", "0020000D", "00080016"
T = TypeVar("T")


class _QuietTransport(logging.Filter):
    """Drops the HTTP libraries' records below WARNING: they quote request URLs, which hold UIDs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_QUIET = _QuietTransport()
for _name in ("dicomweb_client.web", "urllib3.connectionpool"):  # a filter sees only its own logger's records
    logging.getLogger(_name).addFilter(_QUIET)


def bounded_session(max_bytes: int) -> requests.Session:
    """A session whose responses are read whole (before the client parses them) and refused beyond `max_bytes`."""

    def read_bounded(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            response.close()
            raise TooLarge(f"a response of {declared} bytes is over the limit of {max_bytes} bytes")
        chunks, total = [], 0
        for chunk in response.iter_content(1 << 20):
            total += len(chunk)
            if total > max_bytes:
                response.close()
                raise TooLarge(f"a response is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        response._content = b"".join(chunks)
        return response

    session = requests.Session()
    session.hooks["response"].append(read_bounded)
    return session


def retriable_http(error: Exception) -> bool:
    """A timeout, a connection error, an answer cut short, 429 or 5xx."""
    if isinstance(error, requests.HTTPError):
        return error.response is not None and error.response.status_code in RETRIABLE_STATUS
    return isinstance(error, (requests.Timeout, requests.ConnectionError, BrokenOff))


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class _Puller(Intake):
    """The DICOMweb transport: QIDO-RS and WADO-RS through dicomweb-client (one client per thread)."""

    def __init__(self, url: str, out: Path, deidentifier: Deidentifier | None, links: LinkFile | None,
                 options: dict[str, Any]) -> None:
        super().__init__(out, deidentifier, links, options)
        self.url = url
        self._local = threading.local()

    def client(self) -> DICOMwebClient:
        if not hasattr(self._local, "client"):
            session = bounded_session(self.options["max_instance_bytes"])
            client = DICOMwebClient(self.url, session=session, timeout=self.options["timeout_s"])
            client.set_http_retry_params(retry=False)  # ours retries timeouts and connection errors too
            self._local.client = client
        return self._local.client  # type: ignore[no-any-return]

    def request(self, what: str, call: Callable[[DICOMwebClient], T]) -> T:
        """`call(client)` with retries; its failure as a PullError naming `what`, never the URL it asked."""
        try:
            return retrying(lambda: call(self.client()), retries=self.options["retries"],
                            backoff_s=self.options["backoff_s"], retriable=retriable_http)
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

    def studies(self, query: Mapping[str, str]) -> list[str]:
        found = self.paged("the studies", lambda client, offset, limit: client.search_for_studies(
            offset=offset, limit=limit, search_filters=dict(query)))
        return [_value(item, STUDY_UID) for item in found]

    def instances(self, study: str, where: str) -> list[Instance]:
        items = self.paged(f"the instances of {where}", lambda client, offset, limit: client.search_for_instances(
            study_instance_uid=study, offset=offset, limit=limit, fields=["SeriesInstanceUID", "SOPClassUID"]))
        return [Instance(f"instance {n} of {where}", study, _value(item, SERIES_UID), _value(item, SOP_UID),
                         _value(item, SOP_CLASS)) for n, item in enumerate(items, 1)]

    def retrieve(self, instance: Instance) -> Dataset:
        return self.request(instance.where, lambda client: client.retrieve_instance(
            instance.study, instance.series, instance.sop))


def pull_dicomweb(url: str, out: str | Path, *, key: bytes, link_path: str | Path, studies: Iterable[str] = (),
                  query: Mapping[str, str] | None = None, allow_burned_in: bool = False, workers: int = 4,
                  timeout_s: float = 30, retries: int = 3, backoff_s: float = 0.5,
                  max_instances: int = MAX_INSTANCES, max_instance_bytes: int = MAX_INSTANCE_BYTES,
                  page_size: int = PAGE_SIZE, progress: bool = True) -> PullReport:
    """Pull the given studies (or those `query` finds, or all) from the DICOMweb root `url` into `out`, de-identified.

    Raises:
        PullError: the server cannot be reached or refuses, a given study is not there (named by its position),
            the pull would list more than `max_instances` instances.
        LinkFileError: the link file is inside `out` or readable by others.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(allow_burned_in=allow_burned_in, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                       max_instances=max_instances, max_instance_bytes=max_instance_bytes, page_size=page_size)
    with LinkFile(link_path, outside=[out]) as links:
        puller = _Puller(url.rstrip("/"), out, Deidentifier(key), links, options)
        return run_pull(puller, list(studies), dict(query or {}), workers=workers, progress=progress)


def find_studies(source: str | DimseAddress, filters: Mapping[str, str], *, timeout_s: float = 30, retries: int = 3,
                 backoff_s: float = 0.5, max_studies: int = MAX_INSTANCES) -> list[str]:
    """The original StudyInstanceUIDs of the studies that match `filters` (e.g. {"AccessionNumber": "X"}).

    Args:
        source: a DICOMweb root URL (searched with QIDO-RS) or a `DimseAddress` (searched with C-FIND at STUDY level).
        filters: attribute keyword to value, as QIDO-RS and C-FIND match them (wildcards `*` and `?` included).
        timeout_s, retries, backoff_s: per request, as for a pull.
        max_studies: more matches than this is an error (narrow the filters).

    Raises:
        PullError: the server cannot be reached or refuses, or more than `max_studies` studies match.
    """
    options = dict(allow_burned_in=False, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                       max_instances=max_studies, max_instance_bytes=MAX_INSTANCE_BYTES, page_size=PAGE_SIZE)
    if isinstance(source, DimseAddress):
        intake: Intake = dimse_intake(source, options)
    else:
        intake = _Puller(source.rstrip("/"), Path(), None, None, options)
    try:
        return intake.studies(filters)
    finally:
        intake.close()

"""What a pull does whatever the transport (issue 20 item 1): list, skip what is there, check, de-identify, link, write.

A transport (DICOMweb in pull.py, DIMSE in dimse.py) subclasses `Intake` and says how to find studies, list a study's
instances and retrieve one instance as a pydicom Dataset; `run_pull` does the rest, the same for both:

- listing: the given studies (a study with no instance is an error naming its position, "study 2 of 3") or those a
  query finds, then their instances, at most `max_instances` in all; an instance whose file is already in OUT is
  skipped before anything is retrieved (the keyed pseudonyms say where it would be: `Deidentifier.pseudonym_uid`), so
  a second pull transfers nothing;
- each retrieved instance, in memory: refused when `import_refusal` says its pixels may show identifiers, or when it
  is over `max_instance_bytes` (a transport raises `TooLarge` while receiving it); otherwise de-identified, its link
  record appended to the owner-only link file (which must lie outside OUT) and only then written as
  OUT/<study>/<series>/<instance>.dcm through a temporary file and `os.replace`, so OUT never holds a half-written file;
- `workers` instances at a time; the first failure ends the pull and what was written stays whole;
- one progress bar of instances on stderr, off when stderr is not a terminal or with `progress=False`; it shows
  counts only, never a UID.

Errors and logs name a study or an instance by its position, never by a UID or any other identifier.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from tqdm import tqdm

from launcher.pacs.deidentify import DeidentificationError, Deidentifier, LinkFile, import_refusal

__all__ = ["MAX_INSTANCE_BYTES", "MAX_INSTANCES", "Instance", "Intake", "PullError", "PullReport", "Refused",
           "TooLarge", "retrying", "run_pull"]

LOG = logging.getLogger(__name__)
MAX_INSTANCE_BYTES = 1 << 30  # a response (one instance, or one page of a search) larger than this is refused
MAX_INSTANCES = 100_000  # instances one pull may list
# Storage classes that hold no image: structured reports (and key object selections, the results a push stores),
# presentation states, encapsulated documents. Listed, not retrieved; a retrieved instance without pixel data is
# refused too (the job trains on images).
NOT_IMAGES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.104.")
PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
T = TypeVar("T")


class PullError(RuntimeError):
    """A pull that cannot go on; the message says what and what to do, and names no identifier."""


class Refused(PullError):
    """An instance that is refused as it arrives (listed in the report); the pull goes on."""


class TooLarge(Refused):
    """An instance (or an answer) over the size limit."""


@dataclass
class PullReport:
    """What a pull did: instances found, retrieved (transfers), written, skipped (already there), not images
    (structured reports and other documents, ours included: not retrieved), refused."""

    studies: int = 0
    found: int = 0
    retrieved: int = 0
    written: int = 0
    skipped: int = 0
    not_images: int = 0
    refused: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Instance:
    """One instance to pull: where it stands ("instance 3 of study 2", what errors say) and its original UIDs."""

    where: str
    study: str
    series: str
    sop: str
    sop_class: str = ""  # from the listing where the transport gives it (DIMSE proposes contexts from it)


def retrying(call: Callable[[], T], *, retries: int, backoff_s: float, retriable: Callable[[Exception], bool]) -> T:
    """`call()`, again after an error `retriable` accepts, waiting backoff_s, 2*backoff_s, ... (`retries` times)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as error:
            if attempt == retries or not retriable(error):
                raise
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


class Intake(ABC):
    """One pull's state: OUT, the de-identifier, the link file, the options and the report; a transport fills in
    `studies`, `instances` and `retrieve` (and `close`, for what it holds open)."""

    def __init__(self, out: Path, deidentifier: Deidentifier | None, links: LinkFile | None,
                 options: dict[str, Any]) -> None:
        self.out, self.deid, self.links, self.options = out, deidentifier, links, options
        self.report = PullReport()
        self._lock = threading.Lock()

    @abstractmethod
    def studies(self, query: Mapping[str, str]) -> list[str]:
        """The original StudyInstanceUIDs that `query` matches (all studies for an empty query)."""

    @abstractmethod
    def instances(self, study: str, where: str) -> list[Instance]:
        """The instances of `study` (named `where` in errors); none when the server has no such study."""

    @abstractmethod
    def retrieve(self, instance: Instance) -> Dataset:
        """The instance as received, in memory; raises Refused (TooLarge: over `max_instance_bytes`) or PullError."""

    def close(self) -> None:  # noqa: B027 (a transport with nothing open has nothing to do)
        """Let go of what the transport holds open (associations, servers)."""

    def target(self, instance: Instance) -> Path:
        if self.deid is None:
            raise TypeError("a listing-only intake has no de-identifier")
        parts = (self.deid.pseudonym_uid(uid) for uid in (instance.study, instance.series, instance.sop))
        study, series, sop = parts
        return self.out / study / series / f"{sop}.dcm"

    def fetch(self, instance: Instance) -> None:
        """Retrieve, check, de-identify, link and write one instance."""
        try:
            dataset = self.retrieve(instance)
        except Refused as error:
            self.refuse(instance, str(error))
            return
        with self._lock:
            self.report.retrieved += 1
        self.accept(instance, dataset)

    def accept(self, instance: Instance, dataset: Dataset) -> None:
        """Refuse `dataset`, or de-identify it, link it and write it."""
        if self.deid is None or self.links is None:
            raise TypeError("a listing-only intake cannot write")
        reason = import_refusal(dataset, allow_burned_in=self.options["allow_burned_in"])
        if reason is None and not any(keyword in dataset for keyword in PIXEL_DATA):
            reason = "it holds no pixel data (not an image)"
        if reason is None:
            try:
                link = self.deid.deidentify(dataset)
            except DeidentificationError as error:
                reason = str(error)
        if reason is not None:
            self.refuse(instance, reason)
            return
        folder = self.out / str(dataset.StudyInstanceUID) / str(dataset.SeriesInstanceUID)
        with self._lock:
            self.links.add(link)  # the link first: a file is never without its way back
        write_atomically(dataset, folder / f"{link.sop_instance_uid}.dcm")
        with self._lock:
            self.report.written += 1

    def refuse(self, instance: Instance, reason: str) -> None:
        LOG.warning("%s refused: %s", instance.where, reason)
        with self._lock:
            self.report.refused.append(f"{instance.where}: {reason}")


def write_atomically(dataset: Dataset, path: Path) -> None:
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


def run_pull(intake: Intake, studies: list[str], query: Mapping[str, str], *, workers: int,
             progress: bool) -> PullReport:
    """List, then fetch `workers` instances at a time with a progress bar; the report, timed. Closes `intake`."""
    started = time.monotonic()
    try:
        todo = _listing(intake, studies, query)
        bar = tqdm(total=len(todo), unit="instance", desc="pull", file=sys.stderr,
                   disable=not progress or not sys.stderr.isatty())
        with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(intake.fetch, instance) for instance in todo]
            try:
                for done in futures:
                    done.result()
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the first failure ends the pull; finished files stay whole
                raise
    finally:
        intake.close()
    report = intake.report
    report.seconds = time.monotonic() - started
    LOG.info("pulled %d of %d instances (%d already there, %d refused) in %.1f s", report.written, report.found,
             report.skipped, len(report.refused), report.seconds)
    return report


def _listing(intake: Intake, studies: list[str], query: Mapping[str, str]) -> list[Instance]:
    """The instances to retrieve: those of every study, less those already in OUT (counted as skipped)."""
    if studies:
        named = [(uid, f"study {n} of {len(studies)}") for n, uid in enumerate(studies, 1)]
    else:
        found = intake.studies(query)
        named = [(uid, f"study {n} of the {len(found)} found") for n, uid in enumerate(found, 1)]
    report, todo, limit = intake.report, [], intake.options["max_instances"]
    report.studies = len(named)
    for uid, where in named:
        instances = intake.instances(uid, where)
        if not instances and studies:
            raise PullError(f"{where} was not found on the server (no instances): check that StudyInstanceUID")
        report.found += len(instances)
        if report.found > limit:
            raise PullError(f"the pull lists more than {limit} instances: pull fewer studies at a time or raise "
                            "max_instances")
        for instance in instances:
            if instance.sop_class.startswith(NOT_IMAGES):
                report.not_images += 1
            elif intake.target(instance).is_file():
                report.skipped += 1
            else:
                todo.append(instance)
    return todo

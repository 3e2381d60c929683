"""What the tests of launcher/pacs share: a real Orthanc seeded with the test's files (started and stopped here,
failing with how to install it when it is missing), and the original UIDs a pulled file must not hold."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from demo.orthanc import Orthanc, orthanc_missing, start_orthanc


@contextmanager
def seeded_orthanc(folder: Path, datasets: Sequence[Dataset]) -> Iterator[Orthanc]:
    """A running Orthanc in `folder` holding `datasets` (stored over STOW-RS); stopped on exit."""
    missing = orthanc_missing()
    if missing:
        pytest.fail(missing)
    server = start_orthanc(folder)
    try:
        DICOMwebClient(server.dicomweb).store_instances(datasets=list(datasets))
        yield server
    finally:
        server.stop()


def original_uids(dataset: Dataset) -> set[str]:
    """Every instance UID the dataset holds (class and transfer syntax UIDs are public constants)."""
    found: set[str] = set()

    def visit(ds: Dataset, element: pydicom.DataElement) -> None:
        if element.VR == "UI" and element.value and not element.keyword.endswith("ClassUID"):
            found.update(str(v) for v in (element.value if element.VM > 1 else [element.value]))

    dataset.walk(visit)
    return found

"""The PACS round trip's figures: instances per second pulled from a local Orthanc, and de-identification per file.

    python -m bench.pacs [--instances 200] [--studies 10]

Stores `--instances` copies of pydicom's CT_small (39 kB, one series per study) in an Orthanc started here
(demo/orthanc.py), then pulls them all, into a fresh folder each time, over DICOMweb (QIDO-RS, WADO-RS), DIMSE C-GET
and DIMSE C-MOVE (to a storage SCP started here), with 1 and 4 workers, side by side in one run; the time includes
the listing. De-identification is timed alone (Deidentifier.deidentify on in-memory copies). The machine's load
average is printed before and after: these machines are shared, so compare only figures of one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from bench.measure import load_average, machine
from demo.orthanc import free_port, register_modality, start_orthanc
from launcher.pacs.deidentify import Deidentifier
from launcher.pacs.dimse import DimseAddress, pull_dimse
from launcher.pacs.intake import PullReport
from launcher.pacs.pull import pull_dicomweb

KEY = bytes(range(32))
MOVE_AET = "BENCH-MOVE"


def _instances(count: int, studies: int) -> list[pydicom.Dataset]:
    source = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    made: list[pydicom.Dataset] = []
    for number in range(count):
        if number % max(1, count // studies) == 0:
            study, series, patient = generate_uid(), generate_uid(), f"BENCH-{number}"
        dataset = copy.deepcopy(source)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.PatientID = study, series, patient
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        made.append(dataset)
    return made


def _deidentify_ms(datasets: list[pydicom.Dataset]) -> float:
    copies = [copy.deepcopy(d) for d in datasets]
    deidentifier = Deidentifier(KEY)
    started = time.perf_counter()
    for dataset in copies:
        deidentifier.deidentify(dataset)
    return (time.perf_counter() - started) / len(copies) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pacs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--studies", type=int, default=10)
    args = parser.parse_args(argv)
    datasets = _instances(args.instances, args.studies)
    results: dict[str, object] = {"machine": machine(), "instances": args.instances, "load_before": load_average(),
                                  "deidentify_ms_per_file": round(_deidentify_ms(datasets), 2)}
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as folder:
        base = Path(folder)
        server = start_orthanc(base / "orthanc")
        try:
            client = DICOMwebClient(server.dicomweb)
            for start in range(0, len(datasets), 50):
                client.store_instances(datasets=datasets[start:start + 50])
            port = free_port()
            register_modality(server, "pull", "MONAI-PULL", 1)
            register_modality(server, "move", MOVE_AET, port)
            address = DimseAddress("127.0.0.1", server.dicom_port, "PACSTEST")
            pulls: dict[str, Callable[[Path, Path, int], PullReport]] = {
                "DICOMweb": lambda out, link, workers: pull_dicomweb(
                    server.dicomweb, out, key=KEY, link_path=link, workers=workers, progress=False),
                "C-GET": lambda out, link, workers: pull_dimse(
                    address, out, key=KEY, link_path=link, workers=workers, progress=False),
                "C-MOVE": lambda out, link, workers: pull_dimse(
                    address, out, key=KEY, link_path=link, workers=workers, progress=False,
                    move_to=f"{MOVE_AET}:{port}"),
            }
            rates = {}
            for workers in (1, 4):
                for name, pull in pulls.items():
                    report = pull(base / f"{name}-{workers}", base / f"{name}-{workers}.link", workers)
                    if report.written != args.instances:
                        raise SystemExit(f"{name} with {workers} workers wrote {report.written} of {args.instances}")
                    rates[f"{name}, {workers} worker{'s' * (workers > 1)}"] = round(args.instances / report.seconds, 1)
            results["instances_per_second"] = rates
        finally:
            server.stop()
    results["load_after"] = load_average()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

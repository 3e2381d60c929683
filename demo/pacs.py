"""The PACS of `make demo` and of the notebook's journey test: a local Orthanc holding the synthetic set.

`seed_synthetic(dicomweb_root, folder, train_images=..., test_images=...)` generates the synthetic set
(training/local_demo.py), stores it in the PACS over STOW-RS as a hospital's archive would hold it, and writes, per
channel, the labels CSV a team would bring: `AccessionNumber,label`, one row per study. On a PACS a label belongs to
a study, while the synthetic set labels images (one patient's study may hold both classes); so each image becomes a
study of its own here (new StudyInstanceUID and SeriesInstanceUID derived from its SOPInstanceUID, an accession
number of its own), with its patient kept, so the job's patient split still groups a patient's studies. The notebook
then pulls each channel with its CSV ("From your PACS") and pushes its predictions back.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pydicom
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid

STORE_BATCH = 50  # instances per STOW-RS request


def _one_study_per_image(path: Path, number: int) -> pydicom.Dataset:
    dataset = pydicom.dcmread(path)
    sop = str(dataset.SOPInstanceUID)
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=["demo study", sop])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["demo series", sop])
    dataset.AccessionNumber = f"DEMO{number:06d}"
    dataset.StudyID = str(number)
    return dataset


def seed_synthetic(dicomweb_root: str, folder: Path, *, train_images: int, test_images: int,
                   rewrite: Callable[[pydicom.Dataset, int], None] | None = None) -> dict[str, Path]:
    """Store the synthetic set in the PACS at `dicomweb_root`; return each channel's labels CSV (under `folder`).

    `rewrite(dataset, number)`, when given, changes each dataset before it is stored (the tests write identifiers in).
    """
    from training.local_demo import make_demo_data

    channels = make_demo_data(folder / "generated", train_images=train_images, test_images=test_images)
    client = DICOMwebClient(dicomweb_root)
    csvs: dict[str, Path] = {}
    number = 0
    for channel, root in channels.items():
        with open(Path(root) / "labels.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        csvs[channel] = folder / f"{channel}-labels.csv"
        with open(csvs[channel], "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["AccessionNumber", "label"])
            batch: list[pydicom.Dataset] = []
            for row in rows:
                number += 1
                dataset = _one_study_per_image(Path(root) / row["file"], number)
                if rewrite is not None:
                    rewrite(dataset, number)
                writer.writerow([dataset.AccessionNumber, row["label"]])
                batch.append(dataset)
                if len(batch) == STORE_BATCH:
                    client.store_instances(datasets=batch)
                    batch = []
            if batch:
                client.store_instances(datasets=batch)
    return csvs

"""A synthetic DICOM data set for demos and tests: realistic files, clearly synthetic content, no PHI.

    python -m training.synthetic OUT --count 400 [--format csv|groundtruth|metadata-json|folders] [--seed 0]
        [--size 256] [--first-patient 1]

Two classes, 'normal' and 'abnormal' (balanced): an abnormal image carries one bright round lesion of random
position (in the lungs) and radius (5-10 % of the image size) over a noisy, anatomy-like background; normal images
have none. A small network separates them after a few epochs (tests/training/test_synthetic.py: >= 0.95 validation
accuracy after 4 epochs at 48x48).

Half the studies are CT-like (CT Image Storage, 16-bit signed, RescaleIntercept -1024, RescaleSlope 1, window
40/400: a body outline, fat, organs, lungs and a spine, in Hounsfield units), half radiograph-like (CR Image
Storage, 12-bit unsigned: lungs, mediastinum, ribs; half of them MONOCHROME1, a third without a window so that
readers fall back to percentile scaling). About 20 % of the files are RLE Lossless and 10 % JPEG 2000 Lossless
(pydicom's encoders: its own or pylibjpeg-rle for RLE, pylibjpeg-openjpeg for JPEG 2000); the rest Explicit VR
Little Endian. Every tenth file has no '.dcm' suffix, as PACS exports often have none.

Identity: patients 'SYNTHETIC^PATIENT^0007' / 'SYN-0007' (about 4 images a patient, in 1-2 studies), 'SYNTHETIC'
in the descriptions and ImageComments, BurnedInAnnotation NO, PatientIdentityRemoved YES; UIDs are derived from the
seed (name-based UUIDs under 2.25), so the same seed gives byte-identical files. File paths never contain patient
identifiers.

Label formats (what training/dataset/labels.py reads):
- csv: images/study-NNN/img-NNNNN.dcm and labels.csv (file,label);
- groundtruth: the same tree and output.manifest (source-ref s3://synthetic-dicom-bucket/datasets/synthetic/...,
  label attribute 'dicom-class');
- metadata-json: <orthanc-style instance id>.dcm at the top level and meta-data.json (aws-samples layout);
- folders: normal/... and abnormal/....
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from training.dataset.grayscale import resize

CLASSES = ("normal", "abnormal")
FORMATS = ("csv", "groundtruth", "metadata-json", "folders")
IMAGES_PER_PATIENT = 4  # several images per patient, so that a patient split matters
GROUNDTRUTH_ATTRIBUTE = "dicom-class"
GROUNDTRUTH_PREFIX = "s3://synthetic-dicom-bucket/datasets/synthetic"
ORTHANC_URL = "https://orthanc.example.invalid/instances"
_UID_ROOT = "SYNTHETIC-DICOM"  # entropy label: our UIDs cannot collide with another generator's


@dataclass(frozen=True)
class SyntheticImage:
    """One generated file.

    Attributes:
        file: path inside the output directory.
        label: 'normal' or 'abnormal'.
        patient_id: the synthetic PatientID (e.g. 'SYN-0007').
        kind: 'ct' or 'radiograph'.
        transfer_syntax: the transfer syntax UID's name.
    """

    file: str
    label: str
    patient_id: str
    kind: str
    transfer_syntax: str


@dataclass(frozen=True)
class _Study:
    patient: int
    number: int
    kind: str
    photometric: str
    windowed: bool


def generate(
    out: str | Path,
    *,
    count: int,
    label_format: str = "csv",
    seed: int = 0,
    size: int = 256,
    first_patient: int = 1,
) -> list[SyntheticImage]:
    """Write a synthetic data set (described in this module's docstring).

    Args:
        out: the output directory; created; must not already hold files.
        count: number of images (>= 4, so that both classes and several patients exist).
        label_format: one of FORMATS.
        seed: the same seed gives the same files.
        size: rows and columns of each image (64-1024).
        first_patient: number of the first patient ('SYN-0001' by default): give separate validation or test
            sets their own range, since a patient in two channels is an error for the training job.

    Returns:
        What was written, one entry per image.

    Raises:
        ValueError: an argument is out of range, or `out` is not empty.
    """
    if label_format not in FORMATS:
        raise ValueError(f"label_format must be one of {', '.join(FORMATS)}; got {label_format!r}")
    if count < 4:
        raise ValueError(f"count must be >= 4 (two classes, several patients); got {count}")
    if not 64 <= size <= 1024:
        raise ValueError(f"size must be in [64, 1024]; got {size}")
    if first_patient < 1:
        raise ValueError(f"first_patient must be >= 1; got {first_patient}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty; give a new or empty directory so that no data is mixed or lost")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    labels = np.array([i % 2 for i in range(count)])
    rng.shuffle(labels)
    patients = max(2, count // IMAGES_PER_PATIENT)
    patient_of = np.sort(np.arange(count) % patients)
    studies: dict[tuple[int, int], _Study] = {}
    written = []
    manifest_lines, metadata_records, csv_rows = [], [], []
    for index in range(count):
        patient = int(patient_of[index]) + first_patient - 1
        study_number = index % 2 if count >= 2 * patients else 0  # 1-2 studies a patient
        key = (patient, study_number)
        if key not in studies:
            srng = np.random.default_rng([seed, 1, patient, study_number])
            kind = "ct" if srng.random() < 0.5 else "radiograph"
            photometric = "MONOCHROME1" if kind == "radiograph" and srng.random() < 0.5 else "MONOCHROME2"
            studies[key] = _Study(patient, len(studies), kind, photometric, kind == "ct" or srng.random() < 0.67)
        study = studies[key]
        label = CLASSES[int(labels[index])]
        irng = np.random.default_rng([seed, 2, index])
        syntax = _transfer_syntax(irng.random())
        ds = _dataset(index, study, label, syntax, seed, size, irng)
        suffix = "" if index % 10 == 9 else ".dcm"
        if label_format == "metadata-json":
            instance = _orthanc_id(ds)
            rel = f"{instance}.dcm"
            metadata_records.append(_metadata_record(index, instance, label))
        elif label_format == "folders":
            rel = f"{label}/img-{index:05d}{suffix}"
        else:
            rel = f"images/study-{study.number:03d}/img-{index:05d}{suffix}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        csv_rows.append((rel, label))
        manifest_lines.append(_manifest_line(rel, label))
        written.append(SyntheticImage(rel, label, str(ds.PatientID), study.kind, UID(syntax).name))
    if label_format == "csv":
        with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "label"])
            writer.writerows(csv_rows)
    elif label_format == "groundtruth":
        (root / "output.manifest").write_text("".join(line + "\n" for line in manifest_lines), encoding="utf-8")
    elif label_format == "metadata-json":
        (root / "meta-data.json").write_text(json.dumps(metadata_records, indent=1) + "\n", encoding="utf-8")
    return written


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line.

    Args:
        argv: arguments (default: sys.argv[1:]).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory (new or empty)")
    parser.add_argument("--count", type=int, default=400, help="number of images (default 400)")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="label format (default csv)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=256, help="rows and columns (default 256)")
    parser.add_argument(
        "--first-patient", type=int, default=1, help="first patient number (default 1); give each channel its own"
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Generate the set and print a summary.

    Args:
        args: from parse_args.

    Returns:
        0, or 2 when an argument is rejected (the message says which).
    """
    start = time.perf_counter()
    try:
        images = generate(
            args.out,
            count=args.count,
            label_format=args.format,
            seed=args.seed,
            size=args.size,
            first_patient=args.first_patient,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    labels = Counter(image.label for image in images)
    syntaxes = Counter(image.transfer_syntax for image in images)
    print(
        f"wrote {len(images)} synthetic DICOM images ({args.size}x{args.size}, {args.format} labels) of "
        f"{len({i.patient_id for i in images})} patients to {args.out} in {seconds:.1f} s"
    )
    print("classes: " + ", ".join(f"{name} {labels[name]}" for name in CLASSES))
    print("transfer syntaxes: " + ", ".join(f"{k} {v}" for k, v in sorted(syntaxes.items())))
    return 0


def _transfer_syntax(draw: float) -> str:
    """About 70 % uncompressed, 20 % RLE Lossless, 10 % JPEG 2000 Lossless."""
    if draw < 0.2:
        return str(RLELossless)
    if draw < 0.3:
        return str(JPEG2000Lossless)
    return str(ExplicitVRLittleEndian)


def _dataset(
    index: int, study: _Study, label: str, syntax: str, seed: int, size: int, rng: np.random.Generator
) -> Dataset:
    """One image's dataset, pixel data encoded in the transfer syntax."""
    lesion = label == "abnormal"
    pid = f"{study.patient + 1:04d}"  # patients are numbered from 1
    study_uid = _uid(seed, "study", study.patient, study.number)
    series_uid = _uid(seed, "series", study.patient, study.number)
    sop_uid = UID(_uid(seed, "image", index))
    sop_class = CTImageStorage if study.kind == "ct" else ComputedRadiographyImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"2024{1 + study.number % 12:02d}{1 + study.patient % 28:02d}"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"SYNACC{study.number:05d}"
    ds.Modality = "CT" if study.kind == "ct" else "CR"
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "SYNTHETIC DATA - NO REAL PATIENT"
    ds.StudyDescription = "SYNTHETIC DEMO STUDY"
    ds.SeriesDescription = f"SYNTHETIC {'CT-LIKE' if study.kind == 'ct' else 'RADIOGRAPH-LIKE'} SERIES"
    ds.PatientName = f"SYNTHETIC^PATIENT^{pid}"
    ds.PatientID = f"SYN-{pid}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = "SYNTHETIC IMAGE - NOT A REAL PATIENT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{study.number}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = study.photometric
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{350.0 / size:.4f}", f"{350.0 / size:.4f}"]
    ds.BitsAllocated = 16
    if study.kind == "ct":
        hu = _ct_image(size, lesion, rng)
        pixels = np.clip(np.rint(hu + 1024.0), -1024, 3071).astype(np.int16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        shown = _radiograph_image(size, lesion, rng)
        if study.photometric == "MONOCHROME1":
            shown = 1.0 - shown
        pixels = np.clip(np.rint(shown * 4095.0), 0, 4095).astype(np.uint16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        if study.windowed:
            ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = pixels.tobytes()
    if syntax != str(ExplicitVRLittleEndian):
        with _quiet_stdout():
            ds.compress(syntax, generate_instance_uid=False)
    return ds


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: the OpenJPEG encoder prints 'tile number 1 / 1' from C for every image."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _ct_image(size: int, lesion: bool, rng: np.random.Generator) -> np.ndarray:
    """A chest-CT-like slice in Hounsfield units."""
    y, x = _grid(size)
    cy, cx = rng.normal(0.0, 0.03, 2)
    ay, ax = 0.62 + rng.normal(0, 0.03), 0.85 + rng.normal(0, 0.03)
    image = np.full((size, size), -1000.0, dtype=np.float32)
    image[_ellipse(y, x, cy, cx, ay + 0.04, ax + 0.04)] = -100.0  # subcutaneous fat
    body = _ellipse(y, x, cy, cx, ay, ax)
    image[body] = 40.0
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs |= _ellipse(y, x, cy - 0.05, cx + side * 0.38 * ax, 0.42 * ay / 0.62, 0.3 + rng.normal(0, 0.02))
    lungs &= body
    image[lungs] = -850.0
    for _ in range(2):  # mediastinal organs
        organ = _ellipse(y, x, cy + rng.uniform(-0.2, 0.2), cx + rng.uniform(-0.1, 0.1), 0.12, 0.1)
        image[organ & body] = rng.uniform(20.0, 70.0)
    vertebra = _ellipse(y, x, cy + 0.45 * ay, cx, 0.09, 0.08)
    image[vertebra] = 700.0  # cortical bone around a darker marrow: a ring, not a disk like a lesion
    image[_ellipse(y, x, cy + 0.45 * ay, cx, 0.06, 0.05)] = 60.0
    image += 60.0 * _smooth_noise(size, rng) * body
    if lesion:
        _add_lesion(image, y, x, rng, inside=lungs, value=lambda base: np.full_like(base, 320.0))
    image += rng.normal(0.0, 12.0, (size, size)).astype(np.float32)
    return image


def _radiograph_image(size: int, lesion: bool, rng: np.random.Generator) -> np.ndarray:
    """A chest-radiograph-like image, display values in [0, 1] (bright = dense)."""
    y, x = _grid(size)
    image = np.full((size, size), 0.08, dtype=np.float32)
    body = _ellipse(y, x, 0.05, 0.0, 1.05, 0.9 + rng.normal(0, 0.03))
    image[body] = 0.55
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs |= _ellipse(y, x, -0.05 + rng.normal(0, 0.02), side * 0.42, 0.62, 0.3 + rng.normal(0, 0.02))
    image[lungs] = 0.22
    ribs = (np.sin(y * 22.0 + 3.0 * x**2 + rng.uniform(0, 6.28)) > 0.55) & lungs
    image[ribs] += 0.12
    image[_ellipse(y, x, 0.1, 0.0, 0.75, 0.14)] = 0.7  # mediastinum and spine
    image += 0.08 * _smooth_noise(size, rng) * body
    if lesion:
        _add_lesion(image, y, x, rng, inside=lungs, value=lambda base: np.full_like(base, 0.9))
    image += rng.normal(0.0, 0.02, (size, size)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _add_lesion(
    image: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    inside: np.ndarray,
    value: Callable[[np.ndarray], np.ndarray],
) -> None:
    """One bright round lesion with a soft edge, centred on a random point of `inside`."""
    points = np.flatnonzero(inside)
    center = points[rng.integers(len(points))] if len(points) else image.size // 2
    cy, cx = y.flat[center], x.flat[center]
    radius = rng.uniform(0.1, 0.2)  # 5-10 % of the size (the grid spans 2 units): 5+ pixels at 96x96
    distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    weight = np.clip((radius - distance) / (0.25 * radius), 0.0, 1.0)  # a soft rim a quarter of the radius wide
    patch = weight > 0
    image[patch] = image[patch] * (1 - weight[patch]) + value(image[patch]) * weight[patch]


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return y, x


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ay: float, ax: float) -> np.ndarray:
    """The pixels inside an axis-aligned ellipse."""
    return ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1.0


def _smooth_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]: coarse random values resampled up."""
    coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    return resize(coarse, (size, size)) / 2.0


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID: 2.25 and a name-based (version 5) UUID as an integer (PS3.5 B.2)."""
    name = "/".join([_UID_ROOT, str(seed), *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def _orthanc_id(ds: Dataset) -> str:
    """An Orthanc-style instance id: SHA-1 of the identifiers, as five groups of 8 hex digits."""
    keys = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    text = "|".join(str(ds.get(key, "")) for key in keys)
    digest = hashlib.sha1(text.encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _manifest_line(rel: str, label: str) -> str:
    """One Ground Truth output-manifest line (image classification)."""
    record = {
        "source-ref": f"{GROUNDTRUTH_PREFIX}/{rel}",
        GROUNDTRUTH_ATTRIBUTE: CLASSES.index(label),
        f"{GROUNDTRUTH_ATTRIBUTE}-metadata": {
            "class-name": label,
            "confidence": 0.95,
            "type": "groundtruth/image-classification",
            "job-name": f"labeling-job/{GROUNDTRUTH_ATTRIBUTE}",
            "human-annotated": "yes",
            "creation-date": "2024-01-01T00:00:00.000000",
        },
    }
    return json.dumps(record)


def _metadata_record(index: int, instance: str, label: str) -> dict[str, object]:
    """One consolidated-annotation record in the aws-samples layout."""
    labels = {"label": [label], "imageurl": f"{ORTHANC_URL}/{instance}/file"}
    content = {"disease": {name: name == label for name in CLASSES}, "labels": json.dumps(labels)}
    return {
        "datasetObjectId": str(index),
        "dataObject": {"content": json.dumps({"taskObject": labels["imageurl"]})},
        "annotations": [{"workerId": "synthetic-worker", "annotationData": {"content": json.dumps(content)}}],
    }


if __name__ == "__main__":
    sys.exit(main(parse_args()))

"""A synthetic DICOM data set for demos and tests: realistic files, clearly synthetic content, no PHI.

    python -m training.synthetic OUT --count 400 [--format csv|groundtruth|metadata-json|folders] [--seed 0]
        [--size 256] [--first-patient 1]

Two classes, 'normal' and 'abnormal' (balanced): an abnormal image carries one bright round lesion of random
position (in the lungs) and radius (5-10 % of the image size) over a noisy, anatomy-like background; normal images
have none; generate returns where each lesion is (SyntheticImage.lesion: centre and radius in pixels, what the heat-map
tests check). A small network separates them after a few epochs (tests/training/test_synthetic.py: >= 0.95
validation accuracy after 4 epochs at 48x48).

Half the studies are CT-like (CT Image Storage, 16-bit signed, RescaleIntercept -1024, RescaleSlope 1, window
40/400: a body outline, fat, organs, lungs and a spine, in Hounsfield units), half radiograph-like (CR Image
Storage, 12-bit unsigned: lungs, mediastinum, ribs; half of them MONOCHROME1, a third without a window so that
readers fall back to percentile scaling). About 20 % of the files are RLE Lossless and 10 % JPEG 2000 Lossless
(pydicom's encoders: its own or pylibjpeg-rle for RLE, pylibjpeg-openjpeg for JPEG 2000); the rest Explicit VR
Little Endian. Every tenth file has no '.dcm' suffix, as PACS exports often have none.

Identity: patients 'SYNTHETIC^PATIENT^0007' / 'SYN-0007' (about 4 images a patient, in 1-2 studies), 'SYNTHETIC'
in the descriptions and ImageComments, BurnedInAnnotation NO, PatientIdentityRemoved YES; UIDs are derived from the
seed (name-based UUIDs under 2.25), so the same seed gives byte-identical files. File paths never contain patient
identifiers. One file's picture and dataset are made by training/dataset/synthetic_dicom.py; this module decides
which files the set holds, where they go and how they are labeled.

Label formats (what training/dataset/labels.py reads):
- csv: images/study-NNN/img-NNNNN.dcm and labels.csv (file,label);
- groundtruth: the same tree and output.manifest (source-ref s3://synthetic-dicom-bucket/datasets/synthetic/...,
  label attribute 'dicom-class');
- metadata-json: <orthanc-style instance id>.dcm at the top level and meta-data.json (aws-samples layout);
- folders: normal/... and abnormal/....

Volumes (training/dataset/synthetic_volume.py makes each series; this module names and places its files):

    python -m training.synthetic OUT --volumes [--slices 32] [--count 40] [--size 128] [--format csv|folders]
        [--order-only] [--scramble-positions] [--seed 0] [--first-patient 1]

One synthetic CT series a sample, two a patient. Each slice file has a random name (12 hex digits, '.dcm') and the
slices are written in random order, with a shuffled InstanceNumber: only ImagePositionPatient gives the order.
- csv: series/series-NNNN/<random>.dcm and labels.csv (series_uid,label);
- folders: normal/series-NNNN/<random>.dcm and abnormal/series-NNNN/<random>.dcm.
--order-only writes the set whose class is visible only in the order of the slices; --scramble-positions
permutes the positions against the pixel data (the control that must not be learnable).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from training.dataset import synthetic_volume
from training.dataset.synthetic_dicom import Lesion, Study, synthetic_image, transfer_syntax

CLASSES = ("normal", "abnormal")
FORMATS = ("csv", "groundtruth", "metadata-json", "folders")
VOLUME_FORMATS = ("csv", "folders")
IMAGES_PER_PATIENT = 4  # several images per patient, so that a patient split matters
GROUNDTRUTH_ATTRIBUTE = "dicom-class"
_VOLUME_FLAGS = {"--slices": "slices", "--order-only": "order_only", "--scramble-positions": "scramble_positions"}
GROUNDTRUTH_PREFIX = "s3://synthetic-dicom-bucket/datasets/synthetic"
ORTHANC_URL = "https://orthanc.example.invalid/instances"


@dataclass(frozen=True)
class SyntheticImage:
    """One generated file.

    Attributes:
        file: path inside the output directory.
        label: 'normal' or 'abnormal'.
        patient_id: the synthetic PatientID (e.g. 'SYN-0007').
        kind: 'ct' or 'radiograph'.
        transfer_syntax: the transfer syntax UID's name.
        lesion: where an abnormal image's lesion is, in pixels of the file (None for a normal image).
    """

    file: str
    label: str
    patient_id: str
    kind: str
    transfer_syntax: str
    lesion: Lesion | None = None


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
    _check_arguments(count=count, label_format=label_format, size=size, first_patient=first_patient)
    root = _new_root(out)
    written: list[SyntheticImage] = []
    metadata_records: list[dict[str, object]] = []
    for index, study, label in _plan(count, seed, first_patient):
        irng = np.random.default_rng([seed, 2, index])
        syntax = transfer_syntax(irng.random())
        ds, lesion = synthetic_image(index, study, label == "abnormal", syntax, seed, size, irng)
        if label_format == "metadata-json":
            instance = _orthanc_id(ds)
            rel = f"{instance}.dcm"
            metadata_records.append(_metadata_record(index, instance, label))
        else:
            rel = _tree_path(label_format, index, study, label)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written.append(SyntheticImage(rel, label, str(ds.PatientID), study.kind, UID(syntax).name, lesion))
    _write_labels(root, label_format, written, metadata_records)
    return written


@dataclass(frozen=True)
class SyntheticSeries:
    """One generated series.

    Attributes:
        folder: its folder inside the output directory (it holds the slices and nothing else).
        label: 'normal' or 'abnormal'.
        patient_id: the synthetic PatientID.
        series_uid: its SeriesInstanceUID (synthetic, from the seed; labels.csv names series by it).
        slices: the number of slice files.
    """

    folder: str
    label: str
    patient_id: str
    series_uid: str
    slices: int


def generate_volumes(
    out: str | Path,
    *,
    count: int,
    slices: int = 32,
    size: int = 128,
    label_format: str = "csv",
    seed: int = 0,
    order_only: bool = False,
    scramble_positions: bool = False,
    first_patient: int = 1,
) -> list[SyntheticSeries]:
    """Write a synthetic set of CT series (described in this module's and synthetic_volume's docstrings).

    Args:
        out: the output directory; created; must not already hold files.
        count: number of series (>= 4; even with order_only, whose series come in pairs).
        slices: slices a series (4-512).
        size: rows and columns of each slice (32-512).
        label_format: one of VOLUME_FORMATS.
        seed: the same seed gives the same files and names.
        order_only: write the set whose class is visible only in the order of the slices.
        scramble_positions: permute ImagePositionPatient against the pixel data in every series.
        first_patient: number of the first patient ('SYN-0001' by default).

    Returns:
        What was written, one entry per series.

    Raises:
        ValueError: an argument is out of range (the message names it and its range), or `out` is not empty.
    """
    kind = "order" if order_only else "lesion"
    if label_format not in VOLUME_FORMATS:
        raise ValueError(f"label_format must be one of {', '.join(VOLUME_FORMATS)} for volumes; got {label_format!r}")
    if first_patient < 1:
        raise ValueError(f"first_patient must be >= 1; got {first_patient}")
    synthetic_volume.check_volume_arguments(count=count, slices=slices, size=size, kind=kind)
    root = _new_root(out)
    written = []
    for spec in synthetic_volume.plan_series(count, seed, first_patient, kind):
        top = spec.label if label_format == "folders" else "series"
        folder = f"{top}/series-{spec.number:04d}"
        datasets = synthetic_volume.series_datasets(
            spec, kind=kind, slices=slices, size=size, seed=seed, scramble=scramble_positions
        )
        _write_shuffled(root / folder, datasets, np.random.default_rng([seed, 30, spec.number]))
        uid = synthetic_volume.series_uid(seed, spec.number)
        written.append(SyntheticSeries(folder, spec.label, str(datasets[0].PatientID), uid, len(datasets)))
    if label_format == "csv":
        write_labels_csv(root, ((series.series_uid, series.label) for series in written), key="series_uid")
    return written


def write_labels_csv(directory: Path, rows: Iterable[tuple[str, str]], *, key: str = "file") -> None:
    """DIRECTORY/labels.csv: a header `file,label` (or `series_uid,label`), then one row each (dataset/labels.py)."""
    with open(directory / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([key, "label"])
        writer.writerows(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line.

    Args:
        argv: arguments (default: sys.argv[1:]).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory (new or empty)")
    parser.add_argument("--count", type=int, default=None, help="number of images (default 400) or series (40)")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="label format (default csv)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=None, help="rows and columns (default 256; volumes 128)")
    parser.add_argument(
        "--first-patient", type=int, default=1, help="first patient number (default 1); give each channel its own"
    )
    volumes = parser.add_argument_group("volumes", "synthetic CT series, one a sample")
    volumes.add_argument("--volumes", action="store_true", help="write CT series instead of single images")
    volumes.add_argument("--slices", type=int, default=None, help="slices a series (default 32)")
    volumes.add_argument("--order-only", action="store_true", help="the class shows only in the order of the slices")
    volumes.add_argument("--scramble-positions", action="store_true", help="positions permuted against the pixels")
    args = parser.parse_args(argv)
    volume_only = [flag for flag, given in _VOLUME_FLAGS.items() if getattr(args, given) not in (None, False)]
    if volume_only and not args.volumes:
        parser.error(f"{', '.join(volume_only)}: only with --volumes")
    args.count = args.count if args.count is not None else (40 if args.volumes else 400)
    args.size = args.size if args.size is not None else (128 if args.volumes else 256)
    args.slices = args.slices if args.slices is not None else 32
    return args


def main(args: argparse.Namespace) -> int:
    """Generate the set and print a summary.

    Args:
        args: from parse_args.

    Returns:
        0, or 2 when an argument is rejected (the message says which).
    """
    if args.volumes:
        return _main_volumes(args)
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


def _main_volumes(args: argparse.Namespace) -> int:
    """main for --volumes."""
    start = time.perf_counter()
    try:
        written = generate_volumes(
            args.out,
            count=args.count,
            slices=args.slices,
            size=args.size,
            label_format=args.format,
            seed=args.seed,
            order_only=args.order_only,
            scramble_positions=args.scramble_positions,
            first_patient=args.first_patient,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = "order-only " if args.order_only else ""
    scrambled = ", positions scrambled" if args.scramble_positions else ""
    print(
        f"wrote {len(written)} synthetic {kind}CT series ({args.slices} slices of {args.size}x{args.size}, "
        f"{args.format} labels{scrambled}) of {len({s.patient_id for s in written})} patients to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    labels = Counter(series.label for series in written)
    print("classes: " + ", ".join(f"{name} {labels[name]}" for name in CLASSES))
    return 0


def _new_root(out: str | Path) -> Path:
    """The output directory, created; refused when it holds files."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty; give a new or empty directory so that no data is mixed or lost")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_shuffled(folder: Path, datasets: Sequence[Dataset], rng: np.random.Generator) -> None:
    """The slices under random names (12 hex digits), written in random order: neither tells their order."""
    folder.mkdir(parents=True)
    names: set[str] = set()
    while len(names) < len(datasets):
        names.add(rng.bytes(6).hex())
    for name, index in zip(sorted(names), rng.permutation(len(datasets)), strict=True):
        datasets[int(index)].save_as(folder / f"{name}.dcm", enforce_file_format=True)


def _check_arguments(*, count: int, label_format: str, size: int, first_patient: int) -> None:
    if label_format not in FORMATS:
        raise ValueError(f"label_format must be one of {', '.join(FORMATS)}; got {label_format!r}")
    if count < 4:
        raise ValueError(f"count must be >= 4 (two classes, several patients); got {count}")
    if not 64 <= size <= 1024:
        raise ValueError(f"size must be in [64, 1024]; got {size}")
    if first_patient < 1:
        raise ValueError(f"first_patient must be >= 1; got {first_patient}")


def _plan(count: int, seed: int, first_patient: int) -> Iterator[tuple[int, Study, str]]:
    """Each image's index, study and label: balanced classes in a seeded order, about IMAGES_PER_PATIENT images a
    patient (patients in order), in one or two studies; a study's kind, photometric and window are drawn once."""
    rng = np.random.default_rng([seed, 0])
    labels = np.array([i % 2 for i in range(count)])
    rng.shuffle(labels)
    patients = max(2, count // IMAGES_PER_PATIENT)
    patient_of = np.sort(np.arange(count) % patients)
    studies: dict[tuple[int, int], Study] = {}
    for index in range(count):
        patient = int(patient_of[index]) + first_patient - 1
        study_number = index % 2 if count >= 2 * patients else 0  # 1-2 studies a patient
        key = (patient, study_number)
        if key not in studies:
            srng = np.random.default_rng([seed, 1, patient, study_number])
            kind = "ct" if srng.random() < 0.5 else "radiograph"
            photometric = "MONOCHROME1" if kind == "radiograph" and srng.random() < 0.5 else "MONOCHROME2"
            studies[key] = Study(patient, len(studies), kind, photometric, kind == "ct" or srng.random() < 0.67)
        yield index, studies[key], CLASSES[int(labels[index])]


def _tree_path(label_format: str, index: int, study: Study, label: str) -> str:
    """Where a file goes in the csv, groundtruth and folders layouts; every tenth file has no '.dcm' suffix."""
    suffix = "" if index % 10 == 9 else ".dcm"
    if label_format == "folders":
        return f"{label}/img-{index:05d}{suffix}"
    return f"images/study-{study.number:03d}/img-{index:05d}{suffix}"


def _write_labels(
    root: Path, label_format: str, written: Sequence[SyntheticImage], metadata_records: Sequence[dict[str, object]]
) -> None:
    """The label file of the format (none for folders, whose directory names are the labels)."""
    if label_format == "csv":
        write_labels_csv(root, ((image.file, image.label) for image in written))
    elif label_format == "groundtruth":
        lines = [_groundtruth_line(image.file, image.label) for image in written]
        (root / "output.manifest").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    elif label_format == "metadata-json":
        (root / "meta-data.json").write_text(json.dumps(metadata_records, indent=1) + "\n", encoding="utf-8")


def _orthanc_id(ds: Dataset) -> str:
    """An Orthanc-style instance id: SHA-1 of the identifiers, as five groups of 8 hex digits."""
    keys = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    text = "|".join(str(ds.get(key, "")) for key in keys)
    digest = hashlib.sha1(text.encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _groundtruth_line(rel: str, label: str) -> str:
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

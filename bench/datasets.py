"""The benchmarks' data: the synthetic DICOM sets (training/synthetic.py), generated at bench time, never committed.

Both sides read the same files: the public sample through its meta-data.json (the aws-samples layout, which the
generator's 'metadata-json' format writes) and ours through the same channel directories.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from training.synthetic import generate, generate_volumes


@dataclass(frozen=True)
class BenchSet:
    """One resolution's training and validation sets.

    Attributes:
        size: rows and columns of every image.
        train: the training directory (meta-data.json and <instance>.dcm files).
        validation: the validation directory (its own patients).
        train_count, validation_count: images in each.
        seconds: time taken to generate both.
    """

    size: int
    train: Path
    validation: Path
    train_count: int
    validation_count: int
    seconds: float


def make_set(root: Path, *, size: int, train_count: int, validation_count: int, seed: int = 0) -> BenchSet:
    """Generate a training and a validation set of 16-bit synthetic DICOM at size x size under root.

    Args:
        root: a new or empty directory.
        size: rows and columns (64-1024).
        train_count: training images (>= 4).
        validation_count: validation images (>= 4), of patients the training set does not have.
        seed: the training set's seed (the validation set uses seed + 1).

    Returns:
        Where the sets are and how long they took.
    """
    started = time.perf_counter()
    train, validation = root / f"{size}" / "train", root / f"{size}" / "validation"
    generate(train, count=train_count, size=size, label_format="metadata-json", seed=seed)
    # Patients are numbered from first_patient; starting after the last possible training patient keeps the two
    # sets apart, as training/dataset/prepare.py requires of given channels.
    generate(
        validation,
        count=validation_count,
        size=size,
        label_format="metadata-json",
        seed=seed + 1,
        first_patient=train_count + 1,
    )
    return BenchSet(size, train, validation, train_count, validation_count, time.perf_counter() - started)


@dataclass(frozen=True)
class VolumeSet:
    """The 3-D benchmark's set: synthetic CT series, one folder each, under a folder per class.

    Attributes:
        train: CLASS/series-NNNN/<random name>.dcm (the issue's 'folders' layout; both sides read it).
        count: series.
        slices, size: slices a series, rows and columns a slice.
        seconds: time taken to generate it.
    """

    train: Path
    count: int
    slices: int
    size: int
    seconds: float


def make_volume_set(root: Path, *, count: int, slices: int, size: int, seed: int = 0) -> VolumeSet:
    """Generate `count` synthetic CT series (generate_volumes: slices written in random order, random file names).

    Args:
        root: a new or empty directory.
        count: series (>= 4).
        slices: slices a series (4-512).
        size: rows and columns (32-512).
        seed: the same seed gives the same files.

    Returns:
        Where the set is and how long it took.
    """
    started = time.perf_counter()
    train = root / f"volumes-{slices}x{size}" / "train"
    generate_volumes(train, count=count, slices=slices, size=size, label_format="folders", seed=seed)
    return VolumeSet(train, count, slices, size, time.perf_counter() - started)

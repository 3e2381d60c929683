"""The training half of the demo: make the synthetic DICOM set, train on it locally, report, and point at the bundle.

    python -m training.local_demo [WORKDIR] [--epochs 5] [--any-hyperparameter VALUE ...]

WORKDIR (default: a new temporary directory) receives data/train (400 images, labels.csv), data/test (100 images of
other patients), model/ (the MONAI bundle) and output/ (metrics.json, figures). The run is the real job
(training.job.train.main) with DEMO_HYPERPARAMETERS; extra flags override them. About a minute on 2 idle CPU cores.
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from training.dataset.dicom import read_header
from training.synthetic import generate, write_labels_csv

# The demo's settings, beside the defaults (96x96 DenseNet121, AdamW, cosine, precise BN): 5 epochs; batches of 16
# give the from-scratch network 20 steps an epoch on 320 training images, at half the default rate to match the
# smaller batch; lighter augmentation, as the synthetic lesions vary little. Reaches >= 95% validation accuracy in
# 3-5 epochs; about 40 s of training on 2 CPU cores.
DEMO_HYPERPARAMETERS: dict[str, str] = {
    "epochs": "5",
    "batch_size": "16",
    "learning_rate": "0.0005",
    "augment": "0.25",
}
TRAIN_IMAGES = 400  # the demo set
TEST_IMAGES = 100  # held out by patient: the test channel


def make_demo_data(
    root: Path, *, train_images: int = TRAIN_IMAGES, test_images: int = TEST_IMAGES, seed: int = 0, size: int = 256
) -> dict[str, Path]:
    """Generate the synthetic set and move whole patients out of it into a test channel.

    One generator run gives the patients distinct PatientIDs; moving whole patients keeps every patient in one
    channel, as the data layer requires.

    Args:
        root: a new or empty directory; gets train/ and test/, each with its labels.csv.
        train_images: images left in train/.
        test_images: images (about; whole patients) moved to test/.
        seed: the generator's seed.
        size: rows and columns of each image (training/synthetic.py generate).

    Returns:
        {"train": root/train, "test": root/test}.
    """
    train, test = root / "train", root / "test"
    generate(train, count=train_images + test_images, label_format="csv", seed=seed, size=size)
    with open(train / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_patient[read_header(train / row["file"]).patient_id].append(row)
    moved: list[dict[str, str]] = []
    for patient in sorted(by_patient, reverse=True):  # the last patients, whole
        if len(moved) >= test_images:
            break
        moved.extend(by_patient[patient])
    for row in moved:
        target = test / row["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(train / row["file"]), target)
    moved_files = {row["file"] for row in moved}
    write_labels_csv(train, ((row["file"], row["label"]) for row in rows if row["file"] not in moved_files))
    write_labels_csv(test, ((row["file"], row["label"]) for row in moved))
    return {"train": train, "test": test}


def demo_arguments(workdir: Path, channels: Mapping[str, Path], overrides: Sequence[str] = ()) -> list[str]:
    """The job's command line for the demo: channels, model and output directories, DEMO_HYPERPARAMETERS, overrides."""
    argv = [f"--{name}={path}" for name, path in channels.items()]
    argv += [f"--model-dir={workdir / 'model'}", f"--output-dir={workdir / 'output'}"]
    for name, value in DEMO_HYPERPARAMETERS.items():
        argv += [f"--{name}", value]
    return argv + list(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo.

    Args:
        argv: [WORKDIR] then hyperparameter flags overriding DEMO_HYPERPARAMETERS.
    """
    from training.job.train import main as train_main

    args = list(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.pop(0)) if args and not args[0].startswith("-") else Path(tempfile.mkdtemp(prefix="demo-"))
    started = time.perf_counter()
    print(f"==> generating the synthetic DICOM set in {workdir / 'data'}", flush=True)
    channels = make_demo_data(workdir / "data")
    print("==> training (python -m training " + " ".join(demo_arguments(workdir, channels, args)) + ")", flush=True)
    status = train_main(demo_arguments(workdir, channels, args))
    if status == 0:
        print(f"==> done in {time.perf_counter() - started:.0f} s", flush=True)
        print(f"bundle:  {workdir / 'model'}")
        print(f"metrics: {workdir / 'output' / 'metrics.json'}")
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Check a DICOM data set before training: discovery and validation alone, no model.

    python -m training.check DIR [--validation DIR] [--test DIR] [--val-fraction 0.2] [--seed 0]
        [--pseudonym-key-file PATH] [--window CENTER WIDTH] [--workers 2] [--label-attribute NAME] [--json]
    python -m training.check DIR [--validation DIR] [--test DIR] --series [--json]

Prints the label format of each channel, the classes with their counts, the patients (by keyed pseudonym), the
planned train/validation split and every bad file with its reason. It runs the training job's own data layer
(training/dataset/prepare.py) with on_bad_file='skip' at a small resolution, so what it reports is what training
will see.

With `--series` it lists the volumes instead: each channel's DICOM files assembled into series from their headers
(training/dataset/series.py: slices ordered along the slice normal, with their count, size and spacing), and every
bad series with its reason (a missing slice, a duplicated position, mixed sizes or spacing, a localizer split off).

Exit status: 0 when every labeled file (every series) is usable; 1 when some files (series) are bad (listed); 2 when
the data cannot be used at all (no labels, two label formats, fewer than two classes, a patient in two channels; no
series).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.dataset.dicom import has_dicom_marker
from training.dataset.prepare import DataError, DataOptions, prepare
from training.dataset.pseudonym_key import resolve_key
from training.dataset.series import assemble
from training.job.config import TrainConfig
from training.job.environment import DATA_CHANNELS

JOB_DEFAULTS = TrainConfig()  # the job's defaults: check plans the split as the job would
CHECK_IMAGE_SIZE = (32, 32)  # decoding is the check; a small cache keeps it light on memory
PATIENTS_SHOWN = 20  # the full list is in --json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line.

    Args:
        argv: arguments (default: sys.argv[1:]).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(prog="python -m training.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("train", type=Path, help="the train channel directory")
    parser.add_argument("--validation", type=Path, default=None, help="a validation channel directory")
    parser.add_argument("--test", type=Path, default=None, help="a test channel directory")
    parser.add_argument("--val-fraction", type=float, default=JOB_DEFAULTS.val_fraction,
                        help=f"held out when no validation channel (default {JOB_DEFAULTS.val_fraction})")
    parser.add_argument("--seed", type=int, default=JOB_DEFAULTS.seed,
                        help=f"seeds the planned split (default {JOB_DEFAULTS.seed})")
    parser.add_argument("--pseudonym-key-file", type=Path, default=None, metavar="PATH",
                        help="the pseudonym key (default: the local key, training/dataset/pseudonym_key.py); "
                        "use the job's")
    parser.add_argument("--window", type=float, nargs=2, default=None, metavar=("CENTER", "WIDTH"))
    parser.add_argument("--workers", type=int, default=JOB_DEFAULTS.workers,
                        help=f"decoding processes (default {JOB_DEFAULTS.workers})")
    parser.add_argument("--label-attribute", default=None, help="Ground Truth label attribute, if several")
    parser.add_argument("--series", action="store_true", help="list the series (volumes) and the bad ones")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Run the check and print the report.

    Args:
        args: from parse_args.

    Returns:
        0 (usable), 1 (bad files) or 2 (unusable).
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
    channels = {"train": args.train}
    if args.validation is not None:
        channels["validation"] = args.validation
    if args.test is not None:
        channels["test"] = args.test
    if args.series:
        return series_report(channels, as_json=args.json)
    try:
        options = DataOptions(
            image_size=CHECK_IMAGE_SIZE,
            on_bad_file="skip",
            window=tuple(args.window) if args.window else None,
            val_fraction=args.val_fraction,
            seed=args.seed,
            pseudonym_key=resolve_key(args.pseudonym_key_file, data_dirs=list(channels.values())),
            workers=args.workers,
            label_attribute=args.label_attribute,
        )
        data = prepare(channels, options)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    if args.json:
        print(json.dumps(data.summary, indent=2))
    else:
        print(report(data.summary))
    return 1 if data.bad_files else 0


def series_report(channels: dict[str, Path], *, as_json: bool) -> int:
    """Print each channel's series (training/dataset/series.py); 1 when a series is bad, 2 when none is found."""
    listings, found, bad = {}, 0, 0
    for name, root in channels.items():
        if not root.is_dir():
            print(f"error: channel {name}: {root} is not a directory")
            return 2
        files = [path for path in sorted(root.rglob("*")) if path.is_file() and has_dicom_marker(path)]
        try:
            assembled = assemble(files, root=root)
        except ValueError as exc:
            print(f"error: channel {name}: {exc}")
            return 2
        listings[name] = assembled.listing()
        found, bad = found + len(assembled.series), bad + len(assembled.bad)
        if not as_json:
            print(f"channel {name}: {len(assembled.series)} series, {len(assembled.bad)} bad")
            print("\n".join(f"  {line}" for line in assembled.lines()))
    if as_json:
        print(json.dumps(listings, indent=2))
    return 2 if not found else 1 if bad else 0


def report(summary: dict[str, Any]) -> str:
    """The human-readable report of the data's summary (training/dataset/prepare.py).

    Args:
        summary: PreparedData.summary.

    Returns:
        The report, several lines.
    """
    lines = []
    for name, channel in summary["channels"].items():
        lines.append(
            f"channel {name}: labels from {channel['label_source']} ({channel['label_format']}), "
            f"{channel['labeled_files']} labeled DICOM file(s)"
        )
        reasons = Counter(entry["reason"] for entry in channel["skipped"])
        for reason, count in sorted(reasons.items()):
            lines.append(f"  skipped {count}: {reason}")
    sides = [side for side in DATA_CHANNELS if sum(summary["class_counts"][side].values())]
    lines.append("classes: " + ", ".join(summary["classes"]))
    for name in summary["classes"]:
        per_side = ", ".join(f"{side} {summary['class_counts'][side][name]}" for side in sides)
        lines.append(f"  {name}: {per_side}")
    lines.append(
        f"split by: {summary['split_key']} "
        f"({', '.join(f'{k} {v}' for k, v in summary['split_key_counts'].items())} files)"
    )
    for note in summary["split_key_notes"]:
        lines.append(f"  note: {note}")
    lines.append(
        "planned split: "
        + ", ".join(
            f"{side} {sum(summary['class_counts'][side].values())} images of {summary['patients'][side]} patients"
            for side in sides
        )
    )
    per_patient: dict[str, Counter[str]] = {}
    for entry in summary["files"]:
        per_patient.setdefault(entry["patient"], Counter())[entry["split"]] += 1
    lines.append(f"patients (pseudonym: images): {len(per_patient)}")
    for patient, counts in sorted(per_patient.items())[:PATIENTS_SHOWN]:
        lines.append(f"  {patient}: " + ", ".join(f"{side} {n}" for side, n in sorted(counts.items())))
    if len(per_patient) > PATIENTS_SHOWN:
        lines.append(f"  ... and {len(per_patient) - PATIENTS_SHOWN} more (--json lists them all)")
    bad = summary["bad_files"]
    lines.append(f"bad files: {len(bad)}")
    for entry in bad:
        lines.append(f"  [{entry['channel']}] {entry['file']}: {entry['reason']}")
    if bad:
        lines.append("result: fix or remove the bad files, or train with on_bad_file=skip to leave them out")
    else:
        lines.append("result: every labeled file is usable")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(parse_args()))

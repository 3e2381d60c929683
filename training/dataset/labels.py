"""Finding the data in a channel directory: the DICOM files (at any depth) and their labels (one per image).

A channel holds DICOM files, recognised by the 'DICM' marker at byte 128 whatever their name or suffix, and its
labels in exactly one of these formats, detected from what lies at the channel's top level:

- `labels.csv`: a header row with columns `file,label` and optionally `patient_id`; `file` is the path inside the
  channel ('/' separators).
- a SageMaker Ground Truth output manifest (`*.manifest`, JSON lines) of an image-classification job: each line's
  `source-ref` S3 URI maps to the file whose path inside the channel is the longest tail of the URI's key (so any
  dataset prefix is ignored), else to the only file with that basename; the label is the `class-name` of the
  `<attribute>-metadata` object (the numeric `<attribute>` value indexes the job's own class list and is not used).
  The attribute is the one whose `-metadata` holds a `class-name`; when an output manifest holds several (chained jobs),
  `label_attribute` picks one.
- `meta-data.json`: the consolidated annotations of the aws-samples DICOM labeling sample: a JSON list of records
  whose `annotations[0].annotationData.content` is a JSON string holding `labels`, itself a JSON string with
  `imageurl` and `label` (a list with one class name, or a name); the file is `<instance id>.dcm`, the id being the
  part of `imageurl` between `instances/` and `/file`. Where `label` is empty, the one true entry of the content's
  `disease` object is used.
- none of these: one folder per class at the top level, DICOM files at any depth inside.

Two label files at once, or none and no class folders, is a DataError naming what was found. Files that are not
DICOM, DICOMDIR indexes, and DICOM files without a label are skipped and listed (`skipped`); labels that point at
missing or unusable files are bad entries (`bad`), handled by the caller's `on_bad_file` policy.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from training.dataset.dicom import has_dicom_marker

LABELS_CSV = "labels.csv"
METADATA_JSON = "meta-data.json"
GROUNDTRUTH_SUFFIX = ".manifest"
FORMAT_CSV = "labels.csv"
FORMAT_GROUNDTRUTH = "groundtruth"
FORMAT_METADATA_JSON = "metadata-json"
FORMAT_FOLDERS = "folders"
_EXPECTED = (
    "exactly one of: labels.csv (columns file,label and optional patient_id); a SageMaker Ground Truth output "
    "manifest (*.manifest); meta-data.json (consolidated annotations of the aws-samples DICOM labeling sample); "
    "or one folder per class holding that class's DICOM files"
)


class DataError(ValueError):
    """The data cannot be used as it is; the message is the full report (files by their path inside the channel).

    Attributes:
        problems: the bad files, each {"channel", "file", "reason"}; empty for dataset-level errors.
    """

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message)


@dataclass(frozen=True)
class LabeledFile:
    """One labeled image.

    Attributes:
        file: path inside the channel, '/'-separated.
        label: the class name.
        patient_id: the labels.csv patient_id value, if given (raw: hash it before it reaches any output).
    """

    file: str
    label: str
    patient_id: str | None = None


@dataclass
class ChannelListing:
    """What one channel holds.

    Attributes:
        channel: the channel's name (train, validation, test).
        root: the channel directory.
        label_format: FORMAT_CSV, FORMAT_GROUNDTRUTH, FORMAT_METADATA_JSON or FORMAT_FOLDERS.
        label_source: the file the labels came from, or 'class folders'.
        items: the labeled DICOM files, sorted by path.
        bad: labels that cannot be used, each {"channel", "file", "reason"}.
        skipped: files not used, each {"file", "reason"}: not DICOM, DICOMDIR, or DICOM without a label.
    """

    channel: str
    root: Path
    label_format: str
    label_source: str
    items: list[LabeledFile] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Tree:
    """The files of a channel, by path inside it."""

    dicom: set[str]
    other: set[str]
    by_basename: dict[str, list[str]]


def list_channel(channel: str, root: str | os.PathLike[str], *, label_attribute: str | None = None) -> ChannelListing:
    """Find a channel's DICOM files and labels (the formats are described in this module's docstring).

    Args:
        channel: the channel's name, used in messages.
        root: the channel directory.
        label_attribute: the Ground Truth label attribute to use when an output manifest holds several; None detects
            it.

    Returns:
        The listing; `bad` holds unusable labels, `skipped` the files not used.

    Raises:
        DataError: the directory is missing or empty, holds no DICOM file, or its label format is ambiguous or
            absent.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"channel '{channel}': {base} is not a directory; give the folder holding the DICOM files")
    tree = _walk(base)
    if not tree.dicom:
        if not tree.other:
            raise DataError(f"channel '{channel}' ({base}) is empty: upload DICOM files and their labels to it")
        examples = ", ".join(sorted(tree.other)[:5])
        raise DataError(
            f"channel '{channel}' ({base}) holds no DICOM file (none has the 'DICM' marker at byte 128); "
            f"found {len(tree.other)} other file(s), e.g. {examples}"
        )
    top = sorted(p.name for p in base.iterdir() if p.is_file())
    label_files = [n for n in top if n == LABELS_CSV or n == METADATA_JSON or n.endswith(GROUNDTRUTH_SUFFIX)]
    if len(label_files) > 1:
        raise DataError(
            f"channel '{channel}' ({base}) holds several label files: {', '.join(label_files)}. Expected "
            f"{_EXPECTED}. Keep one of them."
        )
    if label_files == [LABELS_CSV]:
        listing = _from_csv(channel, base, tree)
    elif label_files == [METADATA_JSON]:
        listing = _from_metadata_json(channel, base, tree)
    elif label_files:
        listing = _from_groundtruth(channel, base, tree, label_files[0], label_attribute)
    else:
        listing = _from_folders(channel, base, tree)
    for name in sorted(tree.other):
        if name not in label_files:
            reason = (
                "a DICOMDIR index, not an image"
                if PurePosixPath(name).name.upper() == "DICOMDIR"
                else "not a DICOM file (no 'DICM' marker at byte 128)"
            )
            listing.skipped.append({"file": name, "reason": reason})
    listing.items.sort(key=lambda item: item.file)
    listing.skipped.sort(key=lambda entry: entry["file"])
    return listing


def _walk(base: Path) -> _Tree:
    """All files below base, split by the DICOM marker; hidden folders (.git, .ipynb_checkpoints) are ignored."""
    dicom: set[str] = set()
    other: set[str] = set()
    by_basename: dict[str, list[str]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(base).as_posix()
        for filename in sorted(filenames):
            rel = filename if rel_dir == "." else f"{rel_dir}/{filename}"
            path = Path(dirpath, filename)
            if filename.upper() != "DICOMDIR" and has_dicom_marker(path):
                dicom.add(rel)
            else:
                other.add(rel)
            by_basename[filename].append(rel)
    return _Tree(dicom=dicom, other=other, by_basename=dict(by_basename))


def _from_csv(channel: str, base: Path, tree: _Tree) -> ChannelListing:
    """Read labels.csv."""
    listing = ChannelListing(channel, base, FORMAT_CSV, LABELS_CSV)
    path = base / LABELS_CSV
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        columns = [c.strip().lower() for c in header] if header else []
        if "file" not in columns or "label" not in columns:
            raise DataError(
                f"channel '{channel}': {LABELS_CSV} must start with a header row naming the columns file,label "
                f"(and optionally patient_id); found {header!r}. Add the header row."
            )
        col_file, col_label = columns.index("file"), columns.index("label")
        col_patient = columns.index("patient_id") if "patient_id" in columns else None
        seen: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            where = f"{LABELS_CSV} line {line}"
            cells = row + [""] * (len(columns) - len(row))
            raw_file, label = cells[col_file].strip(), cells[col_label].strip()
            patient = cells[col_patient].strip() if col_patient is not None else ""
            rel = normalize_path(raw_file)
            if rel is None:
                listing.bad.append(_bad(channel, where, f"file {raw_file!r} is not a relative path inside the channel"))
                continue
            if not label:
                listing.bad.append(_bad(channel, rel, f"its label is blank ({where})"))
                continue
            _add_once(listing, tree, seen, rel, label, patient or None, how=f"listed in {LABELS_CSV}", where=where)
    _skip_unlabeled(listing, tree, f"no row in {LABELS_CSV}")
    return listing


def _from_groundtruth(
    channel: str, base: Path, tree: _Tree, label_file: str, label_attribute: str | None
) -> ChannelListing:
    """Read a Ground Truth output label_file (image classification)."""
    listing = ChannelListing(channel, base, FORMAT_GROUNDTRUTH, label_file)
    records: list[tuple[int, dict[str, Any]]] = []
    with open(base / label_file, encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                listing.bad.append(_bad(channel, f"{label_file} line {line}", f"not JSON ({exc.msg})"))
                continue
            if isinstance(record, dict):
                records.append((line, record))
            else:
                listing.bad.append(_bad(channel, f"{label_file} line {line}", "not a JSON object"))
    attributes = sorted(
        {
            key[: -len("-metadata")]
            for _, record in records
            for key, value in record.items()
            if key.endswith("-metadata") and isinstance(value, dict) and "class-name" in value
        }
    )
    if label_attribute is not None:
        if label_attribute not in attributes:
            raise DataError(
                f"channel '{channel}': label_attribute '{label_attribute}' is not in {label_file}; it holds "
                f"{', '.join(attributes) or 'no image-classification label'}"
            )
        attribute = label_attribute
    elif len(attributes) == 1:
        attribute = attributes[0]
    else:
        found = f"several: {', '.join(attributes)}; set label_attribute to one" if attributes else "none"
        raise DataError(
            f"channel '{channel}': {label_file} must hold one image-classification label attribute (a key "
            f"'<name>-metadata' with a 'class-name'); found {found}"
        )
    labels: dict[str, str] = {}
    for line, record in records:
        where = f"{label_file} line {line}"
        source = record.get("source-ref")
        if not isinstance(source, str) or not source.startswith("s3://"):
            listing.bad.append(_bad(channel, where, "no 'source-ref' S3 URI"))
            continue
        key = source[len("s3://") :].partition("/")[2]
        rel, problem = _match_key(tree, key)
        if rel is None:
            listing.bad.append(_bad(channel, key or where, f"{problem} ({where})"))
            continue
        metadata = record.get(f"{attribute}-metadata")
        label = metadata.get("class-name") if isinstance(metadata, dict) else None
        if not isinstance(label, str) or not label.strip():
            why = metadata.get("failure-reason") if isinstance(metadata, dict) else None
            detail = f": {str(why)[:120]}" if why else ""
            listing.bad.append(_bad(channel, rel, f"no '{attribute}' class-name in {where}{detail}"))
            continue
        _add_once(listing, tree, labels, rel, label.strip(), None, how=f"named in {label_file}", where=where)
    _skip_unlabeled(listing, tree, f"not in {label_file}")
    return listing


def _from_metadata_json(channel: str, base: Path, tree: _Tree) -> ChannelListing:
    """Read the aws-samples consolidated-annotation list (meta-data.json)."""
    listing = ChannelListing(channel, base, FORMAT_METADATA_JSON, METADATA_JSON)
    try:
        with open(base / METADATA_JSON, encoding="utf-8") as fh:
            records = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"channel '{channel}': {METADATA_JSON} is not valid JSON ({exc}); fix or replace it") from None
    if not isinstance(records, list):
        raise DataError(f"channel '{channel}': {METADATA_JSON} must hold a JSON list of annotation records")
    labels: dict[str, str] = {}
    for number, record in enumerate(records):
        where = f"{METADATA_JSON} record {number}"
        try:
            url, label = _metadata_record(record)
        except ValueError as exc:  # json.JSONDecodeError included
            listing.bad.append(_bad(channel, where, str(exc)))
            continue
        except (KeyError, IndexError, TypeError) as exc:
            listing.bad.append(
                _bad(
                    channel,
                    where,
                    "unexpected layout: expected annotations[0].annotationData.content holding 'labels' with "
                    f"'imageurl' and 'label' ({type(exc).__name__}: {exc})",
                )
            )
            continue
        instance = url.split("instances/", 1)[1].split("/file", 1)[0] if "instances/" in url else ""
        if not instance or "/" in instance:
            listing.bad.append(_bad(channel, where, f"imageurl {url!r} has no '.../instances/<id>/file' part"))
            continue
        rel, problem = _match_key(tree, f"{instance}.dcm")
        if rel is None:
            listing.bad.append(_bad(channel, f"{instance}.dcm", f"{problem} ({where})"))
            continue
        _add_once(listing, tree, labels, rel, label, None, how=f"named in {METADATA_JSON}", where=where)
    _skip_unlabeled(listing, tree, f"not in {METADATA_JSON}")
    return listing


def _metadata_record(record: Any) -> tuple[str, str]:
    """The (imageurl, label) of one meta-data.json record."""
    content = json.loads(record["annotations"][0]["annotationData"]["content"])
    labels = json.loads(content["labels"]) if isinstance(content["labels"], str) else content["labels"]
    url = labels["imageurl"]
    chosen = labels.get("label")
    names = [chosen] if isinstance(chosen, str) else list(chosen or [])
    if not names and isinstance(content.get("disease"), dict):
        names = [name for name, value in content["disease"].items() if value is True]
    names = [str(n).strip() for n in names if str(n).strip()]
    if len(names) != 1:
        raise ValueError(f"{len(names)} labels chosen ({', '.join(names) or 'none'}); one label an image is needed")
    return str(url), names[0]


def _from_folders(channel: str, base: Path, tree: _Tree) -> ChannelListing:
    """One folder per class."""
    in_folders = sorted(rel for rel in tree.dicom if "/" in rel)
    if not in_folders:
        raise DataError(
            f"channel '{channel}' ({base}): no labels found. Expected {_EXPECTED}. Found {len(tree.dicom)} DICOM "
            "file(s) at the top level and no label file."
        )
    listing = ChannelListing(channel, base, FORMAT_FOLDERS, "class folders")
    for rel in in_folders:
        listing.items.append(LabeledFile(rel, rel.split("/", 1)[0]))
    for rel in sorted(tree.dicom - set(in_folders)):
        listing.skipped.append({"file": rel, "reason": "DICOM file outside the class folders: no label"})
    return listing


def _add_once(
    listing: ChannelListing,
    tree: _Tree,
    seen: dict[str, str],
    rel: str,
    label: str,
    patient: str | None,
    *,
    how: str,
    where: str,
) -> None:
    """Record a file's label the first time it is named; a repeat with the same label is ignored, one with another
    label is a bad entry (`seen`: file to its first label, shared by every entry of one label source)."""
    if rel not in seen:
        seen[rel] = label
        _add(listing, tree, rel, label, patient, how)
    elif seen[rel] != label:
        listing.bad.append(_bad(listing.channel, rel, f"labeled twice ('{seen[rel]}' and '{label}', {where}); "
                                                       "one label an image"))


def _add(listing: ChannelListing, tree: _Tree, rel: str, label: str, patient: str | None, how: str) -> None:
    """Record a labeled file, or a bad entry when it is missing or not DICOM."""
    if rel in tree.dicom:
        listing.items.append(LabeledFile(rel, label, patient))
    elif rel in tree.other:
        listing.bad.append(_bad(listing.channel, rel, f"{how} but not a DICOM file (no 'DICM' marker at byte 128)"))
    else:
        listing.bad.append(_bad(listing.channel, rel, f"{how} but not found in the channel"))


def _skip_unlabeled(listing: ChannelListing, tree: _Tree, reason: str) -> None:
    """List the DICOM files no label names."""
    named = {item.file for item in listing.items} | {entry["file"] for entry in listing.bad}
    for rel in sorted(tree.dicom - named):
        listing.skipped.append({"file": rel, "reason": f"DICOM file without a label ({reason})"})


def _match_key(tree: _Tree, key: str) -> tuple[str | None, str]:
    """The channel file an S3 key (or instance file name) names: the longest matching tail, else the basename."""
    parts = [p for p in key.split("/") if p]
    if not parts:
        return None, "empty S3 key"
    for start in range(len(parts)):
        candidate = "/".join(parts[start:])
        if candidate in tree.dicom or candidate in tree.other:
            return candidate, ""
    matches = tree.by_basename.get(parts[-1], [])
    if len(matches) == 1:
        return matches[0], ""
    if matches:
        return None, f"ambiguous: {len(matches)} files are named {parts[-1]}; keep the S3 key's folders"
    return None, "not found in the channel"


def normalize_path(raw: str) -> str | None:
    """A '/'-separated path inside the channel, or None when it points outside."""
    text = raw.replace("\\", "/").strip()
    if not text or text.startswith("/"):
        return None
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _bad(channel: str, file: str, reason: str) -> dict[str, str]:
    """A bad-file record."""
    return {"channel": channel, "file": file, "reason": reason}

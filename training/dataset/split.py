"""Who goes where: patients, the train/validation split and each rank's shard; and what the training loop receives.

`assign(records, key, ...)` is step 4 of training/dataset/prepare.py (whose docstring tells the whole story):

1. Patients: each file is grouped by the labels.csv patient_id column, else its PatientID. Where a file's PatientID
   is blank, or one value is shared by all files (as some de-identification leaves it), it is grouped by
   StudyInstanceUID, and where that is blank or shared too, by the file itself (`split_key`, `split_key_counts`,
   `split_key_notes` in the data's summary say what was used). A group is named by a keyed pseudonym (`patient_hash`),
   never by its raw value.
2. Overlap: a patient in two channels is an error whatever `on_bad_file` says (evaluation would see patients the
   model trained on).
3. Sides: given validation and test channels are used as they are; without a validation channel about
   `val_fraction` of each class's images is held out, whole patient groups at a time (a group counts for its
   majority class; groups are taken in a seeded random order).
4. Shards: each side, sorted by (channel, file), is dealt out round-robin: rank r of world_size keeps every
   world_size-th file starting at r, so the shards are disjoint, cover the side and differ in size by at most one.

`Split` and `PreparedData` are what training/dataset/prepare.py returns and training/dataset/loader.py batches.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.dataset.dicom import DicomHeader
from training.dataset.labels import DataError, LabeledFile
from training.job.environment import DATA_CHANNELS

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One side (train, validation or test) of this rank, decoded and cached.

    Attributes:
        images: uint8 N x 1 x H x W (a view of the cache; memmap-backed when the cache is on disk).
        labels: int64 N class indices.
        files: paths inside the channel.
        patients: patient pseudonyms (keyed hashes).
        subgroups: per sample, its values of training/dataset/subgroup_attributes.py SUBGROUP_ATTRIBUTES
            (non-identifying: manufacturer, modality, sex, age band, ...); empty where the data layer read none.
    """

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    patients: list[str]
    subgroups: list[tuple[str, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class PreparedData:
    """Everything the training loop needs from the data.

    Attributes:
        classes: sorted class names; label index = position.
        train: this rank's training shard.
        validation: this rank's validation shard (possibly empty when there are fewer images than ranks).
        test: this rank's test shard, or None without a test channel.
        summary: what was read and how it was split, JSON-serializable, for the lineage and `python -m training.check`
            (its keys: `_summary` in training/dataset/prepare.py).
        bad_files: {"channel", "file", "reason"} for each file not used.
    """

    classes: list[str]
    train: Split
    validation: Split
    test: Split | None
    summary: dict[str, Any]
    bad_files: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Record:
    """One labeled file on its way through prepare(): read, grouped, assigned a side and a rank, decoded."""

    channel: str
    item: LabeledFile
    path: Path
    header: DicomHeader | None = None
    kind: str = ""  # what groups it: PatientID, patient_id column, StudyInstanceUID or file
    key: str = ""  # the raw grouping value: in memory only, never written
    patient: str = ""  # the keyed pseudonym
    side: str = ""
    owner: int = 0  # the rank that decodes and caches it

    @property
    def file(self) -> str:
        return self.item.file

    @property
    def label(self) -> str:
        return self.item.label


def patient_hash(kind: str, value: str, key: bytes) -> str:
    """The name a patient goes by in logs, errors and the data's summary.

    Args:
        kind: 'patient', 'study' or 'file': what the value identifies (so equal strings of different kinds differ).
        value: the raw identifier.
        key: the secret 32-byte key (DataOptions.pseudonym_key, training/dataset/prepare.py).

    Returns:
        'p-' and 16 hex digits of HMAC-SHA256(key, kind \x1f value).
    """
    digest = hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()
    return f"p-{digest[:16]}"


def assign(
    records: list[Record], key: bytes, *, val_fraction: float, seed: int, has_validation: bool, world_size: int
) -> dict[str, Any]:
    """Group by patient, check that no patient is in two channels, choose each file's side and rank (the rules are
    in this module's docstring); the records are updated in place.

    Args:
        records: every labeled file whose header was read, of every channel.
        key: the pseudonym key.
        val_fraction: share of the train channel held out without a validation channel.
        seed: seeds the held-out choice.
        has_validation: whether a validation channel was given.
        world_size: the number of ranks.

    Returns:
        The summary's `split_key`, `split_key_counts` and `split_key_notes`.

    Raises:
        DataError: a patient in two channels, or too few patient groups to hold out a validation set.
    """
    split_key = _assign_patients(records, key)
    _check_overlap(records, split_key["split_key"])
    _assign_sides(records, val_fraction, seed, has_validation=has_validation)
    for side in DATA_CHANNELS:
        for position, record in enumerate(in_shard_order(records, side)):
            record.owner = position % world_size
    return split_key


def in_shard_order(records: list[Record], side: str) -> list[Record]:
    """The records of one side, in their canonical (shard) order: by channel, then path."""
    return sorted((r for r in records if r.side == side), key=lambda r: (r.channel, r.file))


def _assign_patients(records: list[Record], key: bytes) -> dict[str, Any]:
    """Choose each file's grouping key (module docstring, step 1) and hash it; report what was used."""

    def usable(values: list[str]) -> set[str]:
        held = Counter(v for v in values if v)
        # One value on every file that has one (several files) identifies nobody: de-identification left it.
        return set() if len(held) == 1 and next(iter(held.values())) > 1 else set(held)

    column = usable([r.item.patient_id or "" for r in records])
    patient_ids = usable([r.header.patient_id if r.header else "" for r in records])
    studies = usable([r.header.study_uid if r.header else "" for r in records])
    for record in records:
        header = record.header
        assert header is not None
        if record.item.patient_id and record.item.patient_id in column:
            record.kind, group, record.key = "patient_id column", "patient", record.item.patient_id
        elif header.patient_id in patient_ids:
            record.kind, group, record.key = "PatientID", "patient", header.patient_id
        elif header.study_uid in studies:
            record.kind, group, record.key = "StudyInstanceUID", "study", header.study_uid
        else:
            record.kind, group, record.key = "file", "file", f"{record.channel}/{record.file}"
        record.patient = patient_hash(group, record.key, key)
        record.key = f"{group}\x1f{record.key}"
    counts = Counter(record.kind for record in records)
    notes = []
    total = len(records)
    fallback = counts.get("StudyInstanceUID", 0) + counts.get("file", 0)
    if fallback:
        why = (
            "PatientID is the same in every file (de-identified?)"
            if not patient_ids and any(r.header and r.header.patient_id for r in records)
            else "PatientID is blank"
        )
        notes.append(
            f"{why} for {fallback} of {total} files: grouped by StudyInstanceUID ({counts.get('StudyInstanceUID', 0)})"
            f" or, where that is blank or shared too, by file ({counts.get('file', 0)})"
        )
        for note in notes:
            log.warning("patient split: %s", note)
    main = counts.most_common(1)[0][0] if counts else "PatientID"
    return {"split_key": main, "split_key_counts": dict(sorted(counts.items())), "split_key_notes": notes}


def _check_overlap(records: list[Record], split_key: str) -> None:
    """A patient in two channels would leak between training and evaluation: always an error."""
    by_key: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    hashes: dict[str, str] = {}
    for record in records:
        by_key[record.key][record.channel].append(record.file)
        hashes[record.key] = record.patient
    clashes = []
    for key, sides in sorted(by_key.items(), key=lambda kv: hashes[kv[0]]):
        if len(sides) > 1:
            where = "; ".join(
                f"{channel}: {len(files)} file(s), e.g. {sorted(files)[0]}" for channel, files in sorted(sides.items())
            )
            clashes.append(f"  patient {hashes[key]} in {where}")
    if clashes:
        raise DataError(
            f"{len(clashes)} patient(s) appear in more than one channel (grouped by {split_key}, named by keyed "
            "hash), so evaluation would see patients the model trained on:\n"
            + "\n".join(clashes)
            + "\nMove each patient's images into one channel."
        )


def _assign_sides(records: list[Record], val_fraction: float, seed: int, *, has_validation: bool) -> None:
    """Train/validation by patient group (stratified by the group's majority class); given channels as they are."""
    for record in records:
        record.side = record.channel
    if has_validation or val_fraction == 0:
        return
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if record.channel == "train":
            groups[record.key].append(record)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        labels = Counter(r.label for r in groups[key])
        majority = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        by_class[majority].append(key)
    rng = random.Random(seed)
    chosen: list[str] = []
    for label in sorted(by_class):
        keys = by_class[label]
        rng.shuffle(keys)
        target = val_fraction * sum(len(groups[k]) for k in keys)
        taken = 0
        for key in keys[:-1]:  # the last group stays in train: every class keeps training images
            size = len(groups[key])
            if taken + size / 2 > target:
                break
            chosen.append(key)
            taken += size
    if not chosen:
        candidates = [keys[0] for keys in by_class.values() if len(keys) > 1]
        if not candidates:
            raise DataError(
                f"cannot hold out a validation set: the train channel has {len(groups)} patient group(s), too few "
                "to split by patient; add patients, give a validation channel, or set val_fraction=0"
            )
        chosen.append(sorted(candidates)[0])
    for key in chosen:
        for record in groups[key]:
            record.side = "validation"

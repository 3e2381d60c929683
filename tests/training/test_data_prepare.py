"""training/dataset/prepare.py prepare(): validation, the patient split, given channels and every kind of bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.training.dicom_builders import (
    gradient,
    read_labels_csv,
    truncate,
    write_image,
    write_labels_csv,
    write_structured_report,
)
from training.dataset.dicom import load_image
from training.dataset.prepare import DataError, DataOptions, prepare
from training.dataset.split import patient_hash
from training.job.config import TrainConfig
from training.synthetic import generate

SMALL = DataOptions(image_size=(32, 32), workers=1)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    generate(root, count=40, size=64)
    return root


def test_synthetic_set_is_split_by_patient(dataset: Path) -> None:
    data = prepare({"train": dataset}, SMALL)
    assert data.classes == ["abnormal", "normal"]
    assert len(data.train) + len(data.validation) == 40 and data.test is None
    assert not set(data.train.patients) & set(data.validation.patients)
    assert 0.1 <= len(data.validation) / 40 <= 0.3
    assert data.train.images.shape == (len(data.train), 1, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.train.labels.dtype == torch.int64 and set(data.train.labels.tolist()) == {0, 1}
    summary = json.loads(json.dumps(data.summary))  # JSON-serializable
    assert summary["split_key"] == "PatientID" and summary["split_key_counts"] == {"PatientID": 40}
    assert summary["channels"]["train"]["label_format"] == "labels.csv"
    assert sum(summary["class_counts"]["validation"].values()) == len(data.validation)
    labels = dict(read_labels_csv(dataset))
    assert {(f["file"], f["label"]) for f in summary["files"]} == set(labels.items())
    assert all(f["patient"].startswith("p-") for f in summary["files"])
    assert "salt" not in summary["options"] and "pseudonym_key" not in summary["options"]


def test_split_is_deterministic_per_seed(dataset: Path) -> None:
    first = prepare({"train": dataset}, SMALL).validation.files
    assert prepare({"train": dataset}, SMALL).validation.files == first
    others = [prepare({"train": dataset}, DataOptions(image_size=(32, 32), seed=s)).validation.files for s in (1, 2)]
    assert any(files != first for files in others)


def test_given_validation_and_test_channels_are_used_as_they_are(tmp_path: Path) -> None:
    channels = {name: tmp_path / name for name in ("train", "validation", "test")}
    generate(channels["train"], count=24, size=64)
    generate(channels["validation"], count=8, size=64, seed=1, first_patient=101)
    generate(channels["test"], count=8, size=64, seed=2, first_patient=201, label_format="folders")
    data = prepare(channels, SMALL)
    assert len(data.train) == 24 and len(data.validation) == 8
    assert data.test is not None and len(data.test) == 8
    assert data.summary["channels"]["test"]["label_format"] == "folders"
    assert sorted(data.validation.files) == sorted(f for f, _ in read_labels_csv(channels["validation"]))


def test_a_patient_in_two_channels_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    generate(tmp_path / "train", count=12, size=64)
    generate(tmp_path / "validation", count=4, size=64, seed=5)  # SYN-0001 again
    channels = {"train": tmp_path / "train", "validation": tmp_path / "validation"}
    with pytest.raises(DataError, match="patient.* appear in more than one channel") as caught:
        prepare(channels, DataOptions(image_size=(32, 32), on_bad_file="skip", pseudonym_key=b"k" * 32))
    hashed = patient_hash("patient", "SYN-0001", b"k" * 32)
    assert hashed in str(caught.value) and "SYN-0001" not in str(caught.value)
    assert "train: 4 file(s), e.g. images/study-000/img-00000.dcm" in str(caught.value)


def _corrupt(root: Path, kind: str) -> str:
    """Make one kind of bad input in a synthetic csv channel; return the bad file's path inside the channel."""
    rows = read_labels_csv(root)
    if kind == "truncated":
        truncate(root / rows[3][0])
        return rows[3][0]
    if kind == "no-pixel-data":
        write_structured_report(root / "reports" / "sr.dcm")
        write_labels_csv(root, [*rows, ("reports/sr.dcm", "normal")])
        return "reports/sr.dcm"
    if kind == "missing":
        write_labels_csv(root, [*rows, ("images/lost.dcm", "normal")])
        return "images/lost.dcm"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("truncated", "pixel data cannot be decoded"),
        ("no-pixel-data", "no pixel data"),
        ("missing", "listed in labels.csv but not found in the channel"),
    ],
)
def test_bad_file_fails_with_one_error_naming_it(dataset: Path, kind: str, reason: str) -> None:
    bad = _corrupt(dataset, kind)
    with pytest.raises(DataError) as caught:
        prepare({"train": dataset}, SMALL)
    message = str(caught.value)
    assert message.startswith("1 bad file(s) in the data (on_bad_file='fail')")
    assert f"[train] {bad}: " in message and reason in message and "on_bad_file='skip'" in message
    assert caught.value.problems == [{"channel": "train", "file": bad, "reason": caught.value.problems[0]["reason"]}]


@pytest.mark.parametrize("kind", ["truncated", "no-pixel-data", "missing"])
def test_bad_file_is_skipped_and_listed(
    dataset: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _corrupt(dataset, kind)
    out = tmp_path / "output"
    with caplog.at_level(logging.WARNING, logger="training"):
        data = prepare({"train": dataset}, DataOptions(image_size=(32, 32), on_bad_file="skip"), output_dir=out)
    assert len(data.train) + len(data.validation) == 40 - (kind == "truncated")
    assert bad not in data.train.files + data.validation.files
    listed = json.loads((out / "bad_files.json").read_text())
    assert [entry["file"] for entry in listed] == [bad] == [entry["file"] for entry in data.bad_files]
    assert any(f"skipping [train] {bad}: " in record.getMessage() for record in caplog.records)


def test_every_bad_file_is_in_the_one_error(dataset: Path) -> None:
    bad = sorted(_corrupt(dataset, kind) for kind in ("truncated", "no-pixel-data", "missing"))
    with pytest.raises(DataError) as caught:
        prepare({"train": dataset}, SMALL)
    assert sorted(problem["file"] for problem in caught.value.problems) == bad
    assert str(caught.value).startswith("3 bad file(s)")


def test_unknown_label_in_validation_is_a_bad_file(tmp_path: Path) -> None:
    generate(tmp_path / "train", count=12, size=64)
    generate(tmp_path / "validation", count=4, size=64, first_patient=50)
    rows = read_labels_csv(tmp_path / "validation")
    write_labels_csv(tmp_path / "validation", [(rows[0][0], "pneumothorax"), *rows[1:]])
    channels = {"train": tmp_path / "train", "validation": tmp_path / "validation"}
    with pytest.raises(DataError, match=r"\[validation\] .*label 'pneumothorax' is not a class of the train channel"):
        prepare(channels, SMALL)
    data = prepare(channels, DataOptions(image_size=(32, 32), on_bad_file="skip"))
    assert len(data.validation) == 3 and rows[0][0] not in data.validation.files


def _blank_id_channel(root: Path, patient_id: str) -> None:
    """Six images in three studies whose PatientID is blank (or shared); labels alternate."""
    rows = []
    for index in range(6):
        name = f"img{index}.dcm"
        study = f"1.2.826.0.1.3680043.99.{index // 2}"
        write_image(root / name, gradient(), patient_id=patient_id, study_uid=study)
        rows.append((name, "normal" if index % 2 else "abnormal"))
    write_labels_csv(root, rows)


@pytest.mark.parametrize("patient_id, why", [("", "PatientID is blank"), ("ANON", "PatientID is the same in every")])
def test_blank_or_shared_patient_ids_fall_back_to_the_study(
    tmp_path: Path, patient_id: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    _blank_id_channel(tmp_path, patient_id)
    with caplog.at_level(logging.WARNING, logger="training"):
        data = prepare({"train": tmp_path}, DataOptions(image_size=(16, 16), val_fraction=0.3))
    assert data.summary["split_key"] == "StudyInstanceUID"
    assert data.summary["split_key_counts"] == {"StudyInstanceUID": 6}
    assert why in data.summary["split_key_notes"][0]
    assert any(why in record.getMessage() for record in caplog.records)
    studies = {f: f"{int(f[3]) // 2}" for f in data.train.files + data.validation.files}
    assert not {studies[f] for f in data.train.files} & {studies[f] for f in data.validation.files}


def test_patient_id_column_groups_the_files(tmp_path: Path) -> None:
    rows = []
    for index in range(8):
        write_image(tmp_path / f"i{index}.dcm", gradient(), patient_id="")
        rows.append((f"i{index}.dcm", ("a", "b")[index % 2], f"P{index // 2}"))
    write_labels_csv(tmp_path, rows, header=("file", "label", "patient_id"))
    data = prepare({"train": tmp_path}, DataOptions(image_size=(16, 16), val_fraction=0.25))
    assert data.summary["split_key_counts"] == {"patient_id column": 8}
    assert len(set(data.validation.patients)) == 1 and len(data.validation) == 2


def test_val_fraction_zero_keeps_everything_for_training(dataset: Path) -> None:
    data = prepare({"train": dataset}, DataOptions(image_size=(16, 16), val_fraction=0.0))
    assert len(data.train) == 40 and len(data.validation) == 0
    assert data.validation.images.shape == (0, 1, 16, 16)


def _one_class(root: Path) -> None:
    generate(root, count=4, size=64, label_format="folders")
    (root / "normal").rename(root / "abnormal" / "n")


@pytest.mark.parametrize(
    "build, message",
    [
        (_one_class, "needs images of at least 2 classes"),
        (lambda root: root.mkdir(), "is empty"),
    ],
    ids=["one-class", "empty"],
)
def test_unusable_train_channel(tmp_path: Path, build: object, message: str) -> None:
    root = tmp_path / "train"
    build(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=message):
        prepare({"train": root}, SMALL)


def test_channel_names_are_checked(dataset: Path) -> None:
    with pytest.raises(DataError, match="must include 'train'.*unknown: training"):
        prepare({"training": dataset}, SMALL)


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"on_bad_file": "ignore"}, "on_bad_file"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"image_size": (4, 4)}, "image_size"),
        ({"window": (40.0, -1.0)}, "window"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"workers": 0}, "workers"),
        ({"pseudonym_key": b"short"}, "pseudonym_key"),
        ({"cache_memory_mb": -1}, "cache_memory_mb"),
    ],
)
def test_options_are_validated(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        DataOptions(**kwargs)  # type: ignore[arg-type]


def test_options_take_the_job_defaults_and_fields() -> None:
    # DataOptions' defaults are TrainConfig's (issue 19 item 4: written once), and from_config carries every data
    # field of the hyperparameters, "" becoming None where DataOptions says "not given" that way.
    assert DataOptions.from_config(TrainConfig()) == DataOptions()
    shared = {"image_size": (48, 40), "on_bad_file": "skip", "window": (40.0, 400.0), "val_fraction": 0.3, "seed": 7,
              "cache_memory_mb": 5, "workers": 3}
    config = TrainConfig(**shared, cache_dir="/tmp/cache", label_attribute="disease")  # type: ignore[arg-type]
    options = DataOptions.from_config(config, pseudonym_key=b"k" * 32, rank=1, world_size=2)
    assert options == DataOptions(**shared, cache_dir=Path("/tmp/cache"), label_attribute="disease",  # type: ignore[arg-type]
                                  pseudonym_key=b"k" * 32, rank=1, world_size=2)


@pytest.mark.parametrize(("size", "allowed"), [((8, 4096), True), ((96, 96), True), ((7, 96), False),
                                               ((96, 4097), False), ((96,), False)])
def test_one_image_size_rule(tmp_path: Path, size: tuple[int, ...], allowed: bool) -> None:
    # TrainConfig, DataOptions and load_image accept and refuse the same sizes: one rule (training/job/config.py).
    image = write_image(tmp_path / "ct.dcm", gradient(16, 16))
    makers = [lambda: TrainConfig(image_size=size), lambda: DataOptions(image_size=size),  # type: ignore[arg-type]
              lambda: load_image(image, image_size=size)]
    for make in makers:
        if allowed:
            make()
        else:
            with pytest.raises(ValueError, match="image_size"):
                make()

"""training/job/lineage.py: the launcher's dataset manifest merged into the data's summary; the code's commit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.training.job_sagemaker import ROOT
from training.job import lineage
from training.job.config import TrainConfig
from training.job.environment import JobContext

OBJECTS = [
    {"channel": "train", "file": "a/1.dcm", "uri": "s3://b/d/train/a/1.dcm", "version_id": "v1", "etag": '"e1"'},
    {"channel": "test", "file": "2.dcm", "uri": "s3://b/d/test/2.dcm", "version_id": None, "etag": None},
]


def test_read_dataset_manifest_from_a_file_or_a_channel_directory(tmp_path: Path) -> None:
    (tmp_path / "s3-objects.json").write_text(json.dumps({"objects": OBJECTS}))
    for path in (tmp_path, tmp_path / "s3-objects.json"):
        record = lineage.read_dataset_manifest(path)
        assert record[("train", "a/1.dcm")] == {"uri": "s3://b/d/train/a/1.dcm", "version_id": "v1", "etag": '"e1"'}
        assert record[("test", "2.dcm")]["version_id"] is None
    assert lineage.read_dataset_manifest(None) == {}


def test_a_bad_dataset_manifest_names_the_file_and_the_form(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"files": []}))
    with pytest.raises(ValueError, match=r"the dataset manifest .*m.json is not readable as \{'objects'"):
        lineage.read_dataset_manifest(tmp_path / "m.json")
    (tmp_path / "n.json").write_text("{}")
    with pytest.raises(ValueError, match="exactly one \\*.json file; found 2"):
        lineage.read_dataset_manifest(tmp_path)


def test_data_lineage_adds_versions_per_file() -> None:
    summary = {
        "classes": ["a", "b"],
        "files": [
            {"channel": "train", "file": "a/1.dcm", "label": "a", "patient": "p-1", "split": "train"},
            {"channel": "train", "file": "a/3.dcm", "label": "b", "patient": "p-2", "split": "validation"},
        ],
    }
    merged = lineage.data_lineage(summary, lineage.dataset_manifest_objects(OBJECTS))
    assert merged["files"][0]["version_id"] == "v1" and "version_id" not in merged["files"][1]
    assert merged["s3"] == {"objects_in_record": 2, "files_matched": 1, "files_unmatched": 1}
    assert "version_id" not in summary["files"][0]  # the input is not modified


def test_code_identity_prefers_the_declared_commit() -> None:
    assert lineage.code_identity("abc") == {"commit": "abc", "dirty": False, "source": "environment"}
    assert lineage.code_identity("abc+dirty") == {"commit": "abc+dirty", "dirty": True, "source": "environment"}


def test_the_image_the_launcher_and_the_lineage_name_the_code_one_way() -> None:
    """One definition (training/job/code_identity.py): the last commit of training/, "+dirty" with uncommitted changes;
    the same string wherever it is asked, in a checkout."""
    from infra.constructs.training_image import training_code_commit
    from launcher.job_contract import code_commit

    last = subprocess.run(["git", "log", "-1", "--format=%H", "--", "training"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "training"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    expected = last + ("+dirty" if dirty else "")
    identity = lineage.code_identity(None)
    assert identity == {"commit": expected, "dirty": bool(dirty), "source": "git"}
    assert training_code_commit() == code_commit() == expected


def test_job_lineage_keeps_the_pseudonym_key_out(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    context = JobContext(channels={"train": tmp_path}, model_dir=tmp_path, output_dir=tmp_path, image={"version": "1"},
                         pseudonym_key_file=key_file)
    record = lineage.job_lineage(config=TrainConfig(), context=context, data={"files": []})
    assert "salt" not in record["hyperparameters"] and "pseudonym_key" not in record["hyperparameters"]
    assert "k" * 32 not in json.dumps(record)
    assert record["image"] == {"version": "1"} and record["job"]["on_sagemaker"] is False

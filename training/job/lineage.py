"""Where a model came from: its data (files, S3 versions, patient split), code, image, job and settings.

The bundle's metadata.json carries this under "lineage", so a model file alone answers "what was it trained on,
with which code, in which image".

S3 object versions: the job cannot ask S3 (it never imports boto3), so the launcher tells it. It writes a JSON
file into an optional channel named `manifest` (locally: `--manifest PATH`, a file or a directory holding one
*.json file):

    {"objects": [{"channel": "train", "file": "normal/a.dcm", "uri": "s3://bucket/datasets/x/train/normal/a.dcm",
                  "version_id": "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY", "etag": "\\"9b2cf535f27731c974343645a3985328\\""}]}

`file` is the path inside the channel, as the data layer names files; `version_id` and `etag` may be null (an
unversioned bucket). A separate channel keeps the record out of the data channels, whose every file is read as data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.dataset.prepare import DataError
from training.job.code_identity import DIRTY, code_commit
from training.job.config import TrainConfig
from training.job.environment import JobContext


def read_dataset_manifest(path: Path | None) -> dict[tuple[str, str], dict[str, Any]]:
    """Read the launcher's S3 record (module docstring) into (channel, file) -> {uri, version_id, etag}.

    Args:
        path: the dataset manifest's file, or a directory with exactly one *.json file; None: no record.

    Raises:
        DataError: the file is missing, ambiguous or not in the documented form; the message names it.
    """
    if path is None:
        return {}
    if path.is_dir():
        candidates = sorted(path.glob("*.json"))
        if len(candidates) != 1:
            raise DataError(f"the dataset manifest's channel {path} must hold exactly one *.json file; "
                            f"found {len(candidates)}")
        path = candidates[0]
    try:
        return dataset_manifest_objects(json.loads(path.read_text(encoding="utf-8"))["objects"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"the dataset manifest {path} is not readable as {{'objects': [{{'channel', 'file', 'uri', 'version_id', "
            f"'etag'}}]}} ({type(exc).__name__}: {exc}); see training/job/lineage.py"
        ) from None


def dataset_manifest_objects(objects: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The dataset manifest's "objects" list as (channel, file) -> {uri, version_id, etag}.

    Raises:
        KeyError: an object without channel or file.
    """
    return {
        (str(o["channel"]), str(o["file"])): {
            "uri": o.get("uri"),
            "version_id": o.get("version_id"),
            "etag": o.get("etag"),
        }
        for o in objects
    }


def data_lineage(summary: Mapping[str, Any], s3: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    """The data layer's summary (files with their hashed patient and split) with S3 versions added per file.

    Args:
        summary: `PreparedData.summary`.
        s3: from `read_dataset_manifest`.

    Returns:
        A copy of the summary; each file entry gains uri, version_id and etag where the S3 record has the file, and
        "s3" summarizes the coverage.
    """
    result = dict(summary)
    files = []
    for entry in summary.get("files", []):
        found = s3.get((entry["channel"], entry["file"]))
        files.append({**entry, **found} if found else dict(entry))
    result["files"] = files
    matched = sum(1 for entry in files if "uri" in entry)
    result["s3"] = {"objects_in_record": len(s3), "files_matched": matched, "files_unmatched": len(files) - matched}
    return result


def source_digests(summary: Mapping[str, Any], channels: Mapping[str, Path]) -> list[dict[str, Any]]:
    """Each channel's data by checksum, for the model card: the SHA-256 of the sorted lines "file<TAB>sha256 of its
    bytes" over the files the job used (a series folder: each file in it), so the same data gives the same digest
    wherever it lies, and no identifier is written.

    Args:
        summary: `PreparedData.summary` (its "files": channel and file of each sample used).
        channels: channel name to its local directory.
    """
    lines: dict[str, list[str]] = {}
    for entry in summary.get("files", []):
        root = channels.get(entry["channel"])
        if root is None:
            continue
        path = root / entry["file"]
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            if member.is_file():
                digest = _file_sha256(member)
                lines.setdefault(entry["channel"], []).append(f"{member.relative_to(root).as_posix()}\t{digest}")
    return [
        {"channel": channel, "files": len(rows), "sha256": hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()}
        for channel, rows in sorted(lines.items())
    ]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_identity(commit_from_env: str | None) -> dict[str, Any]:
    """The code's commit in training/job/code_identity.py's one definition (the last commit of training/, "+dirty" with
    uncommitted changes): the one the launcher or image declared, else asked of git where the code is a checkout.

    Args:
        commit_from_env: JobContext.code_commit (TRAINING_CODE_COMMIT).

    Returns:
        {"commit": str | None, "dirty": bool | None, "source": "environment" | "git" | None}.
    """
    commit, source = (commit_from_env, "environment") if commit_from_env else (code_commit(), "git")
    if commit is None:
        return {"commit": None, "dirty": None, "source": None}
    return {"commit": commit, "dirty": commit.endswith(DIRTY), "source": source}


def job_lineage(*, config: TrainConfig, context: JobContext, data: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the bundle records about how it was made.

    Args:
        config: the hyperparameters (the pseudonym key is none of them: training/dataset/pseudonym_key.py).
        context: the job's context.
        data: from `data_lineage`.
    """
    hyperparameters = config.hyperparameters()
    return {
        "data": data,
        "code": code_identity(context.code_commit),
        "image": dict(context.image) or None,
        "job": {
            "name": context.job_name,
            "on_sagemaker": context.on_sagemaker,
            "hosts": list(context.hosts),
            "world_size": context.world_size,
        },
        "hyperparameters": hyperparameters,
    }


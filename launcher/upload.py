"""Upload a local DICOM folder with its labels to the data bucket, once, and record what is there.

    manifest = upload_dataset(settings, "data/synthetic", "synthetic")

Layout in the bucket: `datasets/<name>/<channel>/<path inside the channel>` for the channels train, validation and
test, and `datasets/<name>/manifest.json`, the record of every object (key, size, SHA-256, S3 version id). The
training job receives that record as its `manifest` channel and copies it into the model's lineage
(training/lineage.py); the launcher reads it back to start jobs on a dataset by name.

A local folder holding `train/` (and optionally `validation/`, `test/`) is uploaded channel by channel; any other
folder is the train channel (the job then holds out validation images by patient). Hidden files and folders
(.DS_Store, .ipynb_checkpoints) are not uploaded; the job ignores them too.

Every object is written with SSE-KMS under the stack's key and a SHA-256 checksum that S3 verifies. An object that
already holds the file is not sent again: S3's own checksum is compared with the file's (launcher/checksums.py), so a
second upload of the same folder transfers nothing. Objects under the dataset's prefix that the folder no longer has
stop the upload (the job would read them as data) unless `delete_extra=True`; the bucket is versioned, so a deleted
object stays recoverable as a noncurrent version until the stack's lifecycle rule expires it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import ClientError
from s3transfer.subscribers import BaseSubscriber
from tqdm.auto import tqdm

from launcher import checksums
from launcher.job_contract import DATA_CHANNELS
from launcher.settings import Settings

log = logging.getLogger(__name__)

DATASETS_PREFIX = "datasets/"  # infra/constructs/storage.py: jobs may read only this prefix of the data
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
MiB = 1024 * 1024
# Multipart above 16 MiB in 16 MiB parts: most DICOM files (CT and MR slices, radiographs) go in one request, large
# ones (mammograms, multi-frame) in parallel parts; 10 files or parts in flight saturate a notebook's network.
DEFAULT_TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=10, use_threads=True,
    preferred_transfer_client="classic",  # s3transfer's own client: SHA-256 checksums part by part, as described
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class UploadError(RuntimeError):
    """The upload cannot proceed, or S3 holds something other than what was sent; the message says what to do."""


@dataclass(frozen=True)
class DatasetObject:
    """One uploaded file.

    Attributes:
        channel: train, validation or test.
        file: the path inside the channel, '/'-separated (how the job names files).
        key: the S3 key.
        size: bytes.
        sha256: hex SHA-256 of the whole file.
        checksum_sha256: S3's checksum of the object (base64; for a multipart object the composite, "<value>-<parts>").
        version_id: the S3 version (None in an unversioned bucket).
        etag: the S3 ETag (an identifier; not an MD5 for KMS-encrypted or multipart objects).
    """

    channel: str
    file: str
    key: str
    size: int
    sha256: str
    checksum_sha256: str
    version_id: str | None
    etag: str | None


@dataclass(frozen=True)
class DatasetManifest:
    """What a dataset in the bucket is made of (also the document at `manifest_key`).

    Attributes:
        name: the dataset's name.
        bucket: the data bucket.
        objects: every file, sorted by channel and path.
        manifest_version_id: the S3 version of manifest.json.
        transferred_files: files sent by the upload that returned this (0 when everything was already there).
        transferred_bytes: their bytes.
    """

    name: str
    bucket: str
    objects: tuple[DatasetObject, ...]
    manifest_version_id: str | None = None
    transferred_files: int = 0
    transferred_bytes: int = 0

    @property
    def prefix(self) -> str:
        """The dataset's key prefix, `datasets/<name>/`."""
        return dataset_prefix(self.name)

    @property
    def manifest_key(self) -> str:
        """The key of manifest.json."""
        return f"{self.prefix}{MANIFEST_NAME}"

    @property
    def manifest_uri(self) -> str:
        """The S3 URI of manifest.json (the job's `manifest` channel)."""
        return f"s3://{self.bucket}/{self.manifest_key}"

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels the dataset has, in the job's order."""
        present = {o.channel for o in self.objects}
        return tuple(c for c in DATA_CHANNELS if c in present)

    @property
    def total_bytes(self) -> int:
        """The dataset's size in bytes."""
        return sum(o.size for o in self.objects)

    def channel_uri(self, channel: str) -> str:
        """The S3 prefix URI of a channel, `s3://<bucket>/datasets/<name>/<channel>/`.

        Args:
            channel: train, validation or test.
        """
        if channel not in self.channels:
            raise KeyError(f"dataset {self.name!r} has no {channel!r} channel; it has {', '.join(self.channels)}")
        return f"s3://{self.bucket}/{self.prefix}{channel}/"

    def document(self) -> dict[str, Any]:
        """The manifest.json document: deterministic, so an unchanged dataset gives the same bytes.

        `objects` entries carry what training/lineage.py reads (channel, file, uri, version_id, etag) and more.
        """
        return {
            "version": MANIFEST_VERSION,
            "dataset": self.name,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "channels": {c: self.channel_uri(c) for c in self.channels},
            "objects": [{**asdict(o), "uri": f"s3://{self.bucket}/{o.key}"} for o in self.objects],
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any], *, version_id: str | None = None) -> DatasetManifest:
        """Read a manifest.json document.

        Args:
            document: the parsed JSON.
            version_id: the S3 version it was read from.

        Raises:
            UploadError: not a manifest of this version.
        """
        if document.get("version") != MANIFEST_VERSION:
            raise UploadError(f"manifest of dataset {document.get('dataset')!r} has version "
                              f"{document.get('version')!r}; this launcher reads version {MANIFEST_VERSION}: "
                              "upload the dataset again")
        fields = DatasetObject.__dataclass_fields__
        objects = tuple(DatasetObject(**{k: v for k, v in o.items() if k in fields}) for o in document["objects"])
        return cls(name=document["dataset"], bucket=document["bucket"], objects=objects,
                   manifest_version_id=version_id)


def dataset_prefix(name: str) -> str:
    """`datasets/<name>/`, after checking the name.

    Args:
        name: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters.

    Raises:
        ValueError: another name.
    """
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r} is not allowed: use letters, digits, '.', '_' and '-' (at most 100, "
                         "starting with a letter or digit), e.g. 'chest-xray-2026'")
    return f"{DATASETS_PREFIX}{name}/"


def upload_dataset(
    settings: Settings,
    local_dir: str | os.PathLike[str],
    name: str,
    *,
    delete_extra: bool = False,
    transfer_config: TransferConfig | None = None,
    progress: bool = True,
) -> DatasetManifest:
    """Upload a DICOM folder with its labels as dataset `name`, sending only what S3 does not hold yet.

    Args:
        settings: the stack's values.
        local_dir: a folder with train/ (validation/, test/) channel folders, or one folder of DICOM files and labels
            (the train channel). Labels in any format the job reads (labels.csv, a Ground Truth manifest,
            meta-data.json, or one folder per class).
        name: the dataset's name in the bucket (see dataset_prefix).
        delete_extra: delete objects under the dataset's prefix that the folder does not have (they stay
            recoverable as noncurrent versions); False stops with a list of them instead.
        transfer_config: multipart threshold, part size and concurrency; default DEFAULT_TRANSFER_CONFIG.
        progress: show progress bars.

    Returns:
        The dataset's manifest, as written to `datasets/<name>/manifest.json`.

    Raises:
        ValueError: a bad name, or a folder that does not exist or holds no files.
        UploadError: the prefix holds other objects (and not delete_extra), or S3 reports a different checksum.
    """
    prefix = dataset_prefix(name)
    files = list_local_files(Path(local_dir))
    config = transfer_config or DEFAULT_TRANSFER_CONFIG
    workers = max(1, int(config.max_concurrency or 1))
    s3 = settings.boto_session().client("s3")
    bucket = settings.bucket
    keys = {f"{prefix}{channel}/{rel}": (channel, rel, path) for channel, rel, path in files}

    remote = _list_objects(s3, bucket, prefix)
    extra = sorted(k for k in remote if k not in keys and k != f"{prefix}{MANIFEST_NAME}")
    if extra and not delete_extra:
        shown = "\n  ".join(extra[:10]) + ("\n  ..." if len(extra) > 10 else "")
        raise UploadError(
            f"s3://{bucket}/{prefix} holds {len(extra)} object(s) that {local_dir} does not have, and a job would read "
            f"them as data:\n  {shown}\nupload under a new dataset name, or pass delete_extra=True to delete them "
            "(the versioned bucket keeps them as noncurrent versions)"
        )

    def check(key: str, bar: Any) -> tuple[bytes, dict[str, Any] | None]:
        """The file's SHA-256, and the object's HeadObject response when it holds the file already."""
        path = keys[key][2]
        digest = checksums.sha256_file(path)
        head = _matching_head(s3, bucket, key, path, digest) if remote.get(key) == path.stat().st_size else None
        bar.update(1)
        return digest, head

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            _bar(progress, total=len(keys), unit="file", desc=f"checking {name}") as bar:
        checked = dict(zip(keys, pool.map(lambda k: check(k, bar), keys), strict=True))
    digests = {k: digest for k, (digest, _) in checked.items()}
    present: dict[str, dict[str, Any]] = {k: head for k, (_, head) in checked.items() if head is not None}
    to_send = [k for k in keys if k not in present]
    sent_bytes = sum(keys[k][2].stat().st_size for k in to_send)
    extra_args = {"ChecksumAlgorithm": "SHA256", "ServerSideEncryption": "aws:kms",
                  "SSEKMSKeyId": settings.data_key_arn}
    if to_send:
        log.info("uploading %d of %d files (%d bytes) to s3://%s/%s", len(to_send), len(keys), sent_bytes, bucket,
                 prefix)
        with _bar(progress, total=sent_bytes, unit="B", unit_scale=True, desc=f"uploading {name}") as bar, \
                create_transfer_manager(s3, config) as manager:
            futures = [manager.upload(str(keys[k][2]), bucket, k, extra_args=extra_args,
                                      subscribers=[_Progress(bar)]) for k in to_send]
            for future in futures:
                future.result()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            sent = list(pool.map(lambda k: _matching_head(s3, bucket, k, keys[k][2], digests[k]), to_send))
        for key, head in zip(to_send, sent, strict=True):
            if head is None:
                raise UploadError(f"s3://{bucket}/{key} does not hold the SHA-256 of {keys[key][2]} after its upload "
                                  "(the file changed while uploading, or another writer replaced it): upload again")
            present[key] = head
    else:
        log.info("all %d files of %s are in s3://%s/%s already; nothing sent", len(keys), local_dir, bucket, prefix)
    if extra:
        _delete(s3, bucket, extra)

    objects = tuple(
        DatasetObject(channel=channel, file=rel, key=key, size=path.stat().st_size, sha256=digests[key].hex(),
                      checksum_sha256=str(checksums.RemoteChecksum.from_head(present[key])),
                      version_id=present[key].get("VersionId"), etag=present[key].get("ETag"))
        for key, (channel, rel, path) in sorted(keys.items(), key=lambda item: (item[1][0], item[1][1]))
    )
    manifest = DatasetManifest(name=name, bucket=bucket, objects=objects, transferred_files=len(to_send),
                               transferred_bytes=sent_bytes)
    return replace(manifest, manifest_version_id=_put_manifest(s3, manifest, settings.data_key_arn))


def read_manifest(settings: Settings, name: str) -> DatasetManifest:
    """The manifest of a dataset uploaded earlier.

    Args:
        settings: the stack's values.
        name: the dataset's name.

    Raises:
        UploadError: the dataset has no manifest (never uploaded, or by another tool).
    """
    key = f"{dataset_prefix(name)}{MANIFEST_NAME}"
    s3 = settings.boto_session().client("s3")
    try:
        response = s3.get_object(Bucket=settings.bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        raise UploadError(f"dataset {name!r} has no s3://{settings.bucket}/{key}: upload it with "
                          f"upload_dataset(settings, local_dir, {name!r})") from None
    document = json.loads(response["Body"].read())
    return DatasetManifest.from_document(document, version_id=response.get("VersionId"))


def local_channels(root: Path) -> dict[str, Path]:
    """The channel folders of a local dataset: train/ (validation/, test/) when it has train/, else itself as train.

    Args:
        root: a folder with channel folders, or the train channel itself.

    Raises:
        ValueError: the folder does not exist.
    """
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: give the folder holding the DICOM files and their labels")
    if (root / "train").is_dir():
        return {c: root / c for c in DATA_CHANNELS if (root / c).is_dir()}
    return {"train": root}


def list_local_files(root: Path) -> list[tuple[str, str, Path]]:
    """The files to upload, as (channel, path inside the channel, local path), sorted.

    Args:
        root: a folder with channel folders (train/ required), or the train channel itself.

    Raises:
        ValueError: the folder does not exist or holds no files.
    """
    channels = local_channels(root)
    if (root / "train").is_dir():
        others = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.name not in channels)
        if others:
            log.warning("%s has channel folders; these entries are not uploaded: %s", root, ", ".join(others))
    files = [(channel, rel, path) for channel, folder in channels.items() for rel, path in _walk(folder)]
    if not files:
        raise ValueError(f"{root} holds no files to upload (hidden files and folders are skipped)")
    return sorted(files)


def _walk(folder: Path) -> Iterable[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith("."):
                path = Path(dirpath) / filename
                yield PurePosixPath(*path.relative_to(folder).parts).as_posix(), path


def _list_objects(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return sizes


def _matching_head(s3: Any, bucket: str, key: str, path: Path, digest: bytes) -> dict[str, Any] | None:
    """The object's HeadObject response when S3's SHA-256 checksum is the file's; else None."""
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    remote = checksums.RemoteChecksum.from_head(head)
    if remote is None:
        return None  # uploaded without a SHA-256 checksum (by another tool): send it again, with one
    if remote.parts is None:
        return head if remote.value == checksums.to_base64(digest) else None
    part_size = int(s3.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"])
    return head if checksums.composite_sha256(path, part_size) == (remote.value, remote.parts) else None


def _put_manifest(s3: Any, manifest: DatasetManifest, key_arn: str) -> str | None:
    """Write manifest.json unless S3 holds the same bytes already; returns its version id."""
    body = (json.dumps(manifest.document(), indent=1, sort_keys=True) + "\n").encode("utf-8")
    digest = checksums.to_base64(hashlib.sha256(body).digest())
    try:
        head = s3.head_object(Bucket=manifest.bucket, Key=manifest.manifest_key, ChecksumMode="ENABLED")
        remote = checksums.RemoteChecksum.from_head(head)
        if remote is not None and remote.parts is None and remote.value == digest:
            return head.get("VersionId")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    response = s3.put_object(Bucket=manifest.bucket, Key=manifest.manifest_key, Body=body,
                             ContentType="application/json", ChecksumAlgorithm="SHA256",
                             ServerSideEncryption="aws:kms", SSEKMSKeyId=key_arn)
    return response.get("VersionId")


def _delete(s3: Any, bucket: str, keys: Sequence[str]) -> None:
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
        batch = keys[start:start + 1000]
        response = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        if response.get("Errors"):
            raise UploadError(f"could not delete {len(response['Errors'])} object(s) from s3://{bucket}: "
                              f"{response['Errors'][:3]}")
    log.info("deleted %d object(s) the folder no longer has (noncurrent versions remain)", len(keys))


class _Progress(BaseSubscriber):  # type: ignore[misc]
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._bar.update(bytes_transferred)


def _bar(enabled: bool, **kwargs: Any) -> Any:
    return tqdm(disable=not enabled, **kwargs)

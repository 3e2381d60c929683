"""A dataset's record in the bucket, manifest.json: what the dataset is made of, how it is read and written.

    manifest = read_manifest(settings, "synthetic")    # a dataset uploaded earlier (launcher/datasets/upload.py)

Layout in the bucket: `datasets/<name>/<channel>/<path inside the channel>` for the channels train, validation and
test, and `datasets/<name>/manifest.json`, the record of every object (key, size, SHA-256, S3 version id). The
training job receives that record as its `manifest` channel and copies it into the model's lineage
(training/job/lineage.py); the launcher reads it back to start jobs on a dataset by name. upload_dataset writes it
(launcher/datasets/upload.py) and compares a folder with it before sending anything.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from launcher.datasets import checksums
from launcher.job_contract import DATA_CHANNELS
from launcher.settings import Settings

DATASETS_PREFIX = "datasets/"  # infra/constructs/storage.py: jobs may read only this prefix of the data
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class UploadError(RuntimeError):
    """A dataset cannot be uploaded or read: the name holds other files, S3 holds something other than what was sent,
    or the dataset has no manifest this launcher reads; the message says what to do."""


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

        `objects` entries carry what training/job/lineage.py reads (channel, file, uri, version_id, etag) and more.
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


def recorded_sha256(s3: Any, bucket: str, manifest_key: str) -> dict[str, str]:
    """Key to SHA-256 (hex) of every object manifest.json records; {} for a manifest this launcher cannot read."""
    document = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    objects = document.get("objects") if isinstance(document, dict) else None
    if not isinstance(objects, list):
        return {}
    return {str(o["key"]): str(o["sha256"]) for o in objects if isinstance(o, dict) and "key" in o and "sha256" in o}


def put_manifest(s3: Any, manifest: DatasetManifest, key_arn: str) -> str | None:
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

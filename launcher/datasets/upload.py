"""Upload a local DICOM folder with its labels to the data bucket, once, and record what is there.

    manifest = upload_dataset(settings, "data/synthetic", "synthetic")

Layout in the bucket: `datasets/<name>/<channel>/<path inside the channel>` for the channels train, validation and
test, and `datasets/<name>/manifest.json`, the record of every object (key, size, SHA-256, S3 version id). The
training job receives that record as its `manifest` channel and copies it into the model's lineage
(training/job/lineage.py); the launcher reads it back to start jobs on a dataset by name.

A local folder holding `train/` (and optionally `validation/`, `test/`) is uploaded channel by channel; any other
folder is the train channel (the job then holds out validation images by patient). Hidden files and folders
(.DS_Store, .ipynb_checkpoints) are not uploaded; the job ignores them too. Symbolic links are followed only inside
the folder: a link to a file or folder inside it is uploaded as what it points to, at the link's path; a link that
leads out of the folder (or nowhere) refuses the whole upload, so that nothing beyond the folder the caller named
reaches the bucket; a link back to a folder that contains it (a loop) is not followed.

Every object is written with SSE-KMS under the stack's key and a SHA-256 checksum that S3 verifies. An object that
already holds the file is not sent again: S3's own checksum is compared with the file's
(launcher/datasets/checksums.py), so a second upload of the same folder transfers nothing.

A dataset is its set of (channel, path, SHA-256): a folder that differs from the dataset already under the name (files
added, removed or changed, against manifest.json and against the objects under the prefix) is refused before anything
is written, unless `replace=True`; then the changed files are sent and the objects the folder no longer has are
deleted. The bucket is versioned, so a replaced or deleted object stays recoverable as a noncurrent version until the
stack's lifecycle rule expires it. A prefix holding objects but no manifest.json (an upload that stopped half-way) is
resumed by the same folder: its objects must hold the folder's files, and missing files are sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from dataclasses import replace as with_fields
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import ClientError
from s3transfer.subscribers import BaseSubscriber
from tqdm.auto import tqdm

from launcher.datasets import checksums
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


def upload_dataset(
    settings: Settings,
    local_dir: str | os.PathLike[str],
    name: str,
    *,
    replace: bool = False,
    transfer_config: TransferConfig | None = None,
    progress: bool = True,
) -> DatasetManifest:
    """Upload a DICOM folder with its labels as dataset `name`, sending only what S3 does not hold yet.

    Uploading the folder the dataset was made from again sends nothing. A folder that differs from it (files added,
    removed or changed) is refused before anything is written, unless `replace=True`.

    Args:
        settings: the stack's values.
        local_dir: a folder with train/ (validation/, test/) channel folders, or one folder of DICOM files and labels
            (the train channel). Labels in any format the job reads (labels.csv, a Ground Truth manifest,
            meta-data.json, or one folder per class). Symbolic links must stay inside it.
        name: the dataset's name in the bucket (see dataset_prefix).
        replace: make the dataset this folder when it differs from what the name holds: changed files are sent and
            objects the folder does not have are deleted (both stay recoverable as noncurrent versions). False
            refuses a different folder, saying how many files differ.
        transfer_config: multipart threshold, part size and concurrency; default DEFAULT_TRANSFER_CONFIG.
        progress: show progress bars.

    Returns:
        The dataset's manifest, as written to `datasets/<name>/manifest.json`.

    Raises:
        ValueError: a bad name, a folder that does not exist or holds no files, or a symbolic link out of it.
        UploadError: the name holds a different dataset (and not replace), or S3 reports a different checksum.
    """
    prefix = dataset_prefix(name)
    files = list_local_files(Path(local_dir))
    config = transfer_config or DEFAULT_TRANSFER_CONFIG
    workers = max(1, int(config.max_concurrency or 1))
    s3 = settings.boto_session().client("s3")
    bucket = settings.bucket
    manifest_key = f"{prefix}{MANIFEST_NAME}"
    keys = {f"{prefix}{channel}/{rel}": (channel, rel, path) for channel, rel, path in files}

    remote = _list_objects(s3, bucket, prefix)
    recorded = _recorded_sha256(s3, bucket, manifest_key) if remote.pop(manifest_key, None) is not None else None

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
    difference = _Difference.of(digests, present, remote, recorded)
    if difference and not replace:
        raise UploadError(
            f"dataset {name!r} (s3://{bucket}/{prefix}) holds other files than {local_dir}: {difference}. Nothing was "
            f"uploaded or deleted. Upload this folder under another dataset name, or pass replace=True to make "
            f"{name!r} this folder (replaced and removed objects stay recoverable as noncurrent versions until the "
            "bucket's lifecycle rule expires them; jobs trained on the old files keep their versions in their lineage)"
        )
    if difference:
        log.warning("replacing dataset %r: %s", name, difference)
    extra = sorted(k for k in remote if k not in keys)
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
        unmatched = sum(head is None for head in sent)
        if unmatched:
            raise UploadError(f"{unmatched} of the {len(to_send)} objects sent to s3://{bucket}/{prefix} do not hold "
                              "their file's SHA-256 after the upload (a file changed while uploading, or another "
                              "writer replaced the object): upload again")
        present.update({key: head for key, head in zip(to_send, sent, strict=True) if head is not None})
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
    return with_fields(manifest, manifest_version_id=_put_manifest(s3, manifest, settings.data_key_arn))


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
    """The files to upload, as (channel, path inside the channel, local file to read), sorted.

    A symbolic link to a file or folder inside `root` stands for what it points to, at the link's path (the file to
    read is the link's target); a link back to a folder that contains it is not followed (a loop).

    Args:
        root: a folder with channel folders (train/ required), or the train channel itself.

    Raises:
        ValueError: the folder does not exist or holds no files, a symbolic link in it leads out of it or nowhere,
            or a folder in it cannot be listed.
    """
    channels = local_channels(root)
    if (root / "train").is_dir():
        others = [p for p in root.iterdir() if not p.name.startswith(".") and p.name not in channels]
        if others:
            log.warning("%s has channel folders; %d other entries beside them are not uploaded", root, len(others))
    walks = {channel: _walk(root.resolve(), folder) for channel, folder in channels.items()}
    outside = sum(w.outside for w in walks.values())
    if outside:
        raise ValueError(
            f"{root} holds {outside} symbolic link(s) that lead out of it (or nowhere): nothing was uploaded, so that "
            "no file beyond the folder you named reaches the bucket. Copy what they point to into the folder (e.g. "
            f"`cp -rL`), or remove them; `find {root} -type l` lists the links"
        )
    unreadable = sum(w.unreadable for w in walks.values())
    if unreadable:
        raise ValueError(f"{unreadable} folder(s) inside {root} cannot be listed (no permission): nothing was "
                         f"uploaded; give yourself read access (`chmod -R u+rX {root}`) or move them out of the folder")
    loops, special = sum(w.loops for w in walks.values()), sum(w.special for w in walks.values())
    if loops:
        log.warning("%s: %d symbolic link(s) to a folder that contains them (a loop) were not followed", root, loops)
    if special:
        log.warning("%s: %d entries that are neither files nor folders (pipes, sockets, devices) are not uploaded",
                    root, special)
    files = [(channel, rel, path) for channel, walk in walks.items() for rel, path in walk.files]
    if not files:
        raise ValueError(f"{root} holds no files to upload (hidden files and folders are skipped)")
    return sorted(files)


@dataclass
class _Walk:
    """What one channel folder holds: (path inside it, real file) pairs, and the counts of what was left out."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    outside: int = 0  # symbolic links out of the dataset's folder, or broken
    loops: int = 0  # symbolic links to a folder that contains them
    special: int = 0  # pipes, sockets, devices: reading a pipe would wait forever
    unreadable: int = 0  # folders this user may not list


def _walk(root: Path, folder: Path) -> _Walk:
    """Walk a channel folder by real paths, following symbolic links only while they stay inside `root` (resolved).

    Directories are walked by their real path, and each walk carries the real folders above it, so a link to one of
    them (a loop) is seen at once, and a file is read through its real path (a link changed after the walk cannot
    redirect the upload).
    """
    walk = _Walk()
    top = folder.resolve()
    if not top.is_relative_to(root):
        walk.outside += 1  # the channel folder itself is a link out of the dataset's folder
        return walk
    pending: list[tuple[tuple[str, ...], Path, frozenset[Path]]] = [
        ((), top, frozenset(p for p in (top, *top.parents) if p.is_relative_to(root)))]
    while pending:
        parts, directory, above = pending.pop()
        try:
            with os.scandir(directory) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith("."))
        except OSError:  # no permission: its message would carry the folder's name
            walk.unreadable += 1
            continue
        for entry_name in names:
            path, rel = directory / entry_name, (*parts, entry_name)
            if path.is_symlink():
                try:
                    path = path.resolve(strict=True)
                except (OSError, RuntimeError):  # a broken link, or links that point at each other
                    walk.outside += 1
                    continue
                if not path.is_relative_to(root):
                    walk.outside += 1
                    continue
                if path in above:
                    walk.loops += 1
                    continue
            if path.is_dir():
                pending.append((rel, path, above | {path}))
            elif path.is_file():
                walk.files.append(("/".join(rel), path))
            else:
                walk.special += 1
    return walk


def _list_objects(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return sizes


def _recorded_sha256(s3: Any, bucket: str, manifest_key: str) -> dict[str, str]:
    """Key to SHA-256 (hex) of every object manifest.json records; {} for a manifest this launcher cannot read."""
    document = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    objects = document.get("objects") if isinstance(document, dict) else None
    if not isinstance(objects, list):
        return {}
    return {str(o["key"]): str(o["sha256"]) for o in objects if isinstance(o, dict) and "key" in o and "sha256" in o}


@dataclass(frozen=True)
class _Difference:
    """How a local folder differs from the dataset under its name, in counts (file names may be patient names)."""

    added: int
    removed: int
    changed: int

    @classmethod
    def of(cls, digests: Mapping[str, bytes], present: Mapping[str, Any], remote: Mapping[str, int],
           recorded: Mapping[str, str] | None) -> _Difference:
        """Compare the folder with the dataset.

        Args:
            digests: the folder's files, key to SHA-256.
            present: the keys whose object holds the file already.
            remote: the objects under the prefix (manifest.json aside), key to size.
            recorded: manifest.json's key to SHA-256 (hex); None without manifest.json (a first upload, or one that
                stopped before writing it: files not in S3 yet are then not counted as added).
        """
        known = set(remote) | set(recorded or ())
        changed = sum(1 for key, digest in digests.items()
                      if (key in remote and key not in present)
                      or (recorded is not None and key in recorded and recorded[key] != digest.hex()))
        added = sum(1 for key in digests if key not in known) if recorded is not None else 0
        return cls(added=added, removed=len(known - set(digests)), changed=changed)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        return (f"{self.added} file(s) in the folder that it lacks, {self.removed} file(s) it has that the folder "
                f"lacks, {self.changed} file(s) with other content")


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

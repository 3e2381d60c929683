"""Upload a local DICOM folder with its labels to the data bucket, once, and record what is there.

    manifest = upload_dataset(settings, "data/synthetic", "synthetic")

Layout in the bucket: `datasets/<name>/<channel>/<path inside the channel>` for the channels train, validation and
test, and `datasets/<name>/manifest.json`, the record of every object (launcher/datasets/manifest.py: DatasetManifest,
read_manifest).

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

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from dataclasses import replace as with_fields
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.subscribers import BaseSubscriber
from tqdm.auto import tqdm

from launcher.datasets import checksums
from launcher.datasets.manifest import (
    MANIFEST_NAME,
    DatasetManifest,
    DatasetObject,
    UploadError,
    dataset_prefix,
    put_manifest,
    recorded_sha256,
)
from launcher.job_contract import DATA_CHANNELS
from launcher.settings import Settings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Multipart above 16 MiB in 16 MiB parts: most DICOM files (CT and MR slices, radiographs) go in one request, large
# ones (mammograms, multi-frame) in parallel parts; 10 files or parts in flight saturate a notebook's network.
DEFAULT_TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=10, use_threads=True,
    preferred_transfer_client="classic",  # s3transfer's own client: SHA-256 checksums part by part, as described
)


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
            (the train channel). Labels in any format the job reads (labels.csv, a Ground Truth output manifest,
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
    recorded = recorded_sha256(s3, bucket, manifest_key) if remote.pop(manifest_key, None) is not None else None
    paths = {key: path for key, (_, _, path) in keys.items()}

    with _bar(progress, total=len(keys), unit="file", desc=f"checking {name}") as bar:
        digests, present = _check(s3, bucket, paths, remote, workers, bar)
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
    to_send = {k: path for k, path in paths.items() if k not in present}
    sent_bytes = sum(path.stat().st_size for path in to_send.values())
    if to_send:
        log.info("uploading %d of %d files (%d bytes) to s3://%s/%s", len(to_send), len(keys), sent_bytes, bucket,
                 prefix)
        with _bar(progress, total=sent_bytes, unit="B", unit_scale=True, desc=f"uploading {name}") as bar:
            _transfer(s3, bucket, to_send, settings.data_key_arn, config, bar)
        present.update(_sent(s3, bucket, prefix, to_send, digests, workers))
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
    return with_fields(manifest, manifest_version_id=put_manifest(s3, manifest, settings.data_key_arn))


def _check(s3: Any, bucket: str, paths: Mapping[str, Path], remote: Mapping[str, int], workers: int,
           bar: Any) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """Each file's SHA-256 (key to digest), and the HeadObject responses of the objects that hold their file already.

    Args:
        s3: a boto3 S3 client.
        bucket: the data bucket.
        paths: key to the local file to read.
        remote: the objects under the dataset's prefix, key to size (an object of another size is not asked).
        workers: files read and asked in parallel.
        bar: counts the files.
    """
    def check(key: str) -> tuple[bytes, dict[str, Any] | None]:
        path = paths[key]
        digest = checksums.sha256_file(path)
        head = _matching_head(s3, bucket, key, path, digest) if remote.get(key) == path.stat().st_size else None
        bar.update(1)
        return digest, head

    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = dict(zip(paths, pool.map(check, paths), strict=True))
    digests = {k: digest for k, (digest, _) in checked.items()}
    present: dict[str, dict[str, Any]] = {k: head for k, (_, head) in checked.items() if head is not None}
    return digests, present


def _transfer(s3: Any, bucket: str, paths: Mapping[str, Path], key_arn: str, config: TransferConfig,
              bar: Any) -> None:
    """Send the files (key to local file) with SSE-KMS under the stack's key and a SHA-256 checksum S3 verifies."""
    extra_args = {"ChecksumAlgorithm": "SHA256", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_arn}
    with create_transfer_manager(s3, config) as manager:
        futures = [manager.upload(str(path), bucket, key, extra_args=extra_args, subscribers=[_Progress(bar)])
                   for key, path in paths.items()]
        for future in futures:
            future.result()


def _sent(s3: Any, bucket: str, prefix: str, paths: Mapping[str, Path], digests: Mapping[str, bytes],
          workers: int) -> dict[str, dict[str, Any]]:
    """The HeadObject responses of the objects just sent, each checked to hold its file's SHA-256.

    Raises:
        UploadError: an object holds something else (the file changed while uploading, or another writer).
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sent = list(pool.map(lambda k: _matching_head(s3, bucket, k, paths[k], digests[k]), paths))
    unmatched = sum(head is None for head in sent)
    if unmatched:
        raise UploadError(f"{unmatched} of the {len(paths)} objects sent to s3://{bucket}/{prefix} do not hold "
                          "their file's SHA-256 after the upload (a file changed while uploading, or another "
                          "writer replaced the object): upload again")
    return {key: head for key, head in zip(paths, sent, strict=True) if head is not None}


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

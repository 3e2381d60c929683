"""upload_dataset against the emulator's S3: SSE-KMS, S3-verified SHA-256, nothing sent twice, the manifest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from launcher.datasets.checksums import composite_sha256
from launcher.datasets.manifest import DATASETS_PREFIX, UploadError, dataset_prefix, read_manifest
from launcher.datasets.upload import MiB, list_local_files, upload_dataset
from tests.launcher.conftest import BUCKET, Recording, Stack

# The smallest parts S3 accepts, so that an 11 MiB file goes in three parts.
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4,
                             preferred_transfer_client="classic")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_upload_writes_every_file_encrypted_with_its_checksum(stack: Stack, dicom_folder: Path) -> None:
    manifest = upload_dataset(stack.settings, dicom_folder, "plain", progress=False)

    local = list_local_files(dicom_folder)
    assert [(o.channel, o.file) for o in manifest.objects] == [(c, rel) for c, rel, _ in local]
    assert manifest.channels == ("train",) and manifest.transferred_files == len(local)
    assert manifest.channel_uri("train") == f"s3://{BUCKET}/datasets/plain/train/"
    s3 = boto3.Session().client("s3")
    for obj, (_, _, path) in zip(manifest.objects, local, strict=True):
        head = s3.head_object(Bucket=BUCKET, Key=obj.key, ChecksumMode="ENABLED")
        digest = hashlib.sha256(path.read_bytes()).digest()
        assert obj.key == f"datasets/plain/train/{obj.file}"
        assert (obj.size, obj.sha256) == (path.stat().st_size, digest.hex())
        assert head["ChecksumSHA256"] == obj.checksum_sha256 == base64.b64encode(digest).decode()
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", stack.settings.data_key_arn)
        assert head["VersionId"] == obj.version_id


def test_the_manifest_next_to_the_data_is_what_the_job_reads(stack: Stack, dicom_folder: Path,
                                                             tmp_path: Path) -> None:
    from training.job.lineage import read_dataset_manifest

    manifest = upload_dataset(stack.settings, dicom_folder, "lineage", progress=False)
    path = tmp_path / "manifest" / "manifest.json"
    path.parent.mkdir()
    s3 = boto3.Session().client("s3")
    s3.download_file(BUCKET, "datasets/lineage/manifest.json", str(path))
    head = s3.head_object(Bucket=BUCKET, Key="datasets/lineage/manifest.json")
    assert (head["ServerSideEncryption"], head["VersionId"]) == ("aws:kms", manifest.manifest_version_id)
    assert json.loads(path.read_text()) == manifest.document()

    record = read_dataset_manifest(path.parent)  # the job's own reader, on its manifest channel's directory
    assert record == {
        (o.channel, o.file): {"uri": f"s3://{BUCKET}/{o.key}", "version_id": o.version_id, "etag": o.etag}
        for o in manifest.objects
    }
    assert read_manifest(stack.settings, "lineage") == manifest.__class__(
        name="lineage", bucket=BUCKET, objects=manifest.objects, manifest_version_id=manifest.manifest_version_id)


def test_a_second_upload_transfers_nothing(stack: Stack, dicom_folder: Path, recording: Recording) -> None:
    first = upload_dataset(stack.settings, dicom_folder, "twice", progress=False)
    writes = recording.s3_writes(BUCKET, "datasets/twice/")
    assert len(writes) == len(first.objects) + 1  # every file, and manifest.json
    recording.start()

    second = upload_dataset(stack.settings, dicom_folder, "twice", progress=False)

    assert recording.s3_writes(BUCKET, DATASETS_PREFIX) == []
    assert (second.transferred_files, second.transferred_bytes) == (0, 0)
    assert second.objects == first.objects  # same versions: nothing was rewritten
    assert second.manifest_version_id == first.manifest_version_id


def test_multipart_objects_are_compared_by_their_composite_checksum(stack: Stack, dicom_folder: Path,
                                                                    tmp_path: Path, recording: Recording) -> None:
    folder = copy_of(dicom_folder, tmp_path)
    large = folder / "scans" / "large.bin"  # not DICOM: the job lists and skips it; here it is just bytes
    large.parent.mkdir()
    large.write_bytes(os.urandom(11 * MiB))

    first = upload_dataset(stack.settings, folder, "multipart", transfer_config=SMALL_PARTS, progress=False)

    uploads = [r for r in recording.s3_writes(BUCKET, "datasets/multipart/train/scans/") if "partNumber" in r.query]
    assert len(uploads) == 3
    entry = next(o for o in first.objects if o.file == "scans/large.bin")
    value, parts = composite_sha256(large, 5 * MiB)
    assert entry.checksum_sha256 == f"{value}-{parts}" and parts == 3
    assert entry.sha256 == hashlib.sha256(large.read_bytes()).hexdigest()
    recording.start()

    second = upload_dataset(stack.settings, folder, "multipart", transfer_config=SMALL_PARTS, progress=False)

    assert recording.s3_writes(BUCKET, DATASETS_PREFIX) == [] and second.transferred_files == 0
    # Compared by the parts S3 has, not by this upload's settings: a larger part size still sends nothing.
    default_parts = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    assert upload_dataset(stack.settings, folder, "multipart", transfer_config=default_parts,
                          progress=False).transferred_files == 0


def object_versions(prefix: str) -> list[tuple[str, str]]:
    """(key, version id) of every version and delete marker under a prefix: what a refused upload must not change."""
    response = boto3.Session().client("s3").list_object_versions(Bucket=BUCKET, Prefix=prefix)
    return sorted((v["Key"], v["VersionId"]) for v in [*response.get("Versions", []),
                                                        *response.get("DeleteMarkers", [])])


def test_a_changed_file_is_refused_then_the_only_one_sent_with_replace(stack: Stack, dicom_folder: Path,
                                                                       tmp_path: Path, recording: Recording) -> None:
    folder = copy_of(dicom_folder, tmp_path)
    first = upload_dataset(stack.settings, folder, "changed", progress=False)
    labels = folder / "labels.csv"
    labels.write_text(labels.read_text().replace("normal", "NORMAL"))  # same size, other content
    before = object_versions("datasets/changed/")
    recording.start()

    with pytest.raises(UploadError, match=r"dataset 'changed' .* 0 file\(s\) in the folder that it lacks, 0 file\(s\) "
                                          r"it has that the folder lacks, 1 file\(s\) with other content\. Nothing "
                                          r"was uploaded or deleted\. .*replace=True"):
        upload_dataset(stack.settings, folder, "changed", progress=False)
    assert recording.s3_writes(BUCKET, DATASETS_PREFIX) == [] and object_versions("datasets/changed/") == before

    second = upload_dataset(stack.settings, folder, "changed", replace=True, progress=False)

    written = sorted(r.path for r in recording.s3_writes(BUCKET, DATASETS_PREFIX))
    assert written == [f"/{BUCKET}/datasets/changed/manifest.json", f"/{BUCKET}/datasets/changed/train/labels.csv"]
    assert second.transferred_files == 1
    before_objects = {o.file: o for o in first.objects}
    changed = [o.file for o in second.objects if o != before_objects[o.file]]
    assert changed == ["labels.csv"]
    assert upload_dataset(stack.settings, folder, "changed", progress=False).transferred_files == 0  # the new dataset


def test_removed_files_are_refused_then_deleted_with_replace(stack: Stack, dicom_folder: Path, tmp_path: Path,
                                                             recording: Recording) -> None:
    folder = copy_of(dicom_folder, tmp_path)
    upload_dataset(stack.settings, folder, "shrunk", progress=False)
    removed = sorted((folder / "images").rglob("img-*"))[0]
    removed.unlink()
    key = f"datasets/shrunk/train/{removed.relative_to(folder).as_posix()}"
    before = object_versions("datasets/shrunk/")
    recording.start()

    with pytest.raises(UploadError, match=r"0 file\(s\) in the folder that it lacks, 1 file\(s\) it has that the "
                                          r"folder lacks, 0 file\(s\) with other content") as refused:
        upload_dataset(stack.settings, folder, "shrunk", progress=False)
    assert removed.name not in str(refused.value)  # counts, never a file name (it may be a patient's)
    assert [r for r in recording.requests() if r.method in ("PUT", "POST", "DELETE")] == []
    assert object_versions("datasets/shrunk/") == before

    manifest = upload_dataset(stack.settings, folder, "shrunk", replace=True, progress=False)
    s3 = boto3.Session().client("s3")
    assert key not in {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/shrunk/")["Contents"]}
    assert key not in {o.key for o in manifest.objects}
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=key)
    assert versions["Versions"] and versions["DeleteMarkers"]  # recoverable: the data is a noncurrent version


def test_another_folder_under_the_name_is_refused_without_naming_its_files(
        stack: Stack, dicom_folder: Path, tmp_path: Path, recording: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    upload_dataset(stack.settings, dicom_folder, "taken", progress=False)
    other = copy_of(dicom_folder, tmp_path)
    patient = "DOE^JANE 1970-01-01"  # file names may be patients' names: no error or log may carry one
    (other / "images" / f"{patient}.dcm").write_bytes(b"another study")
    before = object_versions("datasets/taken/")
    recording.start()

    with caplog.at_level("DEBUG", logger="launcher"), pytest.raises(UploadError) as refused:
        upload_dataset(stack.settings, other, "taken", progress=False)

    message = str(refused.value)
    assert "dataset 'taken'" in message and "1 file(s) in the folder that it lacks" in message
    assert "replace=True" in message and "another dataset name" in message
    assert "DOE" not in message and "DOE" not in caplog.text
    assert recording.s3_writes(BUCKET, DATASETS_PREFIX) == [] and object_versions("datasets/taken/") == before
    # The same content under a new name is a new dataset, and the original folder is still a no-op.
    assert upload_dataset(stack.settings, other, "taken-2", progress=False).transferred_files == len(
        list_local_files(other))
    assert upload_dataset(stack.settings, dicom_folder, "taken", progress=False).transferred_files == 0


def test_an_upload_that_stopped_before_its_manifest_is_resumed_by_the_same_folder(stack: Stack, dicom_folder: Path,
                                                                                  recording: Recording) -> None:
    first = upload_dataset(stack.settings, dicom_folder, "resumed", progress=False)
    s3 = boto3.Session().client("s3")
    lost = first.objects[0].key  # as if the upload had stopped before this file and manifest.json
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": lost}, {"Key": first.manifest_key}]})
    recording.start()

    second = upload_dataset(stack.settings, dicom_folder, "resumed", progress=False)

    assert sorted(r.path for r in recording.s3_writes(BUCKET, DATASETS_PREFIX)) == [
        f"/{BUCKET}/{first.manifest_key}", f"/{BUCKET}/{lost}"]
    assert [(o.key, o.sha256) for o in second.objects] == [(o.key, o.sha256) for o in first.objects]


@pytest.mark.parametrize("link", ["file", "folder", "channel", "broken", "link-loop"])
def test_a_link_out_of_the_folder_refuses_the_upload(stack: Stack, dicom_folder: Path, tmp_path: Path,
                                                     recording: Recording, link: str) -> None:
    secret = tmp_path / "outside" / "private"
    secret.mkdir(parents=True)
    marker = b"MARKER-must-never-reach-the-bucket-" + os.urandom(16).hex().encode()
    (secret / "record.dcm").write_bytes(marker)
    root = tmp_path / "dataset"
    images = (root / "train" / "images") if link == "channel" else root / "images"
    shutil.copytree(dicom_folder, images.parent)
    if link == "file":
        (images / "study-000" / "extra.dcm").symlink_to(secret / "record.dcm")
    elif link == "folder":
        (images / "more").symlink_to(secret, target_is_directory=True)
    elif link == "channel":  # the channel folder itself leads out
        (root / "test").symlink_to(secret, target_is_directory=True)
    elif link == "broken":
        (images / "gone.dcm").symlink_to(tmp_path / "nothing-here.dcm")
    else:
        (images / "a.dcm").symlink_to(images / "b.dcm")
        (images / "b.dcm").symlink_to(images / "a.dcm")
    recording.start()

    links = 2 if link == "link-loop" else 1
    with pytest.raises(ValueError, match=rf"holds {links} symbolic link\(s\) that lead out of it \(or nowhere\): "
                                         r"nothing was uploaded.*cp -rL"):
        upload_dataset(stack.settings, root, f"link-{link}", progress=False)

    sent = recording.requests()  # everything the emulator received during the call
    assert [r for r in sent if r.method in ("PUT", "POST", "DELETE")] == []
    assert not any(marker in r.body for r in sent)


def test_links_inside_the_folder_are_followed_and_loops_are_not(stack: Stack, dicom_folder: Path,
                                                                tmp_path: Path) -> None:
    folder = copy_of(dicom_folder, tmp_path)
    target = sorted((folder / "images").rglob("img-*"))[0]
    (folder / "images" / "linked.dcm").symlink_to(target)  # a file inside: uploaded at the link's path
    # Two loops: os.walk(followlinks=True), the walk before this one, still listed files after 15 s (100,000 of them).
    (folder / "images" / "study-000" / "up").symlink_to(folder, target_is_directory=True)
    (folder / "images" / "study-000" / "again").symlink_to(folder / "images")

    manifest = upload_dataset(stack.settings, folder, "links", progress=False)

    files = {o.file: o for o in manifest.objects}
    assert sorted(files) == sorted(["images/linked.dcm", *(rel for _, rel, _ in list_local_files(dicom_folder))])
    assert files["images/linked.dcm"].sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    body = boto3.Session().client("s3").get_object(Bucket=BUCKET, Key=files["images/linked.dcm"].key)["Body"].read()
    assert body == target.read_bytes()


def test_channel_folders_become_channels(stack: Stack, dicom_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "split"
    shutil.copytree(dicom_folder, root / "train")
    shutil.copytree(dicom_folder, root / "test")
    (root / ".DS_Store").write_text("finder")

    manifest = upload_dataset(stack.settings, root, "split", progress=False)

    assert manifest.channels == ("train", "test")
    assert manifest.document()["channels"] == {"train": f"s3://{BUCKET}/datasets/split/train/",
                                               "test": f"s3://{BUCKET}/datasets/split/test/"}
    assert {o.channel for o in manifest.objects if o.file == "labels.csv"} == {"train", "test"}
    assert not any(".DS_Store" in o.key for o in manifest.objects)


@pytest.mark.parametrize("name", ["", "../up", "a/b", "-lead", "x" * 101, "sp ace"])
def test_dataset_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match="dataset name"):
        dataset_prefix(name)


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(ValueError, match="holds no files"):
        list_local_files(tmp_path)

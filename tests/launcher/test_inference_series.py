"""launcher/inference.py for a 3-D model (issue 21 item 5) against the emulator: upload_series uploads one zip object a
series (slices named by position), checks every series before the first upload, refuses one over batch transform's
100 MB with the way out, and the local runner's transform answers each series once with a 3-D bundle served by
training.serve. Real series: pydicom's dicomdirtests (CT5N whole, the others bad)."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import boto3
import pydicom
import pytest

from launcher import inference
from launcher.settings import Settings
from tests.launcher.conftest import BUCKET, Stack
from tests.training.volume_bundles import CLASSES, write_volume_bundle
from training import serve

DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"
MODEL_DATA = f"s3://{BUCKET}/jobs/volume-job/output/model.tar.gz"


def _objects(prefix: str) -> list[str]:
    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def test_one_zip_a_series_is_uploaded_encrypted_and_the_bad_ones_are_listed(stack: Stack) -> None:
    inputs = inference.upload_series(stack.settings, [DICOMDIR_TESTS], run="series-1")
    assert inputs.uri == f"s3://{BUCKET}/inference/series-1/input/"
    ((name, location),) = inputs.files.items()
    assert re.fullmatch(r"series-\d+\.zip", name) and location == str(CT5N)
    reasons = " ".join(entry["reason"] for entry in inputs.bad)
    assert "a slice is missing" in reasons and "a localizer series?" in reasons
    s3 = boto3.client("s3")
    (key,) = _objects("inference/series-1/input/")
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert (head["ContentType"], head["ServerSideEncryption"]) == ("application/zip", "aws:kms")
    with zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())) as archive:
        assert archive.namelist() == [f"slice-{i:04d}.dcm" for i in range(1, 6)]  # by position, not by file name
        assert {archive.read(n) for n in archive.namelist()} == {f.read_bytes() for f in CT5N.iterdir()}


def test_a_series_over_the_payload_is_refused_before_any_upload_naming_the_limit_and_the_way_out(
    stack: Stack,
) -> None:
    with pytest.raises(ValueError) as refused:
        inference.upload_series(stack.settings, [DICOMDIR_TESTS], run="series-2", max_object_bytes=4096)
    message = str(refused.value)
    assert re.match(r"series \d+ \(", message) and "over the 4096 a request may carry" in message
    assert "100 MB" in message and "python -m training.predict" in message and "split the series" in message
    assert _objects("inference/series-2/") == []
    assert inference.MAX_OBJECT_BYTES == serve.MAX_BODY_BYTES  # batch transform's payload is the server's body limit


def test_no_whole_series_is_refused(stack: Stack) -> None:
    with pytest.raises(ValueError, match="no whole series among the 2 DICOM files"):
        inference.upload_series(stack.settings, [DICOMDIR_TESTS / "98892001" / "CT2N"], run="series-3")


@pytest.fixture(scope="module")
def local_settings(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    bundle, _ = write_volume_bundle(tmp_path_factory.mktemp("volume") / "model")
    archive = tmp_path_factory.mktemp("archive") / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(bundle.iterdir()):
            tar.add(child, arcname=child.name)
    boto3.client("s3").upload_file(str(archive), BUCKET, MODEL_DATA.removeprefix(f"s3://{BUCKET}/"))
    return replace(stack.settings, runner="local")


def test_the_local_transform_answers_each_series_once(local_settings: Settings) -> None:
    inputs = inference.upload_series(local_settings, [CT5N.parent], run="series-local")
    model = inference.create_model(local_settings, MODEL_DATA, name="model-volume")
    job = inference.start_transform(local_settings, model, inputs.uri, content_type=inference.ZIP,
                                    name="transform-volume")
    described = inference.wait_for_transform(local_settings, job, poll_s=0, sleep=lambda _: None)
    (result,) = inference.transform_results(local_settings, described, inputs)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in CT5N.iterdir()}
    assert result.file == str(CT5N) and {result.series_instance_uid} == uids
    assert result.label in CLASSES and sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    (name,) = inputs.files
    assert result.output_uri.endswith(f"inference/series-local/output/{name}.out")

"""launcher/inference.py and endpoints.py against the emulator: what CreateModel, CreateTransformJob,
CreateEndpointConfig and CreateEndpoint carry (image, role, model data, KMS keys, network isolation, VPC), read from the
requests themselves; then the local runner's part (launcher/local/inference.py): the same requests, and a trained
bundle served here by training.serve for the transform (one .out per input, the bundle's own predictions) and the
endpoint, no process left. At the end, the same for a 3-D model: one zip object a series (upload_series).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest

from demo.emulator import Emulator
from launcher import endpoints, inference
from launcher.local import inference as local_inference
from launcher.local.inference import LocalInferenceError, LocalTransformError
from launcher.local.runner import descendants
from launcher.settings import Settings
from tests.conftest import TinyJob
from tests.launcher.conftest import BUCKET, Recording, Stack
from tests.processes import still_running
from tests.training import conftest as training_fixtures
from tests.training.volume_bundles import CLASSES, write_volume_bundle
from training import serve

# The training tests' trained bundle: one real job a test session, run once under a file lock and shared by every module
# and xdist worker that asks for it (tests/training/conftest.py). pytest finds fixtures among a module's names.
job_sagemaker_run = training_fixtures.job_sagemaker_run
job_bundle = training_fixtures.job_bundle
job_test_files = training_fixtures.job_test_files

MODEL_DATA = f"s3://{BUCKET}/jobs/job-1/output/model.tar.gz"


@pytest.mark.parametrize("vpc", [False, True])
def test_create_model_runs_the_stack_image_isolated_with_the_model_role(stack, recording, vpc):
    settings = stack.vpc_settings if vpc else stack.settings
    name = inference.create_model(settings, MODEL_DATA, name=f"model-vpc-{vpc}")
    (call,) = recording.calls("CreateModel")
    assert call["ModelName"] == name
    assert call["PrimaryContainer"] == {"Image": settings.training_image_uri, "ModelDataUrl": MODEL_DATA,
                                        "Mode": "SingleModel"}
    assert call["ExecutionRoleArn"] == settings.model_role_arn != settings.training_role_arn
    assert call["EnableNetworkIsolation"] is True
    if vpc:
        assert call["VpcConfig"] == {"Subnets": list(settings.subnets),
                                     "SecurityGroupIds": list(settings.security_group_ids)}
    else:
        assert "VpcConfig" not in call


def test_a_model_needs_a_model_tar_gz():
    with pytest.raises(ValueError, match="model.tar.gz"):
        inference.create_model(None, "s3://bucket/jobs/job-1/output/")  # type: ignore[arg-type]


def test_a_transform_reads_and_writes_the_inference_prefix_encrypted_with_the_stack_key(stack, recording):
    settings = stack.settings
    model = inference.create_model(settings, MODEL_DATA, name="model-transform")
    source = inference.inference_uri(settings, "scan-1", "input")
    job = inference.start_transform(settings, model, source, content_type=inference.ZIP, name="transform-1")
    (call,) = recording.calls("CreateTransformJob")
    assert call["TransformJobName"] == job and call["ModelName"] == model
    assert call["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix", "S3Uri": source}
    assert call["TransformInput"]["ContentType"] == "application/zip"
    assert call["TransformInput"]["SplitType"] == "None" and call["BatchStrategy"] == "SingleRecord"
    assert call["TransformOutput"] == {"S3OutputPath": f"s3://{BUCKET}/inference/scan-1/output/",
                                       "Accept": "application/json", "AssembleWith": "None",
                                       "KmsKeyId": settings.data_key_arn}
    assert call["TransformResources"]["VolumeKmsKeyId"] == settings.data_key_arn
    described = inference.wait_for_transform(settings, job, poll_s=0, sleep=lambda _: None)
    assert described["TransformJobStatus"] == "Completed"


@pytest.mark.parametrize("uri", [f"s3://{BUCKET}/datasets/x/", "s3://another-bucket/inference/x/input/"])
def test_a_transform_outside_the_inference_prefix_is_refused_before_any_call(stack, recording, uri):
    with pytest.raises(ValueError, match="inference/"):
        inference.start_transform(stack.settings, "model", uri)
    assert recording.calls("CreateTransformJob") == []


def _canned_answer(endpoint: str, region: str, answer: dict) -> None:
    """moto answers InvokeEndpoint from a queue the test fills (its sagemaker-runtime has no model to run)."""
    results = {"account_id": "123456789012", "region": region, "results": [
        {"Body": json.dumps(answer), "ContentType": "application/json", "InvokedProductionVariant": "AllTraffic",
         "CustomAttributes": ""}]}
    request = urllib.request.Request(f"{endpoint}/moto-api/static/sagemaker/endpoint-results",
                                     data=json.dumps(results).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def test_an_endpoint_is_created_encrypted_invoked_and_deleted(emulator, stack, recording):
    settings = stack.vpc_settings
    answer = {"predictions": [{"file": "body", "SOPInstanceUID": "1.2.3", "label": "normal",
                               "probabilities": {"abnormal": 0.1, "normal": 0.9}}]}
    _canned_answer(emulator.endpoint, settings.region, answer)
    model = inference.create_model(settings, MODEL_DATA, name="model-endpoint")
    with endpoints.endpoint(settings, model, instance_type="ml.m5.large", poll_s=1) as name:
        assert endpoints.invoke_endpoint(settings, name, b"DICM") == answer
    inference.delete_model(settings, model)
    (config,) = recording.calls("CreateEndpointConfig")
    assert config["EndpointConfigName"] == name
    assert config["KmsKeyId"] == settings.data_key_arn
    assert config["ProductionVariants"] == [{"VariantName": "AllTraffic", "ModelName": model,
                                             "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}]
    (created,) = recording.calls("CreateEndpoint")
    assert created == {"EndpointName": name, "EndpointConfigName": name}
    invoked = [r for r in recording.requests() if r.path.endswith(f"/endpoints/{name}/invocations")]
    assert len(invoked) == 1 and invoked[0].body == b"DICM"
    assert {k.lower(): v for k, v in invoked[0].headers.items()}["content-type"] == "application/dicom"
    assert recording.calls("DeleteEndpoint") == [{"EndpointName": name}]
    assert recording.calls("DeleteEndpointConfig") == [{"EndpointConfigName": name}]
    assert recording.calls("DeleteModel") == [{"ModelName": model}]
    assert json.dumps(recording.calls("CreateModel")[0]["VpcConfig"])
    # Its log group was made before the endpoint, encrypted with the stack key, kept the stack's retention; and it
    # stays after the endpoint (its logs are the record of what the endpoint answered).
    logs = settings.boto_session().client("logs", region_name=settings.region)
    [group] = logs.describe_log_groups(logGroupNamePrefix=f"/aws/sagemaker/Endpoints/{name}")["logGroups"]
    assert (group["kmsKeyId"], group["retentionInDays"]) == (settings.data_key_arn, settings.log_retention_days)
    order = [r.target.rsplit(".", 1)[-1] for r in recording.requests() if r.target]
    assert order.index("CreateLogGroup") < order.index("PutRetentionPolicy") < order.index("CreateEndpoint")


# --- The local runner: the same requests recorded in the emulator, the bundle served here by training.serve ----------
#
# The bundle is the training tests' (tests/training/conftest.py): one real job per test session, shared by every module
# that needs a trained model (under xdist too), packed here as a job's model.tar.gz in the emulator's bucket.

LOCAL_MODEL_DATA = f"s3://{BUCKET}/jobs/local-job/output/model.tar.gz"
# Where each test file is copied before upload: two files of the same name in two folders, one deeper.
LOCAL_LAYOUT = ("study-1/image.dcm", "study-2/image.dcm", "study-2/other.dcm", "study-3/series-1/image.dcm")


@dataclass(frozen=True)
class LocalTransform:
    settings: Settings
    inputs: inference.TransformInputs
    model: str
    job: str
    request: dict[str, Any]  # CreateTransformJob as the local runner sent it
    aws_request: dict[str, Any]  # the same call with the SageMaker runner
    described: dict[str, Any]
    results: list[inference.TransformResult]
    expected: dict[str, Any]  # local file -> the bundle's own Prediction
    started: list[int]  # processes this one started during the transform and still had after it


def served_endpoints() -> dict[str, int]:
    """The endpoints this process serves (launcher/local/inference.py's registry): name to the server's process id."""
    return {name: served.pid for name, served in local_inference._ENDPOINTS.items()}


def _bundle_predictions(bundle: Path, files: list[str]) -> dict[str, Any]:
    from training.inference import Predictor

    predictor = Predictor.from_bundle(bundle, device="cpu")
    predictions = predictor.predict([Path(f).read_bytes() for f in files], names=files)
    return {p.file: p for p in predictions}



@pytest.fixture(scope="module")
def local_settings(stack: Stack, job_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The stack's settings with the local runner, and the session's trained bundle as a job's model.tar.gz."""
    _publish(job_bundle, LOCAL_MODEL_DATA, tmp_path_factory.mktemp("model"))
    return replace(stack.settings, runner="local")


def _publish(bundle: Path, model_data: str, scratch: Path) -> None:
    """A bundle as a job's model.tar.gz at model_data (s3://BUCKET/...)."""
    archive = scratch / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(bundle.iterdir()):
            tar.add(child, arcname=child.name)
    boto3.client("s3").upload_file(str(archive), BUCKET, model_data.removeprefix(f"s3://{BUCKET}/"))


@pytest.fixture(scope="module")
def local_transform(stack: Stack, emulator: Emulator, local_settings: Settings, job_bundle: Path,
                    job_test_files: list[str], tmp_path_factory: pytest.TempPathFactory) -> LocalTransform:
    folder = tmp_path_factory.mktemp("inputs")
    files = []
    for source, relative in zip(job_test_files, LOCAL_LAYOUT, strict=False):
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files.append(str(target))
    inputs = inference.upload_inputs(local_settings, files, run="local-1")
    model = inference.create_model(local_settings, LOCAL_MODEL_DATA, name="model-local")
    before = set(descendants(os.getpid()))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("recording"))  # moto writes its recording file in the working directory
        recording = Recording(emulator.endpoint)
        recording.start()
        try:
            job = inference.start_transform(local_settings, model, inputs.uri, name="transform-local")
            (request,) = recording.calls("CreateTransformJob")
            started = [pid for pid in descendants(os.getpid()) if pid not in before]
            inference.start_transform(stack.settings, model, inputs.uri, name="transform-aws")
            (_, aws_request) = recording.calls("CreateTransformJob")
        finally:
            recording.stop()
    described = inference.wait_for_transform(local_settings, job, poll_s=0, sleep=lambda _: None)
    results = inference.transform_results(local_settings, described, inputs)
    return LocalTransform(local_settings, inputs, model, job, request, aws_request, described, results,
                          _bundle_predictions(job_bundle, files), started)


def test_the_local_transform_sends_the_request_sent_on_aws(local_transform: LocalTransform) -> None:
    def normalized(request: dict[str, Any]) -> str:
        return json.dumps(request, sort_keys=True).replace(request["TransformJobName"], "JOB")

    assert local_transform.request["TransformJobName"] == local_transform.job
    assert normalized(local_transform.request) == normalized(local_transform.aws_request)
    assert local_transform.described["TransformJobStatus"] == "Completed"  # what wait_for_transform reported


def test_every_input_gets_its_out_object_encrypted_with_the_stack_key(local_transform: LocalTransform) -> None:
    assert set(local_transform.inputs.files) == set(LOCAL_LAYOUT)  # paths below the files' common folder
    s3 = boto3.client("s3")
    inputs = s3.list_objects_v2(Bucket=BUCKET, Prefix="inference/local-1/input/")["Contents"]
    assert sorted(o["Key"] for o in inputs) == sorted(f"inference/local-1/input/{n}" for n in LOCAL_LAYOUT)
    outputs = s3.list_objects_v2(Bucket=BUCKET, Prefix="inference/local-1/output/")["Contents"]
    assert sorted(o["Key"] for o in outputs) == sorted(f"inference/local-1/output/{n}.out" for n in LOCAL_LAYOUT)
    for item in [*inputs, *outputs]:
        head = s3.head_object(Bucket=BUCKET, Key=item["Key"])
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", local_transform.settings.data_key_arn)


def test_each_out_holds_the_bundle_s_own_prediction_for_its_file(local_transform: LocalTransform) -> None:
    results = {r.file: r for r in local_transform.results}
    assert set(results) == set(local_transform.inputs.files.values())
    for file, expected in local_transform.expected.items():
        got = results[file]
        assert got.label == expected.label
        assert got.probabilities == pytest.approx(expected.probabilities, abs=1e-5)
        assert got.sop_instance_uid
        name = next(n for n, f in local_transform.inputs.files.items() if f == file)
        assert got.output_uri == f"s3://{BUCKET}/inference/local-1/output/{name}.out"


def test_the_local_transform_leaves_no_process(local_transform: LocalTransform) -> None:
    assert still_running(local_transform.started) == []


def test_refused_objects_fail_the_local_transform_after_the_others_are_written(
        local_settings: Settings, job_test_files: list[str]) -> None:
    s3 = boto3.client("s3")
    s3.upload_file(job_test_files[0], BUCKET, "inference/local-2/input/good.dcm")
    s3.put_object(Bucket=BUCKET, Key="inference/local-2/input/notes.txt", Body=b"not a DICOM file")
    model = inference.create_model(local_settings, LOCAL_MODEL_DATA, name="model-local-2")
    before = set(descendants(os.getpid()))
    source = inference.inference_uri(local_settings, "local-2", "input")
    with pytest.raises(LocalTransformError, match=r"(?s)refused 1 of 2 object.*input/notes.txt: 400 .*not a DICOM"):
        inference.start_transform(local_settings, model, source, name="transform-local-2")
    outputs = s3.list_objects_v2(Bucket=BUCKET, Prefix="inference/local-2/output/")["Contents"]
    assert [o["Key"] for o in outputs] == ["inference/local-2/output/good.dcm.out"]
    assert still_running([pid for pid in descendants(os.getpid()) if pid not in before]) == []


def test_a_local_endpoint_serves_the_bundle_until_the_clean_up_deletes_it(
        local_settings: Settings, job_bundle: Path, job_test_files: list[str], recording: Recording) -> None:
    before = set(descendants(os.getpid()))
    model = inference.create_model(local_settings, LOCAL_MODEL_DATA, name="model-endpoint-local")
    name = endpoints.create_endpoint(local_settings, model, name="endpoint-local")
    endpoints.wait_for_endpoint(local_settings, name, poll_s=1)
    (server,) = served_endpoints().values()
    assert server in descendants(os.getpid())
    answer = endpoints.invoke_endpoint(local_settings, name, Path(job_test_files[0]).read_bytes())
    (expected,) = _bundle_predictions(job_bundle, job_test_files[:1]).values()
    (got,) = answer["predictions"]
    assert got["label"] == expected.label
    assert got["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)

    said = endpoints.clean_up_inference(local_settings, model=model, endpoint=name)
    assert f"Deleted the endpoint {name}" in said and f"Deleted the model {model}" in said
    assert served_endpoints() == {}
    assert still_running([pid for pid in descendants(os.getpid()) if pid not in before]) == []
    with pytest.raises(LocalInferenceError, match="not served by this Python process"):
        endpoints.invoke_endpoint(local_settings, name, b"DICM")
    (config,) = recording.calls("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["ModelName"] == model and config["KmsKeyId"] == local_settings.data_key_arn
    assert recording.calls("CreateEndpoint") == [{"EndpointName": name, "EndpointConfigName": name}]
    assert recording.calls("DeleteEndpoint") == [{"EndpointName": name}]
    assert recording.calls("DeleteEndpointConfig") == [{"EndpointConfigName": name}]
    assert recording.calls("DeleteModel") == [{"ModelName": model}]
    sagemaker = boto3.client("sagemaker")
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert model not in {m["ModelName"] for m in sagemaker.list_models()["Models"]}
    again = endpoints.clean_up_inference(local_settings, model=model, endpoint=name)
    assert f"The endpoint {name} was already deleted." in again and f"The model {model} was already deleted." in again


def test_inputs_are_refused_before_any_upload(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one folder name"):
        inference.upload_inputs(stack.settings, [], run="a/b")
    with pytest.raises(ValueError, match="no files"):
        inference.upload_inputs(stack.settings, [], run="scan-1")
    with pytest.raises(ValueError, match="do not exist"):
        inference.upload_inputs(stack.settings, [tmp_path / "missing.dcm"], run="scan-1")


def test_a_stack_without_a_model_role_is_told_to_redeploy(stack, recording):
    older = dataclasses.replace(stack.settings, model_role_arn="")
    with pytest.raises(ValueError, match=r"ModelRoleArn \(model_role_arn\) is missing in test fixture.*redeploy"):
        inference.create_model(older, MODEL_DATA)
    assert recording.calls("CreateModel") == []


@pytest.mark.parametrize("stack_name", ["MonaiDicom", "a-stack-name-long-enough-to-be-cut-" * 2])
def test_a_resource_name_fits_sagemaker_and_is_what_make_destroy_looks_for(stack_name: str) -> None:
    settings: Any = type("StackOnly", (), {"stack_name": stack_name})()
    for kind in ("model", "transform", "endpoint"):
        name = inference.resource_name(settings, kind)
        assert len(name) <= 63 and name.replace("-", "").isalnum()
        assert inference.name_pattern(stack_name, kind).match(name)  # infra/stack_endpoints.py finds it
    assert not inference.name_pattern(stack_name, "endpoint").match(inference.resource_name(settings, "model"))

# --- A 3-D model (issue 21 item 5): upload_series uploads one zip object a series (slices named by position), checks
# every series before the first upload, refuses one over batch transform's 100 MB with the way out; the local runner's
# transform answers each series once with a 3-D bundle. Real series: pydicom's dicomdirtests (CT5N whole, the rest bad).

DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"
VOLUME_MODEL_DATA = f"s3://{BUCKET}/jobs/volume-job/output/model.tar.gz"
PACKED_MODEL_DATA = f"s3://{BUCKET}/jobs/tiny-job/output/model.tar.gz"


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
def volume_settings(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    bundle, _ = write_volume_bundle(tmp_path_factory.mktemp("volume") / "model")
    _publish(bundle, VOLUME_MODEL_DATA, tmp_path_factory.mktemp("archive"))
    return replace(stack.settings, runner="local")


def test_the_local_transform_answers_each_series_once(volume_settings: Settings) -> None:
    inputs = inference.upload_series(volume_settings, [CT5N.parent], run="series-local")
    model = inference.create_model(volume_settings, VOLUME_MODEL_DATA, name="model-volume")
    job = inference.start_transform(volume_settings, model, inputs.uri, content_type=inference.ZIP,
                                    name="transform-volume")
    described = inference.wait_for_transform(volume_settings, job, poll_s=0, sleep=lambda _: None)
    (result,) = inference.transform_results(volume_settings, described, inputs)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in CT5N.iterdir()}
    assert result.file == str(CT5N) and {result.series_instance_uid} == uids
    assert result.label in CLASSES and sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    (name,) = inputs.files
    assert result.output_uri.endswith(f"inference/series-local/output/{name}.out")


def test_packed_files_go_as_zip_objects_and_come_back_named_by_their_files(
        stack: Stack, tiny_job: TinyJob, tmp_path: Path) -> None:
    """upload_inputs(files_per_object=3): the tiny job's 8 test files in 3 zip objects (3, 3, 2), one request each;
    the local transform's answers are the bundle's own, named by the local files."""
    settings = replace(stack.settings, runner="local")
    _publish(tiny_job.model_dir, PACKED_MODEL_DATA, tmp_path)
    files = tiny_job.test_files
    inputs = inference.upload_inputs(settings, files, run="packed-1", files_per_object=3)
    assert inputs.content_type == inference.ZIP and inputs.files == {}
    s3 = boto3.client("s3")
    keys = sorted(_objects("inference/packed-1/input/"))
    assert keys == [f"inference/packed-1/input/batch-0000{n}.zip" for n in (1, 2, 3)]
    counts = []
    for key in keys:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert (head["ContentType"], head["ServerSideEncryption"]) == ("application/zip", "aws:kms")
        with zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())) as archive:
            counts.append(len(archive.namelist()))
            for member in archive.namelist():
                assert archive.read(member) == Path(inputs.members[f"{key.rsplit('/', 1)[1]}/{member}"]).read_bytes()
    assert counts == [3, 3, 2] and sorted(inputs.members.values()) == sorted(files)
    model = inference.create_model(settings, PACKED_MODEL_DATA, name="model-packed")
    job = inference.start_transform(settings, model, inputs.uri, content_type=inputs.content_type,
                                    name="transform-packed")
    described = inference.wait_for_transform(settings, job, poll_s=0, sleep=lambda _: None)
    results = {r.file: r for r in inference.transform_results(settings, described, inputs)}
    expected = _bundle_predictions(tiny_job.model_dir, files)
    assert set(results) == set(expected) == set(files)
    for file, prediction in expected.items():
        assert results[file].label == prediction.label
        assert results[file].probabilities == pytest.approx(prediction.probabilities, abs=1e-5)


def test_packing_is_bounded_before_any_upload(stack: Stack) -> None:
    files = sorted(str(p) for p in CT5N.iterdir())
    with pytest.raises(ValueError, match=r"files_per_object must be 1 to 1000 .*MAX_ZIP_MEMBERS"):
        inference.upload_inputs(stack.settings, files, run="packed-2", files_per_object=1001)
    with pytest.raises(ValueError, match=r"over a request's 128000000 pixels .* or 4096 bytes"):
        inference.upload_inputs(stack.settings, files, run="packed-2", files_per_object=4, max_object_bytes=4096)
    assert _objects("inference/packed-2/") == []
    inputs = inference.upload_inputs(stack.settings, files, run="packed-3", files_per_object=2)
    assert [len([m for m in inputs.members if m.startswith(f"batch-0000{n}.zip/")]) for n in (1, 2, 3)] == [2, 2, 1]

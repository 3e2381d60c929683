"""Use a trained model: its SageMaker model, and batch transform over an S3 prefix (real-time endpoints:
launcher/endpoints.py).

    inputs = upload_inputs(settings, ["a.dcm", "b.dcm"], run="scan-1")  # s3://BUCKET/inference/scan-1/input/
    model = create_model(settings, job.model_uri)                     # the training image serves it (`serve`)
    transform = start_transform(settings, model, inputs.uri)
    described = wait_for_transform(settings, transform)               # JSON per file under .../output/
    results = transform_results(settings, described, inputs)         # file, label, probabilities
    delete_model(settings, model)                   # or launcher.endpoints.clean_up_inference(settings, model=...)

A 3-D model (a bundle with "spatial_dims" 3) answers one series a request: upload_series(settings, ["DICOM_DIR"],
run=...) assembles the files into series and uploads one zip object per series, then start_transform(...,
content_type=ZIP). A series whose zip would pass batch transform's 100 MB payload (MAX_OBJECT_BYTES) is refused
before any upload: run `python -m training.predict MODEL DIR` on the notebook instead, or split the series.

Everything runs in the stack's training image, whose `serve` command answers SageMaker's hosting contract with
training/inference.py's handlers (application/dicom or application/zip in, JSON out). The model runs with network
isolation (it fetches nothing), in the stack's subnets when it has them, with the stack's KMS key on volumes and
outputs. The execution role is the stack's model role (ModelRoleArn), which may read the model artifacts under
jobs/ and read and write the inference/ prefix, and no dataset.

With the local runner (Settings.runner "local", `make demo`) the same requests go to the local emulator, which records
them, and launcher/local/inference.py does the service's part on this machine: start_transform returns once the
transform has run (every input's .out written).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from launcher.jobs.follow import TERMINAL_STATUSES
from launcher.jobs.launch import LOCAL_RUNNER
from launcher.jobs.request import DEFAULT_CPU_INSTANCE
from launcher.settings import Settings

log = logging.getLogger(__name__)

INFERENCE_PREFIX = "inference/"  # infra/constructs/storage.py: transform input and output
DICOM = "application/dicom"
ZIP = "application/zip"
MAX_OBJECT_BYTES = 100 * 1024**2  # MaxPayloadInMB below, training/serve.py MAX_BODY_BYTES: one request's body
DEFAULT_INSTANCE_TYPE = DEFAULT_CPU_INSTANCE  # the CPU image; the GPU image serves on DEFAULT_GPU_INSTANCE
_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # one S3 folder name, e.g. a training job's name


def resource_name(settings: Settings, kind: str) -> str:
    """A new name for a model, transform or endpoint of the stack (launcher/endpoints.py names its endpoints so)."""
    # SageMaker names: at most 63 characters of [a-zA-Z0-9-]; unique per second, as the launcher's job names.
    return f"{_name_prefix(settings.stack_name, kind)}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def _name_prefix(stack_name: str, kind: str) -> str:
    """The stack's name, cut so that the whole name fits in 63 characters with its '-YYYYmmdd-HHMMSS' stamp."""
    return f"{stack_name[:63 - len(kind) - 17]}-{kind}"


def name_pattern(stack_name: str, kind: str) -> re.Pattern[str]:
    """The names `_name` gives a stack's resources of one kind (make destroy finds the stack's endpoints by it:
    infra/stack_endpoints.py)."""
    return re.compile(rf"^{re.escape(_name_prefix(stack_name, kind))}-\d{{8}}-\d{{6}}$")


def sagemaker_client(settings: Settings) -> Any:
    return settings.boto_session().client("sagemaker", region_name=settings.region)


def runs_locally(settings: Settings) -> bool:
    return settings.runner == LOCAL_RUNNER


def _vpc_config(settings: Settings) -> dict[str, Any]:
    if not settings.subnets:
        return {}
    return {"VpcConfig": {"Subnets": list(settings.subnets), "SecurityGroupIds": list(settings.security_group_ids)}}


def create_model(
    settings: Settings, model_data_url: str, *, name: str | None = None, role_arn: str | None = None
) -> str:
    """CreateModel: the stack's image serving a training job's model.tar.gz.

    Args:
        settings: the stack's values.
        model_data_url: s3://.../model.tar.gz of a training job (its ModelArtifacts.S3ModelArtifacts).
        name: the model's name; default derived from the stack and the time.
        role_arn: the execution role; default the stack's model role (granted jobs/ read and inference/).

    Returns:
        The model's name.
    """
    if not model_data_url.startswith("s3://") or not model_data_url.endswith(".tar.gz"):
        raise ValueError(f"model_data_url must be the s3://.../model.tar.gz of a training job; got {model_data_url!r}")
    role_arn = role_arn or settings.model_role_arn
    if not role_arn:
        raise ValueError(f"stack value ModelRoleArn (model_role_arn) is missing in {settings.source or 'settings'}: "
                         "the stack predates inference; redeploy it (make deploy) to create the model role")
    name = name or resource_name(settings, "model")
    sagemaker_client(settings).create_model(
        ModelName=name,
        PrimaryContainer={"Image": settings.training_image_uri, "ModelDataUrl": model_data_url, "Mode": "SingleModel"},
        ExecutionRoleArn=role_arn,
        EnableNetworkIsolation=True,
        **_vpc_config(settings),
    )
    return name


def inference_uri(settings: Settings, run: str, part: str) -> str:
    """s3://BUCKET/inference/RUN/PART/ (PART: input or output): where the roles may read and write."""
    return f"s3://{settings.bucket}/{INFERENCE_PREFIX}{run}/{part}/"


@dataclass(frozen=True)
class TransformInputs:
    """Files uploaded for a batch transform.

    Attributes:
        uri: the input prefix, s3://BUCKET/inference/RUN/input/ (start_transform's input_uri).
        files: each object's name below `uri` to the local file it was uploaded from (one file an object).
        members: files packed into zips (upload_inputs files_per_object > 1): "OBJECT/MEMBER" to the local file.
        content_type: what start_transform must be told the objects are (application/zip when packed).
    """

    uri: str
    files: Mapping[str, str] = field(default_factory=dict)
    bad: tuple[Mapping[str, str], ...] = ()  # upload_series: the series not uploaded, {"series", "file", "reason"}
    members: Mapping[str, str] = field(default_factory=dict)  # packed zips: "OBJECT/MEMBER" to the local file
    content_type: str = DICOM  # start_transform's content_type for these objects


def upload_inputs(
    settings: Settings, files: Sequence[str | os.PathLike[str]], *, run: str, content_type: str = DICOM,
    files_per_object: int = 1, max_object_bytes: int = MAX_OBJECT_BYTES,
) -> TransformInputs:
    """Upload files for a batch transform to s3://BUCKET/inference/RUN/input/, encrypted with the stack's key.

    Each object keeps the file's path below the files' common folder (files of several folders may share a name).
    Objects uploaded earlier under the same run stay, and are transformed too.

    With files_per_object > 1 (a 2-D model), the files are packed into zip objects, batch-00001.zip, ..., of up to
    that many files each (members named by their path below the common folder): SageMaker sends an object a request,
    and the server runs a request's files through the network a batch (the model's batch size, 32) at a time, so
    fewer, fuller requests. A zip is closed early where the next file would pass the server's pixel budget a request
    (training.inference.MAX_REQUEST_PIXELS, from the headers) or max_object_bytes. Pass start_transform
    content_type=inputs.content_type (application/zip then).

    Args:
        settings: the stack's values.
        files: DICOM files (or zips of them): one object, so one request and one .out, each; or packed (above).
        run: the run's folder name under inference/, e.g. the training job's name.
        content_type: stored with each object (the transform's content type is start_transform's); packed: zip.
        files_per_object: files a zip object holds, 1 (no zip) to training.inference.MAX_ZIP_MEMBERS.
        max_object_bytes: the largest object: batch transform's payload (100 MB).

    Raises:
        ValueError: no files, a file that does not exist, a run name that is not one folder name, files_per_object
            out of range, or a file that alone passes a request's limits (named; nothing is uploaded then).
    """
    if not _RUN.match(run):
        raise ValueError(f"run must be one folder name of letters, digits, '.', '_' or '-'; got {run!r}")
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("no files to upload: pass the DICOM files to classify")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"these files do not exist: {', '.join(missing)}")
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    names = {p.resolve().relative_to(root).as_posix(): str(p) for p in paths}
    if files_per_object != 1:
        return _upload_packed(settings, run, names, files_per_object, max_object_bytes)
    uri = _upload(settings, run, {name: Path(path) for name, path in names.items()}, content_type)
    return TransformInputs(uri=uri, files=names)


def _upload_packed(settings: Settings, run: str, names: Mapping[str, str], per_object: int,
                   max_object_bytes: int) -> TransformInputs:
    """The files (member name to local path) packed into zip objects (launcher/datasets/packing.py), uploaded."""
    import tempfile

    from launcher.datasets.packing import pack

    with tempfile.TemporaryDirectory(prefix="packed-zips-") as workdir:
        zips, members = pack(names, Path(workdir), files_per_object=per_object, max_object_bytes=max_object_bytes)
        uri = _upload(settings, run, zips, ZIP)
    return TransformInputs(uri=uri, members=members, content_type=ZIP)


def _upload(settings: Settings, run: str, objects: Mapping[str, Path], content_type: str) -> str:
    """Each file as the object NAME under s3://BUCKET/inference/RUN/input/, encrypted with the stack's key."""
    uri = inference_uri(settings, run, "input")
    prefix = uri.removeprefix(f"s3://{settings.bucket}/")
    s3 = settings.boto_session().client("s3", region_name=settings.region)
    for name, path in objects.items():
        s3.upload_file(str(path), settings.bucket, f"{prefix}{name}", ExtraArgs={
            "ContentType": content_type, "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": settings.data_key_arn})
    return uri


def upload_series(
    settings: Settings, sources: Sequence[str | os.PathLike[str]], *, run: str, max_object_bytes: int = MAX_OBJECT_BYTES
) -> TransformInputs:
    """For a 3-D model: the series among DICOM files (and folders, at any depth), one zip object per series.

    Each series (training.dataset.series.assemble, from headers) becomes s3://BUCKET/inference/RUN/input/series-N.zip
    (N: assemble's position),
    its slices deflated under names by position (slice-0001.dcm, ...: no original file name); bad series are not
    uploaded and come back in `bad`. Every series is checked before the first upload: within the server's limits
    (training/serving/volumes.py) and its zip within max_object_bytes. Then start_transform(..., content_type=ZIP).

    Args:
        settings: the stack's values.
        sources: DICOM files and folders.
        run: the run's folder name under inference/.
        max_object_bytes: the largest zip an object may be: batch transform's payload (100 MB).

    Returns:
        The input prefix, `files` mapping each object to its series' location, and the bad series.

    Raises:
        ValueError: a bad run name, a source missing, no good series, or a series over a limit (named, with the way
            out: `python -m training.predict` on the notebook, or the series split).
    """
    import tempfile

    if not _RUN.match(run):
        raise ValueError(f"run must be one folder name of letters, digits, '.', '_' or '-'; got {run!r}")
    files = _dicom_files(sources)
    with tempfile.TemporaryDirectory(prefix="series-zips-") as workdir:
        zips, locations, bad = _series_zips(files, Path(workdir), max_object_bytes)
        uri = _upload(settings, run, zips, ZIP)
    return TransformInputs(uri=uri, files=locations, bad=tuple(bad))


def _dicom_files(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files named, and the DICOM files (by the 'DICM' marker) under the folders named, as training.predict finds
    them; pydicom and numpy only (training.dataset), no torch in the notebook's kernel for this."""
    from training.dataset.dicom import dicom_files_under

    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += dicom_files_under(source)
        elif source.is_file():
            files.append(source)
        else:
            raise ValueError(f"{source} does not exist: pass DICOM files or folders holding them")
    return files


def _series_zips(
    files: Sequence[Path], workdir: Path, max_object_bytes: int
) -> tuple[dict[str, Path], dict[str, str], list[dict[str, str]]]:
    """Each good series zipped into workdir (object name to zip, object name to location), and the bad series."""
    import zipfile

    from training.dataset.series import assemble
    from training.serving.volumes import over_request_limits

    report = assemble(files)
    if not report.series:
        raise ValueError(f"no whole series among the {len(files)} DICOM files given ({len(report.bad)} bad): check "
                         "them with `python -m training.check DIR --series`")
    zips, locations = {}, {}
    for series in report.series:
        name = series.name.replace(" ", "-") + ".zip"  # 'series 3' (assemble's name, as in `bad`): series-3.zip
        problem = over_request_limits(series)
        path = workdir / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for index, file in enumerate(series.files if not problem else [], 1):
                archive.write(file, f"slice-{index:04d}.dcm")
        if not problem and path.stat().st_size > max_object_bytes:
            problem = f"its zip has {path.stat().st_size} bytes, over the {max_object_bytes} a request may carry"
        if problem:
            raise ValueError(f"{series.name} ({series.location}): {problem} (batch transform: 100 MB, "
                             "launcher.inference.MAX_OBJECT_BYTES): run `python -m training.predict MODEL DIR` on "
                             "the notebook, or split the series into smaller ones")
        zips[name], locations[name] = path, series.location
    return zips, locations, list(report.bad)


def start_transform(
    settings: Settings,
    model_name: str,
    input_uri: str,
    *,
    output_uri: str | None = None,
    content_type: str = DICOM,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    instance_count: int = 1,
    name: str | None = None,
) -> str:
    """CreateTransformJob: every object under `input_uri` is one request; its JSON lands in output_uri as NAME.out.

    Args:
        settings: the stack's values.
        model_name: from create_model.
        input_uri: an S3 prefix under the bucket's inference/ (the model role reads only there).
        output_uri: where results go; default the input's sibling .../output/.
        content_type: application/dicom (one file per object) or application/zip.
        instance_type: ml.* instance type.
        instance_count: instances sharing the objects.
        name: the job's name; default derived from the stack and the time.

    Returns:
        The transform job's name. With the local runner, the transform has run by then (every .out written).

    Raises:
        ValueError: an input or output outside the inference/ prefix, or another content type.
        launcher.local.inference.LocalTransformError: local runner only: the model refused objects (they got no .out).
    """
    prefix = f"s3://{settings.bucket}/{INFERENCE_PREFIX}"
    if not input_uri.startswith(prefix):
        raise ValueError(f"input_uri must be under {prefix} (the only prefix the model role reads); got {input_uri}")
    if content_type not in (DICOM, ZIP):
        raise ValueError(f"content_type must be {DICOM} or {ZIP}; got {content_type!r}")
    name = name or resource_name(settings, "transform")
    if output_uri is None:
        output_uri = input_uri.rstrip("/").rsplit("/", 1)[0] + "/output/"
    if not output_uri.startswith(prefix):
        raise ValueError(f"output_uri must be under {prefix} (the only prefix the model role writes); got {output_uri}")
    sagemaker_client(settings).create_transform_job(
        TransformJobName=name,
        ModelName=model_name,
        BatchStrategy="SingleRecord",  # one file (or zip) per request: DICOM cannot be split into records
        MaxPayloadInMB=MAX_OBJECT_BYTES // 1024**2,  # training/serve.py MAX_BODY_BYTES
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": content_type,
            "SplitType": "None",
            "CompressionType": "None",
        },
        TransformOutput={"S3OutputPath": output_uri, "Accept": "application/json", "AssembleWith": "None",
                         "KmsKeyId": settings.data_key_arn},
        TransformResources={"InstanceType": instance_type, "InstanceCount": instance_count,
                            "VolumeKmsKeyId": settings.data_key_arn},
    )
    if runs_locally(settings):
        from launcher.local.inference import run_transform

        run_transform(settings, name)
    return name


def wait_for_transform(
    settings: Settings, name: str, *, poll_s: float = 30, timeout_s: float = 3 * 3600,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """DescribeTransformJob until Completed, Failed or Stopped; the last description.

    Raises:
        RuntimeError: the job failed (its FailureReason) or did not finish within timeout_s (it is stopped).
    """
    client = sagemaker_client(settings)
    waited = 0.0
    while True:
        described: dict[str, Any] = client.describe_transform_job(TransformJobName=name)
        status = described["TransformJobStatus"]
        if status in TERMINAL_STATUSES:
            if status == "Failed":
                raise RuntimeError(f"transform job {name} failed: {described.get('FailureReason', 'no reason')}")
            return described
        if waited >= timeout_s:
            client.stop_transform_job(TransformJobName=name)
            raise RuntimeError(f"transform job {name} still {status} after {timeout_s:.0f} s: stopped it")
        sleep(poll_s)
        waited += poll_s


@dataclass(frozen=True)
class TransformResult:
    """One file's answer in a batch transform's output.

    Attributes:
        file: the local file it was uploaded from (TransformInputs), else its object name; a zip's member is named
            `ZIP/MEMBER`.
        label: the predicted class.
        probabilities: class name to probability.
        sop_instance_uid: the file's SOPInstanceUID ('' when it has none).
        output_uri: the .out object it was read from.
        series_instance_uid: a 3-D model's answer: the series' SeriesInstanceUID ('' for a file's answer).
    """

    file: str
    label: str
    probabilities: dict[str, float]
    sop_instance_uid: str
    output_uri: str
    series_instance_uid: str = ""


def transform_results(
    settings: Settings, described: Mapping[str, Any], inputs: TransformInputs | None = None
) -> list[TransformResult]:
    """Read a finished transform's .out objects (training/serve.py's JSON): one result per classified file.

    Args:
        settings: the stack's values.
        described: wait_for_transform's description of the job.
        inputs: upload_inputs' answer, to name each result by its local file.

    Returns:
        The results, in the order of the objects' names.
    """
    bucket, _, prefix = described["TransformOutput"]["S3OutputPath"].removeprefix("s3://").partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    files = dict(inputs.files) if inputs is not None else {}
    s3 = settings.boto_session().client("s3", region_name=settings.region)
    results = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in sorted(page.get("Contents", []), key=lambda i: i["Key"]):
            if not item["Key"].endswith(".out"):
                continue
            name = item["Key"][len(prefix):].removesuffix(".out")
            document = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            for prediction in document["predictions"]:
                member = prediction.get("file", "body")
                file = files.get(name, name) if member == "body" else f"{files.get(name, name)}/{member}"
                file = inputs.members.get(f"{name}/{member}", file) if inputs is not None else file
                results.append(TransformResult(
                    file=file, label=prediction["label"], probabilities=dict(prediction["probabilities"]),
                    sop_instance_uid=prediction.get("SOPInstanceUID", ""), output_uri=f"s3://{bucket}/{item['Key']}",
                    series_instance_uid=prediction.get("SeriesInstanceUID", "")))
    return results


def delete_model(settings: Settings, name: str) -> None:
    """DeleteModel (the artifact in S3 stays)."""
    sagemaker_client(settings).delete_model(ModelName=name)

"""Batch transform and endpoints with the local runner: recorded in the emulator as on AWS, served on this machine.

    MONAI_DICOM_RUNNER=local    # what `make demo` sets; launcher/inference.py and endpoints.py then call this module

launcher/inference.py and endpoints.py send the same requests as on AWS (CreateModel, CreateTransformJob,
CreateEndpointConfig, CreateEndpoint, the deletes), so the emulator (moto's server) records them. Where SageMaker would
start containers that run the image's `serve`, this module runs `python -m training.serve` here
(training.serve.running_server, on a free localhost port), with the model's model.tar.gz from the emulator's S3
extracted into a temporary folder:

- run_transform, right after CreateTransformJob: reads the job back (DescribeTransformJob, then DescribeModel for its
  ModelDataUrl), serves the model, POSTs every object under the job's input prefix to /invocations with the job's
  content type, one object per request, and writes each answer to the output prefix as `<object name>.out` (the path
  below the input prefix kept, SageMaker's "corresponding subfolder"), encrypted with the job's output key. As on
  SageMaker, an object the model refuses gets no .out and fails the job once every object was tried: the emulator
  cannot record "Failed" (it says Completed at once), so LocalTransformError names the objects and the server's
  reasons. The server is stopped and the model's folder removed before it returns.
- start_endpoint, right after CreateEndpoint: a server for the endpoint's model, until stop_endpoint (DeleteEndpoint)
  or until this Python process exits; invoke sends InvokeEndpoint's body to it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.settings import Settings

MODEL_ARCHIVE_MEMBER = "configs/inference.json"  # what makes an extracted model.tar.gz a bundle training.serve loads
ENDPOINT_MAX_BYTES = 6 * 1024**2  # InvokeEndpoint's payload limit on SageMaker
TRANSFORM_WORKERS = 1  # one object per request, in turn: the local machine is small, and the order is the listing's
ENDPOINT_WORKERS = 1
REQUEST_TIMEOUT_S = 120  # training.serve's worker timeout


class LocalInferenceError(RuntimeError):
    """A local transform or endpoint could not do what SageMaker would have; the message says what and why."""


class LocalTransformError(LocalInferenceError):
    """Objects of a local transform were refused by the model (SageMaker marks such a job Failed)."""


@dataclass
class _Served:
    """An endpoint's server: its port, and what stops it and removes its model folder."""

    port: int
    pid: int
    stop: contextlib.ExitStack


_ENDPOINTS: dict[str, _Served] = {}


def split_uri(uri: str) -> tuple[str, str]:
    """s3://BUCKET/KEY -> (BUCKET, KEY)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"expected an s3:// URI; got {uri!r}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def fetch_model(settings: Settings, model_name: str, destination: Path) -> Path:
    """Download a model's model.tar.gz (DescribeModel's ModelDataUrl) and extract it, as SageMaker does into
    /opt/ml/model.

    Args:
        settings: the stack's values.
        model_name: the SageMaker model.
        destination: an empty folder; the bundle is extracted into destination/model.

    Returns:
        The bundle's folder.

    Raises:
        LocalInferenceError: the archive holds no MONAI bundle.
    """
    session = settings.boto_session()
    described = session.client("sagemaker").describe_model(ModelName=model_name)
    url = described["PrimaryContainer"]["ModelDataUrl"]
    bucket, key = split_uri(url)
    archive = destination / "model.tar.gz"
    session.client("s3").download_file(bucket, key, str(archive))
    model_dir = destination / "model"
    model_dir.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")  # "data": no links or paths outside model_dir
    archive.unlink()
    if not (model_dir / MODEL_ARCHIVE_MEMBER).is_file():
        raise LocalInferenceError(f"model {model_name}: {url} holds no MONAI bundle ({MODEL_ARCHIVE_MEMBER}): give "
                                  "create_model the model.tar.gz of a training job")
    return model_dir


@contextlib.contextmanager
def serving(settings: Settings, model_name: str, *, workers: int) -> Iterator[tuple[int, int]]:
    """The model served by `python -m training.serve` on a free localhost port until the block ends: (port, pid).

    Ending the block stops the server (SIGTERM: gunicorn stops its workers, then itself) and removes the model.
    """
    from training.serve import running_server

    with tempfile.TemporaryDirectory(prefix=f"{model_name[:40]}-") as folder:
        model_dir = fetch_model(settings, model_name, Path(folder))
        with running_server(model_dir, workers=workers) as (process, port):
            yield port, process.pid


def run_transform(settings: Settings, name: str) -> list[str]:
    """Run a transform job that CreateTransformJob just recorded in the emulator (see the module docstring).

    Args:
        settings: the stack's values.
        name: the transform job.

    Returns:
        The S3 URIs of the .out objects written, one per input object.

    Raises:
        LocalTransformError: the model refused objects (a 4xx or 5xx, or an object over MaxPayloadInMB); the other
            objects' results were written.
    """
    from training.serve import request

    session = settings.boto_session()
    s3 = session.client("s3")
    described = session.client("sagemaker").describe_transform_job(TransformJobName=name)
    source = described["TransformInput"]
    content_type = source.get("ContentType") or "application/octet-stream"
    output = described["TransformOutput"]
    accept = output.get("Accept") or "application/json"
    max_bytes = int(described.get("MaxPayloadInMB") or 6) * 1024**2  # 6 MB: CreateTransformJob's default
    key_arn = output.get("KmsKeyId")
    encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_arn} if key_arn else {}
    out_bucket, out_prefix = split_uri(output["S3OutputPath"])
    if out_prefix and not out_prefix.endswith("/"):
        out_prefix += "/"
    input_uri = source["DataSource"]["S3DataSource"]["S3Uri"]
    objects = list_inputs(s3, input_uri)
    if not objects:
        raise LocalTransformError(f"transform job {name}: no object under {input_uri}: upload the files to classify "
                                  "first")
    written, failures = [], []
    with serving(settings, described["ModelName"], workers=TRANSFORM_WORKERS) as (port, _):
        for bucket, key, relative in objects:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if len(body) > max_bytes:
                failures.append(f"s3://{bucket}/{key}: {len(body)} bytes, over MaxPayloadInMB ({max_bytes} bytes)")
                continue
            status, answer = request(port, "POST", "/invocations", body, timeout=REQUEST_TIMEOUT_S,
                                     headers={"Content-Type": content_type, "Accept": accept})
            if status != 200:
                failures.append(f"s3://{bucket}/{key}: {status} {_reason(answer)}")
                continue
            target = f"{out_prefix}{relative}.out"
            s3.put_object(Bucket=out_bucket, Key=target, Body=answer, ContentType=accept, **encryption)
            written.append(f"s3://{out_bucket}/{target}")
    if failures:
        raise LocalTransformError(f"transform job {name} failed: the model refused {len(failures)} of {len(objects)} "
                                  "object(s), which got no .out (SageMaker marks such a job Failed):\n"
                                  + "\n".join(failures))
    return written


def list_inputs(s3: Any, uri: str) -> list[tuple[str, str, str]]:
    """The objects of an S3Prefix input: (bucket, key, path below the prefix), folder markers skipped.

    A prefix that does not end with "/" matches keys that merely start with it (`input` matches `input2/a.dcm`), as
    S3Prefix does; their path keeps the last folder's name then.
    """
    bucket, prefix = split_uri(uri)
    cut = len(prefix) if prefix.endswith("/") or not prefix else prefix.rfind("/") + 1
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if not key.endswith("/"):
                found.append((bucket, key, key[cut:].lstrip("/") or key.rsplit("/", 1)[-1]))
    return found


def start_endpoint(settings: Settings, name: str) -> None:
    """Serve the model of an endpoint that CreateEndpoint just recorded, until stop_endpoint (or this process ends).

    Raises:
        LocalInferenceError: an endpoint of that name is already served here.
        RuntimeError: the server did not start (its output is in the message).
    """
    if name in _ENDPOINTS:
        raise LocalInferenceError(f"endpoint {name} is already served by this process: delete it first")
    config = settings.boto_session().client("sagemaker").describe_endpoint_config(EndpointConfigName=name)
    model_name = config["ProductionVariants"][0]["ModelName"]
    stack = contextlib.ExitStack()
    try:
        port, pid = stack.enter_context(serving(settings, model_name, workers=ENDPOINT_WORKERS))
    except BaseException:
        stack.close()
        raise
    _ENDPOINTS[name] = _Served(port=port, pid=pid, stop=stack)


def invoke(name: str, body: bytes, *, content_type: str) -> dict[str, Any]:
    """POST /invocations to an endpoint's local server: the model's JSON.

    Raises:
        LocalInferenceError: the endpoint is not served by this process, the body is over InvokeEndpoint's 6 MB, or
            the model refused it (its status and reason).
    """
    from training.serve import request

    served = _ENDPOINTS.get(name)
    if served is None:
        raise LocalInferenceError(f"endpoint {name} is not served by this Python process: a local endpoint runs in "
                                  f"the process that created it until delete_endpoint; served here: "
                                  f"{', '.join(sorted(_ENDPOINTS)) or 'none'}")
    if len(body) > ENDPOINT_MAX_BYTES:
        raise LocalInferenceError(f"the body has {len(body)} bytes; InvokeEndpoint takes at most {ENDPOINT_MAX_BYTES}: "
                                  "use a batch transform for larger files")
    status, answer = request(served.port, "POST", "/invocations", body, timeout=REQUEST_TIMEOUT_S,
                             headers={"Content-Type": content_type, "Accept": "application/json"})
    if status != 200:
        raise LocalInferenceError(f"endpoint {name} answered {status}: {_reason(answer)}")
    result: dict[str, Any] = json.loads(answer)
    return result


def stop_endpoint(name: str) -> bool:
    """Stop an endpoint's server and remove its model folder; False when this process serves no such endpoint."""
    served = _ENDPOINTS.pop(name, None)
    if served is None:
        return False
    served.stop.close()
    return True


def stop_all() -> None:
    """Stop every endpoint server of this process."""
    for name in list(_ENDPOINTS):
        stop_endpoint(name)


atexit.register(stop_all)  # a kernel shut down before its clean-up cell leaves no server behind


def _reason(answer: bytes) -> str:
    try:
        return str(json.loads(answer)["error"])
    except (ValueError, KeyError, TypeError):
        return answer[:500].decode("utf-8", errors="replace")

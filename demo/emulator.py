"""Run the real CDK CLI and boto3 against a local AWS emulator: moto's server, in this process.

Typical use::

    with start_emulator() as emulator:
        env = emulator_env(emulator)
        bootstrap(env)
        deploy(env, emulator_context())   # then `python -m infra.teardown` with env, as `make destroy` runs it

Every CLI call runs `npx cdk` from the repository root, so cdk.json's app and context apply as in `make deploy`.

Where moto 5.2.5 differs from AWS, this module adapts the emulator, never the stack:
- requests are answered one at a time: moto's backends are not thread-safe (a DescribeStacks arriving while
  CreateStack ran resolved the Outputs and so created the stack's KMS key a second time);
- deploy uses `--method=direct`: moto resolves a stack's Outputs only for CreateStack/UpdateStack, not when it
  executes a change set (the CLI's default);
- custom resources whose handler does nothing on Create are answered here (NO_OP_ON_CREATE): moto runs Lambda
  functions only in Docker, and without an answer the stack stays CREATE_IN_PROGRESS forever; the stack's own handler
  (RUN_IN_PROCESS: the SageMaker log groups) runs here instead, with the resource's properties from the template,
  against the emulator's API, and its answer goes back.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from infra.handlers import log_groups  # standard library and boto3: no jsii process in the demo
from infra.lifecycle.render import current_commit, origin_url, validate_repo_url

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "123456789012"  # moto's fixed account
REGION = "us-east-1"
# Deploying to the emulator needs an existing image: building the DockerImageAsset needs Docker and a registry login.
PUBLIC_IMAGE = "public.ecr.aws/deep-learning-containers/pytorch:2.13-cpu-amzn2023-sagemaker"
# What the emulator's notebook "clones" when this checkout cannot say (it never clones anything).
PLACEHOLDER_REPO = {"repoUrl": "https://example.invalid/monai-dicom-sagemaker.git", "repoRef": "main"}
CLI_TIMEOUT_S = 300
OUTPUT_TAIL_CHARS = 4000
# Custom resources whose handler does nothing on Create (aws-cdk-lib's auto-delete-objects handler returns at once;
# it empties the bucket on Delete, which moto does not send to custom resources).
NO_OP_ON_CREATE = frozenset({"Custom::S3AutoDeleteObjects"})
# The stack's own custom resources, whose handler (standard library and boto3) runs in this process on Create.
RUN_IN_PROCESS = frozenset({log_groups.RESOURCE_TYPE})
RECORDED_BODY_BYTES = 1024 * 1024  # a request body recorded as text up to this size: API parameters, not uploads


class CdkError(RuntimeError):
    """A CDK CLI command failed or timed out; the message ends with the tail of its output."""


@dataclass(frozen=True)
class Emulator:
    """A running emulator.

    Attributes:
        endpoint: its URL, `http://localhost:PORT` (moto treats template URLs as path-style only for "localhost").
        cdk_home: a temporary CDK_HOME, so the CLI's account cache never mixes the emulator with real accounts.
    """

    endpoint: str
    cdk_home: Path


class _SerialMotoServer(ThreadedMotoServer):
    """moto's threaded server, answering one request at a time (moto's backends are not thread-safe), and
    appending each request to `recording` when it is a list (see start_emulator)."""

    recording: list[dict[str, Any]] | None = None

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serial_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            with lock:  # the whole response is produced under the lock
                if self.recording is not None and not environ.get("PATH_INFO", "").startswith("/moto-api/"):
                    self.recording.append(_recorded(environ))
                response = app(environ, start_response)
                try:
                    return list(response)
                finally:
                    getattr(response, "close", lambda: None)()

        self._server = make_server(self._ip_address, self._port, serial_app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


def _recorded(environ: dict[str, Any]) -> dict[str, Any]:
    """One request as recorded: method, raw path, query, headers, and the body when it is text of at most
    RECORDED_BODY_BYTES (API parameters; not uploaded files). The body is put back for moto to read."""
    length = int(environ.get("CONTENT_LENGTH") or 0)  # none for a chunked body, left unread
    body = environ["wsgi.input"].read(length) if length else b""
    if length:
        environ["wsgi.input"] = io.BytesIO(body)
    try:
        text = body.decode("utf-8") if len(body) <= RECORDED_BODY_BYTES else None
    except UnicodeDecodeError:
        text = None
    headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
    headers["Content-Type"] = environ.get("CONTENT_TYPE", "")
    return {"method": environ["REQUEST_METHOD"], "path": environ.get("RAW_URI", environ["PATH_INFO"]).split("?")[0],
            "query": environ.get("QUERY_STRING", ""), "headers": headers, "body": text, "length": length}


@contextmanager
def start_emulator(*, quiet: bool = True, recording: list[dict[str, Any]] | None = None) -> Iterator[Emulator]:
    """Start moto's server on a free port of 127.0.0.1 and stop it (discarding its state) on exit.

    Args:
        quiet: hide moto's request log and its notes on what its CloudFormation does not model (bucket policies,
            CDK metadata); failures still reach the caller through the CLI and boto3.
        recording: a list to which every request the emulator receives is appended (see _recorded), in order; None
            records nothing.

    Yields:
        The running emulator.
    """
    loggers = [logging.getLogger(name) for name in ("werkzeug", "moto")]
    levels = [logger.level for logger in loggers]
    server = _SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: the OS picks a free one
    server.recording = recording
    with warnings.catch_warnings():
        if quiet:
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"moto\.")
        server.start()
        endpoint = f"http://localhost:{server.get_host_and_port()[1]}"
        try:
            with tempfile.TemporaryDirectory(prefix="cdk-home-") as cdk_home:
                yield Emulator(endpoint=endpoint, cdk_home=Path(cdk_home))
        finally:
            try:
                # moto's backends are global to the process: reset them so that a later emulator starts empty.
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"),
                                       timeout=10).close()
            finally:
                server.stop()
                for logger, level in zip(loggers, levels, strict=True):
                    logger.setLevel(level)


def emulator_env(emulator: Emulator, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the CDK CLI, boto3 and subprocesses to talk to the emulator with dummy credentials.

    Every AWS_* variable of `base` (profiles, real credentials) is dropped, so nothing reaches a real account.

    Args:
        emulator: the running emulator.
        base: the environment to start from; None uses os.environ (PATH, HOME, ... are needed by npx).
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=emulator.endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        # No shared config or credentials files: a user's profiles (SSO, role chains) must not be consulted.
        AWS_CONFIG_FILE=str(emulator.cdk_home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(emulator.cdk_home / "aws-credentials"),
        CDK_HOME=str(emulator.cdk_home),
        # The CLI's cloud assembly goes beside it, not to the checkout's cdk.out: two emulators (pytest workers, or
        # a demo beside the tests) would otherwise meet there ("Another CLI is currently synthing to cdk.out").
        MONAI_DICOM_CDK_OUTPUT=str(emulator.cdk_home / "cdk.out"),
        CDK_DISABLE_CLI_TELEMETRY="true",
        CDK_DISABLE_VERSION_CHECK="true",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
    )
    return env


def client(env: Mapping[str, str], service: str) -> Any:
    """A boto3 client of the emulator, configured from `env` alone (not from this process's environment).

    Args:
        env: the emulator's environment (see emulator_env).
        service: e.g. "s3".
    """
    return boto3.client(
        service, endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
    )


def emulator_context(**extra: object) -> dict[str, object]:
    """CDK context for the stack on the emulator: the public training image, plus `extra`.

    The repository settings default to this checkout's origin and commit; where it has no usable origin (none, or
    SSH) or no commit yet, placeholders stand in: the emulator's notebook never clones.

    Args:
        **extra: more context, e.g. stackName="Other", destroyData=True.
    """
    context: dict[str, object] = {"trainingImageUri": PUBLIC_IMAGE}
    try:
        validate_repo_url(origin_url(ROOT) or "")
    except ValueError:
        context["repoUrl"] = PLACEHOLDER_REPO["repoUrl"]
    if current_commit(ROOT) is None:
        context["repoRef"] = PLACEHOLDER_REPO["repoRef"]
    return {**context, **extra}


def context_args(context: Mapping[str, object]) -> list[str]:
    """Render CDK context as CLI arguments: {"destroyData": True} -> ["-c", "destroyData=true"].

    Args:
        context: context keys and values; booleans are written as true/false, like cdk.json.
    """
    args: list[str] = []
    for key, value in context.items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        args += ["-c", f"{key}={text}"]
    return args


def run_process(command: list[str], env: Mapping[str, str], *, timeout_s: float,
                merge_output: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root in a session of its own, and wait for it.

    On timeout or interruption (Ctrl-C, or SIGTERM turned into KeyboardInterrupt) its whole process group (npx,
    node, the Python app, ...) is killed, so nothing it started keeps running.

    Args:
        command: the program and its arguments.
        env: the process environment.
        timeout_s: seconds before it is killed.
        merge_output: capture stderr into stdout (in order), as a terminal would show them.

    Raises:
        subprocess.TimeoutExpired: it ran longer than timeout_s; `output` holds what it printed.
    """
    process = subprocess.Popen(command, cwd=ROOT, env=dict(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT if merge_output else subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except BaseException as error:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        if isinstance(error, subprocess.TimeoutExpired):
            raise subprocess.TimeoutExpired(command, timeout_s, output=stdout, stderr=stderr) from None
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr or "")


def output_args(env: Mapping[str, str]) -> list[str]:
    """`--output DIR` when the environment names the cloud assembly's folder (MONAI_DICOM_CDK_OUTPUT, which
    emulator_env sets), else nothing."""
    folder = env.get("MONAI_DICOM_CDK_OUTPUT")
    return ["--output", folder] if folder else []


def run_cdk(env: Mapping[str, str], *args: str, timeout_s: float = CLI_TIMEOUT_S) -> str:
    """Run `npx cdk ARGS --no-notices` from the repository root and return its output (stdout and stderr).

    Args:
        env: the process environment (see emulator_env).
        *args: the CLI's arguments.
        timeout_s: seconds before the CLI and every process it started are killed.

    Raises:
        CdkError: the CLI failed or timed out; the message holds the tail of its output.
    """
    command = ["npx", "cdk", *args, "--no-notices", *output_args(env)]
    try:
        done = run_process(command, env, timeout_s=timeout_s, merge_output=True)
    except subprocess.TimeoutExpired as timeout:
        raise CdkError(f"`{' '.join(command)}` did not finish in {timeout_s:.0f} s; its output ended with:\n"
                       f"{str(timeout.output or '')[-OUTPUT_TAIL_CHARS:]}") from None
    if done.returncode != 0:
        raise CdkError(f"`{' '.join(command)}` failed with exit status {done.returncode}; its output ended with:\n"
                       f"{done.stdout[-OUTPUT_TAIL_CHARS:]}")
    return done.stdout


def synth(env: Mapping[str, str], context: Mapping[str, object]) -> str:
    """`npx cdk synth --quiet` with the given context (unacknowledged cdk-nag findings fail it).

    Args:
        env: the process environment.
        context: CDK context, e.g. {"trainingImageUri": PUBLIC_IMAGE}.
    """
    return run_cdk(env, "synth", "--quiet", *context_args(context))


def bootstrap(env: Mapping[str, str]) -> str:
    """`npx cdk bootstrap` of the emulator's account and region (the CDKToolkit stack: staging bucket, roles).

    Args:
        env: the emulator's environment.
    """
    # `--app ""`: an explicit environment needs no app; with one, the CLI would synthesize it first (about 5 s).
    return run_cdk(env, "bootstrap", "--app", "", f"aws://{ACCOUNT}/{REGION}")


def deploy(env: Mapping[str, str], context: Mapping[str, object]) -> str:
    """`npx cdk deploy` of the app's stack to the emulator, without approval prompts (see the module docstring).

    Args:
        env: the emulator's environment.
        context: CDK context; on the emulator it must set trainingImageUri (no Docker build there).
    """
    with _answering_custom_resources(env):
        return run_cdk(env, "deploy", "--require-approval", "never", "--method=direct", *context_args(context))


@contextmanager
def _answering_custom_resources(env: Mapping[str, str]) -> Iterator[None]:
    """While the block runs, answer SUCCESS for the NO_OP_ON_CREATE custom resources of stacks being created.

    The answer goes to moto's callback URL, where the handler's own answer would go.
    """
    endpoint, cfn = env["AWS_ENDPOINT_URL"], client(env, "cloudformation")
    stop = threading.Event()

    def answer_pending(answered: set[tuple[str, str]]) -> None:
        for stack in cfn.describe_stacks()["Stacks"]:
            if stack["StackStatus"] != "CREATE_IN_PROGRESS":
                continue
            stack_id = stack["StackId"]
            resources = cfn.list_stack_resources(StackName=stack_id)["StackResourceSummaries"]
            for resource in resources:
                logical_id, kind = resource.get("LogicalResourceId", ""), resource.get("ResourceType")
                if kind not in NO_OP_ON_CREATE | RUN_IN_PROCESS or (stack_id, logical_id) in answered:
                    continue
                body = {"Status": "SUCCESS", "StackId": stack_id, "LogicalResourceId": logical_id,
                        "PhysicalResourceId": resource.get("PhysicalResourceId") or logical_id, "Data": {}}
                if kind in RUN_IN_PROCESS:
                    event = {"RequestType": "Create", "StackId": stack_id, "RequestId": "emulator",
                             "LogicalResourceId": logical_id, "PhysicalResourceId": body["PhysicalResourceId"],
                             "ResourceProperties": _properties(env, stack_id, logical_id, resources)}
                    body = log_groups.answer(event, client(env, "logs"))
                url = f"{endpoint}/cloudformation_{REGION}/cfnresponse?stack={urllib.parse.quote(stack_id)}"
                request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=10).close()
                answered.add((stack_id, logical_id))

    def loop() -> None:
        answered: set[tuple[str, str]] = set()
        while not stop.wait(0.5):
            try:
                answer_pending(answered)
            except Exception:  # noqa: BLE001 - e.g. a stack deleted between two calls: the next round retries
                continue

    thread = threading.Thread(target=loop, name="custom-resource-answers", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _properties(env: Mapping[str, str], stack_id: str, logical_id: str,
                resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A custom resource's properties as CloudFormation would send them: the template's, with the key's ARN resolved
    (Fn::GetAtt KEY.Arn, the only intrinsic the stack's custom resources use)."""
    template = client(env, "cloudformation").get_template(StackName=stack_id)["TemplateBody"]
    template = json.loads(template) if isinstance(template, str) else template
    physical = {r.get("LogicalResourceId"): r.get("PhysicalResourceId") for r in resources}

    def resolved(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"Fn::GetAtt"} and value["Fn::GetAtt"][1] == "Arn":
            # moto 5.2.5 answers DescribeKey with a 500 for a key CloudFormation made with a KeyPolicy (it stores
            # the policy as a dict, its validator expects a string): build the ARN as CloudFormation gives it.
            return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{physical[value['Fn::GetAtt'][0]]}"
        return value

    properties = template["Resources"][logical_id]["Properties"]
    return {k: resolved(v) for k, v in properties.items() if k != "ServiceToken"}


@contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record how long the block takes, in seconds, as timings[step].

    Args:
        timings: where the duration is stored.
        step: the step's name.
    """
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = time.perf_counter() - start

"""Serve a trained bundle over HTTP under SageMaker's hosting contract (real-time endpoints and batch transform).

In the image, SageMaker runs `docker run IMAGE serve` (training/container/serve); locally:

    python -m training.serve --model-dir MODEL --port 8080 [--workers N]

- GET /ping: 200 once the model is loaded (SageMaker's health check).
- POST /invocations: training.inference's handlers: application/dicom or application/zip in, JSON out. A request
  the model cannot answer gets a 4xx with {"error": reason}; the worker keeps serving.
- GET /execution-parameters: what batch transform should send (one record per request, as many at once as there
  are workers).

The web server is gunicorn (in the base image, pinned at the base's version in requirements.txt): pre-forked
worker processes, one per core by default, each loading the bundle itself after the fork (torch's thread pools
do not survive a fork) and running inference on cores // workers torch threads. Each worker is a gthread worker with
THREADS connection threads, and infers one request at a time (a lock): a client that sends its headers and then
stalls holds one thread, at most BODY_TIMEOUT_S, never the worker, so GET /ping (SageMaker's health check, which
must answer within seconds) is answered meanwhile. Sync workers, one connection each, would let two stalled uploads
starve /ping on a two-worker server; SageMaker's front end normally sends whole requests, but the container must not
depend on it. The lock keeps one inference per worker, so memory and CPU stay those of one request per worker.
Not bounded here: a client that stalls inside its headers holds a thread until it disconnects (gunicorn parses
headers before the application runs and sets no deadline on them once a first byte has come).

Every request is bounded before work starts: the body to MAX_BODY_BYTES (read in chunks, a chunked body included:
413), its upload to BODY_TIMEOUT_S (408), the files and pixels it holds to training.inference's limits (400).

Heat maps: a request whose X-Amzn-SageMaker-Custom-Attributes hold explain=true gets, in each prediction, "overlay_png"
(base64) and "heatmap" (training/serving/explain.py: the bundle's PyTorch network, at most MAX_EXPLAIN_FILES files a
request, 400 beyond). Cost: about 0.3 s an image explained (DenseNet121 at 64x64, 2 shared CPU cores), plus about a
second for the first request that asks (the explainer loads the bundle's network then).

With a 3-D bundle a request is one series (its slices zipped, or one multi-frame file) and gets one answer; a real-time
endpoint's 6 MB hold about 22 deflated 512 x 512 16-bit slices: training/serving/volumes.py has the measure, the
per-series limits and the way out for larger series.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("training.serve")

MODEL_DIR = "/opt/ml/model"  # where SageMaker extracts model.tar.gz
PORT = 8080  # SageMaker's hosting contract
MAX_BODY_BYTES = 100 * 1024**2  # batch transform's largest MaxPayloadInMB; endpoints allow less (6 MB)
# gunicorn's worker timeout: a worker whose main loop is silent for longer is restarted. A gthread worker's loop keeps
# beating while a request runs, so what bounds a request is training.inference's limits (their derivation is in
# training/serving/request.py), sized to finish well inside this (launcher/local/inference.py's client waits as long).
TIMEOUT_S = 120
BODY_TIMEOUT_S = 30.0  # the whole upload: 100 MiB at under 4 MB/s still fits; a stalled client gets a 408 then
THREADS = 4  # connections a worker serves at once: inference (one at a time) and /ping beside up to 2 stalled uploads
_BODY_CHUNK = 1024**2  # bytes read from the socket at a time
_DRAIN_BYTES = MAX_BODY_BYTES  # after a 413, bytes still read and dropped so that the client can read the answer
WORKERS_VARIABLE = "SAGEMAKER_MODEL_SERVER_WORKERS"  # SageMaker's conventional override of the worker count

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def available_cores() -> int:
    """The cores this process may use (the container's CPU set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class InferenceApp:
    """The WSGI application: SageMaker's three routes around training.inference's handlers.

    Args:
        model_dir: the bundle (SageMaker's /opt/ml/model).
        workers: the server's worker count, reported to batch transform.
        body_timeout_s: the longest a request body may take to arrive (408 after it).
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, workers: int = 1,
                 body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        from training import inference  # MONAI and torch: imported in the worker, after the fork
        from training.serving import explain

        self.handlers, self.explain = inference, explain
        self.model_dir = str(model_dir)
        self.model = inference.model_fn(model_dir)
        self.workers = workers
        self.body_timeout_s = body_timeout_s
        self.busy = threading.Lock()  # one inference at a time per worker (module docstring)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        if path == "/ping" and method in ("GET", "HEAD"):
            return _respond(start_response, 200, b"", "text/plain")
        if path == "/execution-parameters" and method == "GET":
            parameters = {"MaxConcurrentTransforms": self.workers, "BatchStrategy": "SINGLE_RECORD",
                          "MaxPayloadInMB": MAX_BODY_BYTES // 1024**2}
            return _respond(start_response, 200, json.dumps(parameters).encode(), "application/json")
        if path == "/invocations" and method == "POST":
            return self.invoke(environ, start_response)
        if path in ("/ping", "/execution-parameters", "/invocations"):
            return _error(start_response, 405, f"{method} is not allowed on {path}")
        return _error(start_response, 404, f"no route {path}: use GET /ping or POST /invocations")

    def invoke(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """POST /invocations: body -> input_fn -> predict_fn -> output_fn; InvalidInput -> its 4xx."""
        h = self.handlers
        try:
            body = read_body(environ, self.body_timeout_s)
        except h.InvalidInput as exc:
            log.info("refused a request: %s %s", exc.status, exc.logged)
            return _error(start_response, exc.status, exc.reason)
        try:
            with self.busy:
                data = h.input_fn(body, environ.get("CONTENT_TYPE"))
                del body  # the zip's bytes stay referenced by `data` alone
                explain = self.explain.requested(environ.get(self.explain.CUSTOM_ATTRIBUTES), data, self.model)
                prediction = h.predict_fn(data, self.model)
                if explain:  # from the bundle's PyTorch network, whatever runtime answered the predictions
                    prediction = self.explain.attach(self.explain.for_bundle(self.model_dir), data, prediction,
                                                     self.model.class_names)
                payload, content_type = h.output_fn(prediction, environ.get("HTTP_ACCEPT"))
        except h.InvalidInput as exc:
            log.info("refused a request: %s %s", exc.status, exc.logged)  # nothing the client chose
            return _error(start_response, exc.status, exc.reason)
        except Exception:
            log.exception("inference failed")  # reasons of training/dataset/dicom.py carry no patient identifiers
            return _error(start_response, 500, "inference failed; the server log has the details")
        return _respond(start_response, 200, payload, content_type)


def read_body(environ: dict[str, Any], timeout_s: float) -> bytes:
    """The request body, read in chunks of at most 1 MiB, at most MAX_BODY_BYTES, within timeout_s in all.

    A body declared (Content-Length) or found (chunked) larger than the limit is refused with a 413; the rest of it
    is read and dropped first, up to as much again, so that the client gets the answer rather than a reset
    connection. Under gunicorn the deadline is the client socket's timeout, renewed before each read.

    Raises:
        training.inference.InvalidInput: 400 (a bad Content-Length), 408 (the deadline passed), 413 (too large).
    """
    from training.serving.request import InvalidInput  # pydicom, not torch: where training.inference has it from

    deadline = time.monotonic() + timeout_s
    declared = environ.get("CONTENT_LENGTH") or ""
    try:
        length = int(declared) if declared else None
    except ValueError:
        raise InvalidInput("Content-Length is not a number") from None
    stream, sock = environ["wsgi.input"], environ.get("gunicorn.socket")
    limit = f"at most {MAX_BODY_BYTES} per request (training.serve.MAX_BODY_BYTES): split the files into requests"
    parts: list[bytes] = []
    size = 0
    try:
        if length is not None and length > MAX_BODY_BYTES:
            _drain(stream, sock, deadline, min(length, MAX_BODY_BYTES + _DRAIN_BYTES))
            raise InvalidInput(f"the body has {length} bytes; {limit}", status=413)
        while True:
            _renew(sock, deadline)
            piece = stream.read(min(_BODY_CHUNK, MAX_BODY_BYTES + 1 - size))
            if not piece:
                break
            size += len(piece)
            if size > MAX_BODY_BYTES:
                _drain(stream, sock, deadline, _DRAIN_BYTES)
                raise InvalidInput(f"the body has more than {MAX_BODY_BYTES} bytes; {limit}", status=413)
            parts.append(piece)
    except TimeoutError:  # socket.timeout is TimeoutError
        raise InvalidInput(f"the body did not arrive within {timeout_s:g} s (training.serve.BODY_TIMEOUT_S, the "
                           "server's --body-timeout): send it whole", status=408) from None
    finally:
        if sock is not None:
            sock.settimeout(timeout_s)  # the answer is written under the same bound
    return b"".join(parts)


def _renew(sock: socket.socket | None, deadline: float) -> None:
    if sock is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)


def _drain(stream: Any, sock: socket.socket | None, deadline: float, limit: int) -> None:
    """Read and drop up to `limit` bytes of what the client still sends, within the deadline."""
    dropped = 0
    try:
        while dropped < limit:
            _renew(sock, deadline)
            piece = stream.read(min(_BODY_CHUNK, limit - dropped))
            if not piece:
                return
            dropped += len(piece)
    except (OSError, ValueError):  # a timeout or a reset: the answer is sent all the same
        return


def quiet_pydicom() -> None:
    """Keep element values out of the server's log: pydicom quotes a value it finds invalid in a warning (a corrupted
    element can hold PatientName; training.dataset.dicom reads inside a suppression, this makes it hold wherever a value
    is read). Reading validation is off, and any warning that still comes is logged by its category and origin alone."""
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        log.warning("a %s from %s:%d (its text is not logged: it may quote a file's values)", category.__name__,
                    os.path.basename(filename), lineno)

    warnings.showwarning = show


def _respond(start_response: StartResponse, status: int, body: bytes, content_type: str) -> list[bytes]:
    start_response(f"{status} {http.client.responses.get(status, '')}",
                   [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _error(start_response: StartResponse, status: int, reason: str) -> list[bytes]:
    return _respond(start_response, status, json.dumps({"error": reason}).encode(), "application/json")


def serve(
    model_dir: str | os.PathLike[str], *, host: str = "0.0.0.0", port: int = PORT, workers: int = 1,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> None:
    """Run gunicorn in this process until it is stopped (SIGTERM from SageMaker stops it gracefully).

    Args:
        model_dir: the bundle.
        host: the interface to listen on (all of them in the container).
        port: the port (8080 for SageMaker).
        workers: worker processes; each runs inference on cores // workers torch threads.
        body_timeout_s: the longest a request body may take to arrive (408 after it).
    """
    from gunicorn.app.base import BaseApplication

    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if not body_timeout_s > 0:
        raise ValueError(f"body_timeout_s must be > 0 seconds; got {body_timeout_s}")
    root = Path(model_dir)
    if not (root / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{root} holds no MONAI bundle (configs/inference.json)")
    torch_threads = max(1, available_cores() // workers)

    def post_fork(server: Any, worker: Any) -> None:
        import torch

        torch.set_num_threads(torch_threads)

    # keepalive 0: each connection closes after its answer, so an unread remainder of a refused body is never parsed
    # as a next request, nor drained without bound by gunicorn (a connection costs little beside an inference).
    options = {"bind": f"{host}:{port}", "workers": workers, "worker_class": "gthread", "threads": THREADS,
               "timeout": TIMEOUT_S, "graceful_timeout": 30, "keepalive": 0, "errorlog": "-", "loglevel": "info",
               "accesslog": None, "post_fork": post_fork, "preload_app": False}

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> InferenceApp:
            quiet_pydicom()  # in the worker process only: the setting is global to pydicom
            return InferenceApp(root, workers=workers, body_timeout_s=body_timeout_s)

    log.info("serving %s on %s:%d with %d workers x %d connection threads, %d torch threads", root, host, port,
             workers, THREADS, torch_threads)
    Server().run()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """--model-dir, --host, --port, --workers (default: SAGEMAKER_MODEL_SERVER_WORKERS, else one per core),
    --body-timeout."""
    parser = argparse.ArgumentParser(prog="python -m training.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=MODEL_DIR, help=f"the bundle (default {MODEL_DIR})")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default all)")
    parser.add_argument("--port", type=int, default=PORT, help=f"port (default {PORT}, SageMaker's)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default one per core)")
    parser.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT_S,
                        help=f"seconds a request body may take to arrive, 408 after (default {BODY_TIMEOUT_S:g})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The `serve` entry point."""
    args = parse_args(argv)
    workers = args.workers or int(os.environ.get(WORKERS_VARIABLE) or 0) or available_cores()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.model_dir, host=args.host, port=args.port, workers=workers, body_timeout_s=args.body_timeout)
    return 0


# --- Running a server from Python: tests and measure_serving --------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    model_dir: str | os.PathLike[str], *, workers: int = 1, port: int | None = None, ready_timeout_s: float = 120,
    body_timeout_s: float = BODY_TIMEOUT_S, log_file: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`python -m training.serve` on a free localhost port, until the block ends; yields (process, port). Its output
    (stdout and stderr together) goes to log_file, or else to the process's stdout pipe.

    Raises:
        RuntimeError: the server exited or did not answer /ping in time (its output is in the message).
    """
    port = port or free_port()
    command = [sys.executable, "-m", "training.serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--body-timeout", str(body_timeout_s)]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    sink = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115  # closed below
    process = subprocess.Popen(command, stdout=sink or subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _pings(port, workers):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = (process.communicate()[0] or b"").decode(errors="replace")
                if log_file is not None:
                    output = Path(log_file).read_text(errors="replace")
                raise RuntimeError(f"the server on port {port} did not become ready:\n{output[-4000:]}")
            time.sleep(0.2)
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if sink is not None:
            sink.close()


def _pings(port: int, workers: int) -> bool:
    # Every worker must have loaded the model: ask more times than there are workers (the kernel spreads
    # connections over them; a worker still loading does not accept).
    try:
        for _ in range(workers * 2):
            status, _ = request(port, "GET", "/ping", timeout=2)
            if status != 200:
                return False
    except OSError:
        return False
    return True


def request(
    port: int, method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, bytes]:
    """One HTTP request to localhost:port; (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def measure_serving(
    bundle_dir: str | os.PathLike[str], dicom_path: str | os.PathLike[str], *, requests: int, concurrency: int,
    workers: int | None = None,
) -> dict[str, Any]:
    """Throughput and latency of POST /invocations for one DICOM file, against a local server (`make bench`).

    Args:
        bundle_dir: the bundle to serve.
        dicom_path: the file every request sends (application/dicom), e.g. a 512x512 image.
        requests: requests in total, after 2 * workers warm-up requests that are not counted.
        concurrency: clients sending at once.
        workers: server workers; default one per core.

    Returns:
        requests, concurrency, workers, cores, errors, seconds, requests_per_second, p50_ms, p99_ms, max_ms.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError(f"requests and concurrency must be >= 1; got {requests} and {concurrency}")
    body = Path(dicom_path).read_bytes()
    workers = workers or available_cores()
    headers = {"Content-Type": "application/dicom", "Accept": "application/json"}
    with running_server(bundle_dir, workers=workers) as (_, port):
        for _ in range(2 * workers):
            request(port, "POST", "/invocations", body, headers=headers)

        def one(_: int) -> tuple[float, int]:
            start = time.perf_counter()
            status, _body = request(port, "POST", "/invocations", body, headers=headers)
            return time.perf_counter() - start, status

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        seconds = time.perf_counter() - started
    latencies = sorted(1000 * s for s, _ in results)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "requests": requests,
        "concurrency": concurrency,
        "workers": workers,
        "cores": available_cores(),
        "errors": sum(1 for _, status in results if status != 200),
        "seconds": round(seconds, 3),
        "requests_per_second": round(requests / seconds, 2),
        "p50_ms": round(quantiles[49], 1),
        "p99_ms": round(quantiles[98], 1),
        "max_ms": round(latencies[-1], 1),
    }


if __name__ == "__main__":
    sys.exit(main())

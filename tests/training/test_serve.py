"""training/serve.py: the real server (gunicorn, `python -m training.serve`) on a free localhost port.

SageMaker's hosting contract (GET /ping, POST /invocations), refusals with a 4xx and a reason after which the server
keeps serving, and a bounded soak: 50 concurrent clients x 4 requests, no error, no steady growth of memory.
"""

from __future__ import annotations

import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.training.dicom_builders import pydicom_data_dir, write_structured_report
from training import inference
from training.serve import measure_serving, request, running_server

WORKERS = 2
CLIENTS, PER_CLIENT = 50, 4
# Allowed RSS growth (all server processes) between two identical soak rounds: allocator arenas settle in the first,
# so a leak of even a few KiB a request (200 requests a round) shows as a steady climb beyond this.
RSS_TOLERANCE_BYTES = 40 * 1024**2
DICOM = {"Content-Type": "application/dicom", "Accept": "application/json"}


@pytest.fixture(scope="module")
def server(job_bundle: Path):
    with running_server(job_bundle, workers=WORKERS) as (process, port):
        yield process, port


def _ok(port: int, body: bytes) -> dict:
    status, payload = request(port, "POST", "/invocations", body, headers=DICOM)
    assert status == 200, payload
    return json.loads(payload)


def _rss(process) -> int:
    parent = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])


def test_ping_answers_and_invocations_match_the_handlers(server, job_bundle, job_test_files):
    _, port = server
    assert request(port, "GET", "/ping")[0] == 200
    model = inference.model_fn(job_bundle)
    for name in job_test_files[:4]:
        body = Path(name).read_bytes()
        expected, _ = inference.output_fn(inference.predict_fn(inference.input_fn(body, inference.DICOM), model), None)
        got = _ok(port, body)["predictions"][0]
        want = json.loads(expected)["predictions"][0]
        assert (got["label"], got["SOPInstanceUID"]) == (want["label"], want["SOPInstanceUID"])
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)


def test_execution_parameters_report_the_workers(server):
    _, port = server
    status, payload = request(port, "GET", "/execution-parameters")
    assert status == 200
    assert json.loads(payload)["MaxConcurrentTransforms"] == WORKERS


def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_keeps_serving(server, job_test_files, tmp_path):
    _, port = server
    good = Path(job_test_files[0]).read_bytes()
    no_pixels = write_structured_report(tmp_path / "sr.dcm").read_bytes()
    short = pydicom_data_dir() / "emri_small_jpeg_2k_lossless_too_short.dcm"
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", b"not an image")
    cases = [
        ("POST", "/invocations", b"GIF89a" + bytes(300), DICOM, 400, "not a DICOM Part 10 file"),
        ("POST", "/invocations", no_pixels, DICOM, 400, "pixel data"),
        ("POST", "/invocations", short.read_bytes(), DICOM, 400, "pixel data"),
        ("POST", "/invocations", b"", DICOM, 400, "the request body is empty"),
        ("POST", "/invocations", good, {"Content-Type": "image/png"}, 415, "is not supported"),
        ("POST", "/invocations", zipped.getvalue(), {"Content-Type": "application/zip"}, 400, "readme.txt"),
        ("POST", "/invocations", good, {**DICOM, "Accept": "text/csv"}, 406, "application/json"),
        ("GET", "/invocations", b"", {}, 405, "not allowed"),
        ("GET", "/nothing", b"", {}, 404, "no route"),
    ]
    for method, path, body, headers, status, reason in cases:
        got, payload = request(port, method, path, body, headers=headers)
        assert got == status, (reason, payload)
        assert reason in json.loads(payload)["error"]
        assert _ok(port, good)["predictions"][0]["label"]


def test_a_soak_of_concurrent_clients_has_no_errors_and_no_steady_memory_growth(server, job_test_files):
    process, port = server
    bodies = [Path(name).read_bytes() for name in job_test_files[:CLIENTS]]

    def client(i: int) -> list[int]:
        body = bodies[i % len(bodies)]
        return [request(port, "POST", "/invocations", body, headers=DICOM)[0] for _ in range(PER_CLIENT)]

    def soak() -> list[int]:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            return [s for statuses in pool.map(client, range(CLIENTS)) for s in statuses]

    first = soak()
    after_first = _rss(process)
    second = soak()
    after_second = _rss(process)
    assert first.count(200) == second.count(200) == CLIENTS * PER_CLIENT
    growth = after_second - after_first
    assert growth < RSS_TOLERANCE_BYTES, f"RSS grew {growth / 1024**2:.1f} MiB in {CLIENTS * PER_CLIENT} requests"
    assert process.poll() is None and request(port, "GET", "/ping")[0] == 200


def test_measure_serving_reports_throughput_and_latency(job_bundle, job_test_files):
    figures = measure_serving(job_bundle, job_test_files[0], requests=20, concurrency=4, workers=1)
    assert figures["errors"] == 0 and figures["requests"] == 20 and figures["workers"] == 1
    assert figures["requests_per_second"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]

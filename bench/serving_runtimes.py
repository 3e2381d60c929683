"""Serving (issue 23 item 2): where one request's time goes, and the served network under each CPU runtime.

The case `serving_runtimes` trains a bundle with the real job (or takes one), then, on the same inputs:

1. shares: one 512x512 request through the server's own steps, in process, one torch thread (a worker's share when
   there is one worker a core): header check (training.inference.input_fn), decode (read_dataset and pixel_array),
   preprocessing (training.dataset.dicom.preprocess: window, resize), forward pass (Predictor.probabilities, PyTorch),
   encoding (decision, output_fn's JSON); the median of each and its share of their sum.
2. runtimes: eager PyTorch, ONNX Runtime and OpenVINO (both reading the ONNX graph training/serving/runtimes.py
   exports) on the validation set's preprocessed images: one-file latency percentiles, images per second in batches
   of the Predictor's batch size, the largest probability difference from PyTorch and how many labels differ.
3. server: training/serve.py's server (gunicorn, one worker a core) with each runtime it can use forced
   (DICOM_SERVING_RUNTIME) and with its default (auto), each at 1, 8 and 32 concurrent clients (serving_scaling):
   requests/s, p50, p99 and core-milliseconds a request.

OpenVINO is measured here only (a package of requirements-dev.txt, not of the image: training/serving/runtimes.py
says why). `markdown` renders the figures as the report's table per runtime; `benchmark` is what bench/__main__.py
calls for `--only runtimes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from training.serve import available_cores, request, running_server
from training.serving import runtimes

RUNTIME_NAMES = ("pytorch", "onnxruntime", "openvino")
SERVED = runtimes.RUNTIMES  # what the server can be told to use
CONCURRENCIES = (1, 8, 32)
MAX_FILES = 200  # validation files compared across runtimes (bounded before any is read)


class OpenVinoLogits:
    """The exported graph compiled by OpenVINO for the CPU (fp32, as PyTorch): images to logits."""

    name = "openvino"

    def __init__(self, graph: str | os.PathLike[str], *, threads: int) -> None:
        import openvino

        self.compiled = openvino.Core().compile_model(
            os.fspath(graph), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.compiled(images.numpy())[0]))


def runtime_logits(name: str, predictor: Any, graph: Path) -> runtimes.Logits:
    """A runtime by name over the predictor's network (the graph: its ONNX export)."""
    threads = torch.get_num_threads()
    if name == "onnxruntime":
        return runtimes.OnnxRuntimeLogits(graph, threads=threads)
    if name == "openvino":
        return OpenVinoLogits(graph, threads=threads)
    return predictor.network  # type: ignore[no-any-return]


def request_shares(predictor: Any, body: bytes, *, repeats: int = 20) -> dict[str, Any]:
    """Milliseconds of each step of one application/dicom request (median of repeats, after one warm-up) and shares."""
    laps = [one_request(predictor, body) for _ in range(repeats + 1)][1:]  # the first is a warm-up
    medians = {key: 1000 * statistics.median(lap[key] for lap in laps) for key in laps[0]}
    total = sum(medians.values())
    return {"ms": {k: round(v, 3) for k, v in medians.items()}, "total_ms": round(total, 3),
            "share": {k: round(v / total, 4) for k, v in medians.items()}, "repeats": repeats,
            "threads": torch.get_num_threads()}


def one_request(predictor: Any, body: bytes) -> dict[str, float]:
    """Seconds of each step of one request, as the server runs them (training/serve.py InferenceApp.invoke)."""
    from training import inference
    from training.dataset.dicom import preprocess

    laps: dict[str, float] = {}

    def lap(key: str, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = work(*args, **kwargs)
        laps[key] = time.perf_counter() - started
        return result

    (item,) = lap("header", inference.input_fn, body, "application/dicom")
    dataset = lap("decode", _decoded, item.load)
    image = lap("preprocessing", preprocess, dataset, image_size=predictor.preprocessing.image_size,
                window=predictor.preprocessing.window)
    probabilities = lap("forward", predictor.probabilities, torch.from_numpy(image).unsqueeze(0))
    lap("encoding", _encoded, predictor, probabilities)
    return laps


def _decoded(load: Callable[[], bytes]) -> Any:
    from training.dataset.dicom import read_dataset

    dataset = read_dataset(load(), name="body")
    dataset.pixel_array  # noqa: B018  # decoded now and kept by pydicom: preprocess reuses it
    return dataset


def _encoded(predictor: Any, probabilities: np.ndarray) -> bytes:
    from training import inference
    from training.job.evaluation import predict as decide

    label = int(decide(probabilities, threshold=predictor.threshold, positive=predictor.positive_index)[0])
    answer = {"file": "body", "label": predictor.class_names[label],
              "probabilities": {c: float(p) for c, p in zip(predictor.class_names, probabilities[0], strict=True)}}
    return inference.output_fn([answer], None)[0]


def compare_runtimes(predictor: Any, images: torch.Tensor, graph: Path, *, single_runs: int = 50,
                     names: Sequence[str] = RUNTIME_NAMES) -> list[dict[str, Any]]:
    """One row per runtime on the same images: one-file latency p50/p90/p99, images/s in batches of
    predictor.batch_size, the largest probability difference from PyTorch, labels that differ. A runtime that cannot
    load gets a row with its error."""
    from training.job.evaluation import predict as decide

    expected = _probabilities(predictor.network, images, predictor.batch_size)
    labels = decide(expected, threshold=predictor.threshold, positive=predictor.positive_index)
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            logits = runtime_logits(name, predictor, graph)
        except Exception as exc:  # not installed, or the graph does not load
            rows.append({"runtime": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        started = time.perf_counter()
        got = _probabilities(logits, images, predictor.batch_size)
        batch_seconds = time.perf_counter() - started
        single = _one_file_latencies(logits, images, single_runs)
        rows.append({
            "runtime": name,
            **{f"p{q}_ms": round(float(np.percentile(single, q)), 2) for q in (50, 90, 99)},
            "images_per_second": round(len(images) / batch_seconds, 1),
            "max_probability_difference": float(np.abs(got - expected).max()),
            "labels_differing": int((decide(got, threshold=predictor.threshold,
                                            positive=predictor.positive_index) != labels).sum()),
            "images": len(images),
        })
    return rows


@torch.inference_mode()
def _probabilities(logits: runtimes.Logits, images: torch.Tensor, batch_size: int) -> np.ndarray:
    parts = [torch.softmax(torch.as_tensor(logits(images[i:i + batch_size])).float(), dim=1)
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts).numpy()


@torch.inference_mode()
def _one_file_latencies(logits: runtimes.Logits, images: torch.Tensor, runs: int) -> list[float]:
    logits(images[:1])  # warm-up
    times = []
    for i in range(runs):
        started = time.perf_counter()
        logits(images[i % len(images)].unsqueeze(0))
        times.append(1000 * (time.perf_counter() - started))
    return times


@contextlib.contextmanager
def runtime_setting(value: str | None) -> Iterator[None]:
    """DICOM_SERVING_RUNTIME for the servers started inside the block (they inherit this process's environment)."""
    before = os.environ.get(runtimes.RUNTIME_VARIABLE)
    if value is None:
        os.environ.pop(runtimes.RUNTIME_VARIABLE, None)
    else:
        os.environ[runtimes.RUNTIME_VARIABLE] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(runtimes.RUNTIME_VARIABLE, None)
        else:
            os.environ[runtimes.RUNTIME_VARIABLE] = before


def serving_scaling(bundle_dir: str | os.PathLike[str], dicom_path: str | os.PathLike[str], *,
                    concurrencies: Sequence[int] = CONCURRENCIES, requests_per_client: int = 8,
                    workers: int | None = None, runtime: str | None = None) -> list[dict[str, Any]]:
    """One server (training/serve.py), loaded by each number of concurrent clients in turn: a row each with
    requests/s, p50, p99 and the cost of a request in core-milliseconds (the cores the server may use x wall time /
    requests).

    Args:
        bundle_dir: the bundle served.
        dicom_path: the file every request sends (application/dicom).
        concurrencies: clients sending at once, in turn, after 2 x workers warm-up requests.
        requests_per_client: timed requests per client (a row's run sends concurrency x this many).
        workers: server workers; default one per core.
        runtime: DICOM_SERVING_RUNTIME for the server; None: its default (auto).
    """
    if requests_per_client < 1 or not concurrencies or min(concurrencies) < 1:
        raise ValueError(f"concurrencies and requests_per_client must be >= 1; got {concurrencies}, "
                         f"{requests_per_client}")
    body = Path(dicom_path).read_bytes()
    workers = workers or available_cores()
    with runtime_setting(runtime), running_server(bundle_dir, workers=workers) as (_, port):
        for _ in range(2 * workers):
            _post(port, body)
        rows = [_load(port, body, clients, clients * requests_per_client) for clients in concurrencies]
    for row in rows:
        row.update(workers=workers, runtime=runtime or runtimes.SERVER_DEFAULT,
                   core_ms_per_request=round(1000 * row.pop("seconds") * available_cores() / row["requests"], 1))
    return rows


def _post(port: int, body: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    status, _ = request(port, "POST", "/invocations", body,
                        headers={"Content-Type": "application/dicom", "Accept": "application/json"})
    return time.perf_counter() - started, status


def _load(port: int, body: bytes, clients: int, count: int) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(lambda _: _post(port, body), range(count)))
    seconds = time.perf_counter() - started
    latencies = np.array([1000 * s for s, _ in answers])
    return {"concurrency": clients, "requests": count, "seconds": seconds,
            "requests_per_second": round(count / seconds, 2), "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "errors": sum(1 for _, status in answers if status != 200)}


def serving_runtimes(
    *, train_dir: str, val_dir: str, bundle_dir: str | None = None, dicom_path: str | None = None, epochs: int = 1,
    hyperparameters: Mapping[str, str] | None = None, single_runs: int = 50, repeats: int = 20,
    requests_per_client: int = 8, workers: int = 0, concurrencies: Sequence[int] = CONCURRENCIES,
    served: Sequence[str] = (*SERVED, "auto"),
) -> dict[str, Any]:
    """The case (module docstring): shares, runtimes and server figures on one bundle.

    Args:
        train_dir, val_dir: a synthetic set (bench/datasets.py): the job's channels; val_dir's files are compared.
        bundle_dir: a trained bundle to use instead of training one.
        dicom_path: the file requests send; None: the first of val_dir by name.
        epochs, hyperparameters: of the job that trains the bundle (as bench.cases.serving).
        single_runs: one-file forward passes timed per runtime.
        repeats: requests whose steps are timed for the shares.
        requests_per_client, workers, concurrencies: each server's load (serving_scaling; workers 0: one per core).
        served: DICOM_SERVING_RUNTIME of each server run, one server each ("auto": the server's default, whose rows
            are the scaling figures).
    """
    files = sorted(Path(val_dir).glob("*.dcm"))[:MAX_FILES]
    if not files:
        raise FileNotFoundError(f"{val_dir} holds no .dcm file")
    dicom_path = dicom_path or str(files[0])
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as scratch:
        bundle = Path(bundle_dir) if bundle_dir else _train(train_dir, val_dir, Path(scratch), epochs,
                                                            hyperparameters or {})
        figures = _in_process(bundle, files, Path(dicom_path).read_bytes(), single_runs, repeats)
        figures["server"] = {name: serving_scaling(bundle, dicom_path, concurrencies=concurrencies,
                                                   requests_per_client=requests_per_client, workers=workers or None,
                                                   runtime=name) for name in served}
    header = pydicom.dcmread(dicom_path, stop_before_pixels=True)
    figures["file"] = {"rows": int(header.Rows), "columns": int(header.Columns),  # no name: it may be a UID
                       "bytes": Path(dicom_path).stat().st_size}
    return figures


def _train(train_dir: str, val_dir: str, scratch: Path, epochs: int, hyperparameters: Mapping[str, str]) -> Path:
    from training.job import train

    model_dir = scratch / "model"
    argv = [f"--train={train_dir}", f"--validation={val_dir}", f"--model-dir={model_dir}",
            f"--output-dir={scratch / 'output'}", f"--epochs={epochs}"]
    argv += [f"--{name}={value}" for name, value in hyperparameters.items()]
    if train.main(argv) != 0:
        raise RuntimeError(f"the job (python -m training {' '.join(argv)}) failed")
    return model_dir


def _in_process(bundle: Path, files: Sequence[Path], body: bytes, single_runs: int, repeats: int) -> dict[str, Any]:
    """Shares and the runtimes' comparison, one torch thread (a worker's share with one worker a core)."""
    from training.inference import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = Predictor.from_bundle(bundle, device="cpu")
        image_size = list(predictor.preprocessing.image_size)  # type: ignore[attr-defined]  # LoadDicomImage's
        shares = request_shares(predictor, body, repeats=repeats)
        images = torch.stack([predictor.preprocessing(str(f)) for f in files])
        digest = runtimes.file_digest(bundle / "models" / "model.pt")
        cached = (runtimes.cache_dir() / runtimes.graph_name(predictor.network, tuple(images.shape[1:]),
                                                             weights_digest=digest)).is_file()
        started = time.perf_counter()  # the server's own cache: a freshly trained bundle is exported here
        graph = runtimes.cached_graph(predictor.network, tuple(images.shape[1:]), weights_digest=digest)
        export_seconds = time.perf_counter() - started
        rows = compare_runtimes(predictor, images, graph, single_runs=single_runs)
    finally:
        torch.set_num_threads(threads)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    return {"shares": shares, "runtimes": rows, "export_seconds": round(export_seconds, 2), "graph_cached": cached,
            "threads": 1,
            "cores": available_cores(), "model": {"network": str(metadata.get("network", "?")),
                                                  "image_size": image_size}}


def markdown(figures: Mapping[str, Any]) -> str:
    """The report's section: the shares of one request, a table per runtime, the forced-runtime server figures and
    the scaling rows."""
    shares = figures["shares"]
    model = figures["model"]
    file = figures["file"]
    lines = [f"### Serving runtimes ({model['network']} at {'x'.join(map(str, model['image_size']))}, one "
             f"{file['rows']}x{file['columns']} file of {file['bytes']:,} bytes a request)", "",
             "One request's steps (median ms, one thread): " + ", ".join(
                 f"{k} {v:.2f} ({100 * shares['share'][k]:.0f}%)" for k, v in shares["ms"].items()), "",
             "| runtime | one file p50 / p90 / p99 ms | images/s (batch) | max prob. diff | labels differing |",
             "| --- | --- | --- | --- | --- |"]
    for row in figures["runtimes"]:
        if "error" in row:
            lines.append(f"| {row['runtime']} | not measured: {row['error']} | | | |")
            continue
        lines.append(f"| {row['runtime']} | {row['p50_ms']:.1f} / {row['p90_ms']:.1f} / {row['p99_ms']:.1f} | "
                     f"{row['images_per_second']:.1f} | {row['max_probability_difference']:.1e} | "
                     f"{row['labels_differing']} of {row['images']} |")
    lines += ["", "| server runtime | clients | requests/s | p50 ms | p99 ms | core-ms a request | errors |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in figures["server"].items():
        lines += [f"| {name} | {row['concurrency']} | {row['requests_per_second']:.1f} | {row['p50_ms']:.0f} | "
                  f"{row['p99_ms']:.0f} | {row['core_ms_per_request']:.0f} | {row['errors']} |" for row in rows]
    return "\n".join(lines) + "\n"


def benchmark(args: Any, data: Any, case: Callable[[str, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """`python -m bench --only runtimes`: the case in a child process on the serving size's set (bench/__main__.py
    passes its args, the BenchSet and its case runner), with the serving flags' workers and epochs and
    --serving-requests spread over the 32 clients of the largest load."""
    return case("serving_runtimes", {"train_dir": str(data.train), "val_dir": str(data.validation),
                                     "requests_per_client": max(4, args.serving_requests // max(CONCURRENCIES)),
                                     "workers": args.serving_workers, "epochs": args.serving_epochs})


def scaling_serving(*, train_dir: str, val_dir: str, bundle_dir: str | None = None, epochs: int = 1,
                    requests_per_client: int = 8, workers: int = 0,
                    concurrencies: Sequence[int] = CONCURRENCIES) -> dict[str, Any]:
    """The scaling table's serving rows (`python -m bench --only scaling`): a bundle the real job trains on the set
    (or bundle_dir), served with the server's default runtime to 1, 8 and 32 concurrent clients (serving_scaling)."""
    files = sorted(Path(val_dir).glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"{val_dir} holds no .dcm file")
    with tempfile.TemporaryDirectory(prefix="bench-scaling-serving-") as scratch:
        bundle = Path(bundle_dir) if bundle_dir else _train(train_dir, val_dir, Path(scratch), epochs, {})
        rows = serving_scaling(bundle, files[0], requests_per_client=requests_per_client, workers=workers or None,
                               concurrencies=concurrencies)
    return {"rows": rows}


CASES: dict[str, Callable[..., dict[str, Any]]] = {"serving_runtimes": serving_runtimes,
                                                   "scaling_serving": scaling_serving}

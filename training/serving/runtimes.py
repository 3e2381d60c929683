"""Which runtime computes a served 2-D network's logits: eager PyTorch, or ONNX Runtime on a graph exported at load.

The server (training.inference.model_fn, so training/serve.py and batch transform) picks the runtime when it loads a
bundle, from the setting DICOM_SERVING_RUNTIME (read at the edge, in model_fn):

- "pytorch": eager PyTorch, as before (and what Predictor.from_bundle does unless told otherwise).
- "onnxruntime": ONNX Runtime, if its self-check passes; else PyTorch, with one log line saying why.
- "auto" (the server's default): every runtime that is installed and passes its self-check, timed on a one-file batch
  on this machine; the fastest serves. A runtime that wins on one instance type may lose on another: this is measured
  where it serves, and "pytorch" forces PyTorch anywhere.

The self-check runs a few synthetic inputs through PyTorch and the candidate: the labels (argmax) must be the same and
every probability within TOLERANCE, or the candidate is dropped. A runtime returns LOGITS only: the Predictor applies
softmax, temperature and threshold the same way for every runtime. Anything needing gradients (heat maps) keeps the
PyTorch network; 3-D bundles and GPUs stay on PyTorch.

The ONNX graph is made here from our own network (torch.onnx's TorchScript-based exporter, `dynamo=False`: the
torch.export-based one needs onnxscript, which the image lacks), never read from the bundle: a bundle holds no code.
It is cached in a folder of this user's under the temp dir, keyed by the weights' digest, the network, the input shape
and torch's version, so the second worker and later starts skip the export (about 2 s for DenseNet121 here).
ONNX Runtime (and onnx, which the exporter needs) are in the training image's base already (the DLC's package list:
training/container/dlc-2.13-cpu-constraints.txt), so choosing it adds nothing to the image. OpenVINO is measured by
bench/serving_runtimes.py but not offered here: it ties with ONNX Runtime on this CPU and would add a 59 MB wheel
(180 MB installed) to the image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("training.serving.runtimes")

RUNTIME_VARIABLE = "DICOM_SERVING_RUNTIME"  # the server's setting (training.inference.model_fn reads it)
RUNTIMES = ("pytorch", "onnxruntime")  # what may serve; "auto" picks among them
SETTINGS = ("auto", *RUNTIMES)
SERVER_DEFAULT = "auto"
TOLERANCE = 1e-3  # largest probability difference a runtime may show against PyTorch (issue 23)
CHECK_INPUTS = 4  # synthetic images of the self-check, one batch
TIMED_RUNS = 5  # one-file forward passes timed per runtime by "auto", after one warm-up (median taken)
OPSET = 17
CACHE_NAME = "dicom-serving-onnx"

Logits = Callable[[torch.Tensor], torch.Tensor]


class RuntimeMismatch(RuntimeError):
    """A runtime's answers on the self-check's inputs differ from PyTorch's beyond TOLERANCE (or in a label)."""


def check_setting(value: str | None) -> str:
    """The runtime setting, lower-cased; None or '' is the server's default ("auto").

    Raises:
        ValueError: not one of SETTINGS (the message names the variable and the choices).
    """
    setting = (value or SERVER_DEFAULT).strip().lower()
    if setting not in SETTINGS:
        raise ValueError(f"{RUNTIME_VARIABLE}={value!r} is not a serving runtime: use one of {', '.join(SETTINGS)}")
    return setting


class OnnxRuntimeLogits:
    """An exported network under ONNX Runtime's CPU provider: images (N x C x ...) to logits, as a torch tensor.

    Args:
        graph: the .onnx file (export_onnx).
        threads: intra-op threads (the worker's torch threads).
    """

    name = "onnxruntime"

    def __init__(self, graph: str | os.PathLike[str], *, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(os.fspath(graph), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])


def export_onnx(network: torch.nn.Module, input_shape: Sequence[int], target: str | os.PathLike[str]) -> Path:
    """Export an eval-mode network to ONNX at target, batch size dynamic; written to a temporary name and renamed.

    Args:
        network: the network (its weights loaded).
        input_shape: one sample's shape, channels first (C x H x W).
        target: the .onnx file to write.
    """
    path = Path(target)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    example = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():  # the exporter warns that it is the legacy one: known, see the module docstring
        warnings.simplefilter("ignore")
        torch.onnx.export(network.eval(), (example,), str(partial), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(partial, path)
    return path


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """This user's folder for exported graphs (mode 0700), under root or the temp dir.

    Raises:
        PermissionError: the folder exists but another user owns it, or others may write to it.
    """
    folder = Path(root or tempfile.gettempdir()) / f"{CACHE_NAME}-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    status = folder.stat()
    if status.st_uid != os.getuid() or status.st_mode & 0o022:
        raise PermissionError(f"{folder} is not this user's own folder (owner {status.st_uid}, mode "
                              f"{oct(status.st_mode & 0o777)}): remove it, or set {RUNTIME_VARIABLE}=pytorch")
    return folder


def cached_graph(network: torch.nn.Module, input_shape: Sequence[int], *, weights_digest: str,
                 folder: str | os.PathLike[str] | None = None) -> Path:
    """The network's ONNX graph from the cache, exported first when absent (one process exports; others wait)."""
    target = cache_dir(folder) / graph_name(network, input_shape, weights_digest=weights_digest)
    with _locked(target.with_suffix(".lock")):
        if not target.is_file():
            started = time.perf_counter()
            export_onnx(network, input_shape, target)
            log.info("exported the network to ONNX in %.1f s (cached for this machine's later starts)",
                     time.perf_counter() - started)
    return target


def graph_name(network: torch.nn.Module, input_shape: Sequence[int], *, weights_digest: str) -> str:
    """The cached graph's file name: a digest of the weights, the network's class, the input shape, torch's version
    and the opset (anything that changes the graph changes the name)."""
    key = f"{weights_digest}|{type(network).__name__}|{tuple(input_shape)}|{torch.__version__}|{OPSET}"
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".onnx"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (the weights), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1024**2), b""):
            digest.update(piece)
    return digest.hexdigest()


def check_inputs(input_shape: Sequence[int], count: int = CHECK_INPUTS) -> torch.Tensor:
    """The self-check's synthetic batch: seeded uniform noise in [0, 1] (the range of preprocessed images), and a
    smooth ramp, so that both textured and flat inputs are compared."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, *input_shape, generator=generator)
    images[0] = torch.linspace(0, 1, images[0].numel()).reshape(images[0].shape)
    return images


def compare(network: torch.nn.Module, logits: Logits, images: torch.Tensor, *, temperature: float = 1.0) -> float:
    """The largest probability difference between PyTorch and a runtime on images (softmax of logits / temperature).

    Raises:
        RuntimeMismatch: a label (argmax) differs, a value is not finite, or the difference exceeds TOLERANCE.
    """
    with torch.inference_mode():
        expected = torch.softmax(network(images).float() / temperature, dim=1)
        got = torch.softmax(torch.as_tensor(logits(images)).float() / temperature, dim=1)
    if got.shape != expected.shape or not bool(torch.isfinite(got).all()):
        raise RuntimeMismatch(f"answers of shape {tuple(got.shape)} (finite: {bool(torch.isfinite(got).all())}); "
                              f"PyTorch's are {tuple(expected.shape)}")
    difference = float((got - expected).abs().max())
    if not torch.equal(got.argmax(1), expected.argmax(1)):
        raise RuntimeMismatch(f"labels differ from PyTorch's on the self-check (largest difference {difference:.2e})")
    if difference > TOLERANCE:
        raise RuntimeMismatch(f"probabilities differ from PyTorch's by up to {difference:.2e} (> {TOLERANCE:g})")
    return difference


def one_file_ms(logits: Logits, input_shape: Sequence[int], runs: int = TIMED_RUNS) -> float:
    """Median milliseconds of a one-file forward pass, after one warm-up."""
    image = check_inputs(input_shape, 1)
    with torch.inference_mode():
        logits(image)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            logits(image)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def candidate(name: str, network: torch.nn.Module, input_shape: Sequence[int], *, weights_digest: str,
              folder: str | os.PathLike[str] | None = None) -> Logits:
    """The named runtime over this network (pytorch: the network itself)."""
    if name == "pytorch":
        return network
    if name == "onnxruntime":
        graph = cached_graph(network, input_shape, weights_digest=weights_digest, folder=folder)
        return OnnxRuntimeLogits(graph, threads=torch.get_num_threads())
    raise ValueError(f"no runtime {name!r}: use one of {', '.join(RUNTIMES)}")


def choose(network: torch.nn.Module, input_shape: Sequence[int], *, setting: str, weights_digest: str,
           temperature: float = 1.0, folder: str | os.PathLike[str] | None = None,
           make: Callable[..., Logits] = candidate) -> tuple[str, Logits | None, dict[str, Any]]:
    """Pick the runtime for a loaded 2-D network on the CPU (module docstring), with one log line saying which and why.

    Args:
        network: the PyTorch network, eval mode, on the CPU.
        input_shape: one sample, channels first (1 x H x W).
        setting: one of SETTINGS (check_setting).
        weights_digest: identifies the weights (file_digest of models/model.pt): the graph cache's key.
        temperature: the Predictor's, so that the self-check compares the probabilities it will serve.
        folder: where the graph cache lives (default the temp dir).
        make: builds a runtime by name (candidate); tests pass a broken one.

    Returns:
        (name, logits or None for PyTorch, report): report holds the setting, each candidate's one-file milliseconds
        or its reason for being dropped, and the chosen runtime's largest probability difference.
    """
    setting = check_setting(setting)
    names = list(RUNTIMES[1:]) if setting == "auto" else [] if setting == "pytorch" else [setting]
    report: dict[str, Any] = {"setting": setting, "dropped": {}, "one_file_ms": {}, "difference": {}}
    passed: dict[str, Logits] = {}
    images = check_inputs(input_shape)
    for name in names:
        try:
            logits = make(name, network, input_shape, weights_digest=weights_digest, folder=folder)
            report["difference"][name] = compare(network, logits, images, temperature=temperature)
            passed[name] = logits
        except Exception as exc:  # an import, export or session error, or a mismatch: PyTorch serves instead
            report["dropped"][name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if setting == "auto" and passed:
        timed: dict[str, Logits] = {"pytorch": network, **passed}
        for name, logits in timed.items():
            report["one_file_ms"][name] = round(one_file_ms(logits, input_shape), 2)
        chosen = min(report["one_file_ms"], key=report["one_file_ms"].get)
    else:
        chosen = next(iter(passed), "pytorch")
    report["runtime"] = chosen
    _log_choice(report)
    return chosen, (None if chosen == "pytorch" else passed[chosen]), report


def _log_choice(report: dict[str, Any]) -> None:
    chosen, dropped = report["runtime"], report["dropped"]
    if dropped:
        log.warning("serving runtime: %s; %s fell back to PyTorch (%s)", chosen, ", ".join(dropped),
                    "; ".join(f"{k}: {v}" for k, v in dropped.items()))
    else:
        timings = ", ".join(f"{k} {v:g} ms" for k, v in report["one_file_ms"].items())
        log.info("serving runtime: %s (%s=%s%s)", chosen, RUNTIME_VARIABLE, report["setting"],
                 f"; one-file forward {timings}" if timings else "")

"""Heat maps: where in the image the network found the evidence for the class it predicted (2-D bundles).

    explainer = Explainer.from_bundle("MODEL")          # the bundle's own PyTorch network: heat maps need gradients
    found = explainer.explain("a.dcm", class_index=1)  # Explanation: heatmap on the file's Rows x Columns
    Path("0001.png").write_bytes(found.overlay_png())   # the image as the network saw it, the heat map over it

What enters: a DICOM file (path or bytes) and the class to explain (the predicted one: callers pass the index of the
label their predictor answered, whatever runtime answered it). What leaves: `Explanation.heatmap`, float32 in [0, 1],
on the file's own grid (Rows x Columns: the map is computed on the network's grid and resized back, the inverse of
training.dataset.dicom's resize, which does not keep the aspect ratio), and an overlay PNG of pixels alone (no text:
nothing of the file's header is drawn or stored in it).

Methods (METHODS; DEFAULT_METHOD is the one that found the lesions best here):
- "smoothgrad": smoothed input gradients (SmoothGrad, Smilkov et al. 2017) computed in one batched pass of
  SMOOTHGRAD_SAMPLES noisy copies, magnitude averaged, then blurred a little (a lesion is a region, not its rim).
  MONAI's SmoothGrad does the same one copy at a time (measured below as "monai-smoothgrad"): this batched form is
  what makes it cheap enough to serve.
- "occlusion": MONAI's OcclusionSensitivity: how much the class's probability falls when each patch is hidden.
- "gradcam", "gradcam++": MONAI's GradCAM and GradCAMpp on the last feature layer of the network.

Measured on 2026-12-07 (2 CPU cores, tests/training/test_explain.py's set: DenseNet121 trained by the job at 64x64 on
synthetic 128x128 images; hit: the heat map's maximum within one lesion radius of the lesion's centre, over the
correctly classified abnormal test images):
- "smoothgrad" (16 noisy copies, the positive part of the mean gradient, blurred): 39 of 39 (100 %), 0.29 s an image;
  the same model trained on shuffled labels: 2 of 28 (7 %). With the gradient's magnitude instead of its positive
  part (what MONAI's SmoothGrad computes) 38 of 39, but the shuffled-label model reached 20 of 28 (71 %): magnitude
  marks any bright edge, the sign marks what raises the class's score. MONAI's SmoothGrad (magnitude, one copy at
  a time): 38 of 39, 13 s an image.
- "occlusion" (8 px patches, MONAI's default overlap 0.6): 5 of 5 tried, about 50 s an image on a machine loaded
  eight-fold (FACTS.md: about 7 s idle); too slow to serve, kept for a second opinion.
- "gradcam" and "gradcam++" (DenseNet121's denseblock4, 2x2 at 64x64): 0 of 39 (the maximum on the border), 1.5 s.
The machine was shared with other jobs while measuring (load 2 to 8 on 2 cores): read the seconds as ratios.

3-D bundles: training/serving/explain_volumes.py computes the map of a series (smoothgrad) and maps it back through
read_volume's orientation and resampling to the original slices; `python -m training.predict --explain` writes it.
The server explains 2-D models only.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.dataset.dicom import Source, Window, preprocess, read_dataset
from training.dataset.grayscale import resize
from training.serving.request import DicomInput, InvalidInput

METHODS = ("smoothgrad", "occlusion", "gradcam", "gradcam++")
DEFAULT_METHOD = "smoothgrad"
SMOOTHGRAD_SAMPLES = 16  # noisy copies in one batch: more smooths the map further, at a proportional cost
SMOOTHGRAD_NOISE = 0.15  # the noise's standard deviation as a share of the image's range (Smilkov et al.'s 10-20 %)
BLUR_SIGMA = 0.02  # the blur of the gradient map, as a share of the network's image size (about 1.3 px at 64)
OCCLUSION_MASK = 8  # pixels of the hidden patch on the network's grid: about a small lesion's diameter at 64x64
MAX_EXPLAIN_FILES = 8  # files a request may ask heat maps for: about 2 s at the measured cost, 6 MB of answer at most
MAX_PREDICT_EXPLANATIONS = 10_000  # files `python -m training.predict --explain` explains in one run
CUSTOM_ATTRIBUTES = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"  # the WSGI name of SageMaker's custom attributes header
OVERLAY_MIN_SIDE = 256  # the overlay PNG is the network's grid enlarged by a whole factor to at least this many pixels


@dataclass(frozen=True)
class Explanation:
    """One file's heat map.

    Attributes:
        heatmap: float32 rows x columns in [0, 1], on the file's own grid (its Rows x Columns).
        network_heatmap: the same on the network's grid (H x W of the bundle's image_size).
        image: what the network saw: float32 H x W in [0, 1].
        class_index: the class explained.
    """

    heatmap: np.ndarray
    network_heatmap: np.ndarray
    image: np.ndarray
    class_index: int

    def overlay_png(self) -> bytes:
        """The network's image in gray with the heat map over it (matplotlib's 'inferno', opaque where it is hot)."""
        return overlay_png(self.image, self.network_heatmap)


class Explainer:
    """A bundle's PyTorch network with its preprocessing, computing heat maps by one of METHODS.

    Args:
        network: the trained 2-D network (put in eval mode here).
        image_size: (H, W) the network takes.
        window: (center, width) overriding the files' window, as in training; None: each file's own.
        method: one of METHODS.
        device: where the network runs.
    """

    def __init__(self, network: torch.nn.Module, *, image_size: tuple[int, ...], window: Window | None = None,
                 method: str = DEFAULT_METHOD, device: torch.device | str = "cpu") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if len(image_size) not in (2, 3):
            raise ValueError(f"image_size must be (H, W) or (D, H, W); got {tuple(image_size)}")
        if len(image_size) == 3 and method != "smoothgrad":
            raise ValueError(f"a 3-D bundle's heat maps are computed by smoothgrad only; got {method!r}")
        self.network = network.eval()
        self.image_size = tuple(int(v) for v in image_size)  # 3-D: training/serving/explain_volumes.py
        self.window = window
        self.method = method
        self.device = torch.device(device)
        self._map: Callable[[torch.Tensor, int], torch.Tensor] = _METHOD_MAPS[method](self.network)

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike[str], *, method: str = DEFAULT_METHOD,
                    device: str = "cpu") -> Explainer:
        """The bundle's network (models/model.pt into our own MONAI network: training.job.bundle.load_network, read as
        data) and preprocessing: whatever runtime answers predictions, heat maps come from this PyTorch network.

        Raises:
            training.job.bundle.BundleError: a field of the bundle fails its check.
            ValueError: a 3-D bundle, or an unknown method.
        """
        from training.job.bundle import load_network, read_bundle

        spec = read_bundle(bundle_dir)
        network = load_network(spec, device=device)
        return cls(network, image_size=spec.image_size, window=spec.window, method=method, device=device)

    def explain(self, source: Source, class_index: int, *, name: str | None = None) -> Explanation:
        """The heat map of one DICOM file for a class.

        Args:
            source: a path or the file's bytes.
            class_index: the class explained (the predicted one).
            name: how errors name the file (default its path, or '<bytes>').

        Raises:
            training.dataset.dicom.DicomReadError: the file cannot become an image (named).
        """
        if len(self.image_size) != 2:
            raise ValueError("this explainer is a 3-D bundle's: explain series with "
                             "training.serving.explain_volumes.explain_series")
        ds = read_dataset(source, name=name)
        label = name or (os.fspath(source) if isinstance(source, str | os.PathLike) else "<bytes>")
        image = preprocess(ds, image_size=self.image_size, window=self.window, name=label, source=source)
        rows, columns = int(ds.Rows), int(ds.Columns)
        return self.explain_image(image[0], class_index, grid=(rows, columns))

    def heat(self, tensor: torch.Tensor, class_index: int) -> torch.Tensor:
        """The raw map of a preprocessed batch of one (1 x 1 x H x W, or 1 x 1 x D x H x W) for a class."""
        return self._map(tensor, int(class_index))

    def explain_image(self, image: np.ndarray, class_index: int, *, grid: tuple[int, int]) -> Explanation:
        """The heat map of a preprocessed image (H x W in [0, 1]), resized to `grid` (the file's rows x columns)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
        raw = self.heat(tensor, class_index).detach().float().cpu().numpy().reshape(self.image_size)
        small = unit(raw)
        return Explanation(unit(resize(small, grid)), small, np.asarray(image, np.float32), int(class_index))


def unit(values: np.ndarray) -> np.ndarray:
    """Values scaled to [0, 1] by their minimum and maximum (all zeros when flat or not finite), float32."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros_like(values)
    return ((values - low) / (high - low)).astype(np.float32)


def overlay_png(image: np.ndarray, heat: np.ndarray) -> bytes:
    """A PNG of `image` (H x W in [0, 1], gray) with `heat` (H x W in [0, 1]) blended over it: pixels alone."""
    from matplotlib import colormaps
    from PIL import Image

    factor = max(1, -(-OVERLAY_MIN_SIDE // max(image.shape)))
    gray = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2)
    colour = colormaps["inferno"](np.clip(heat, 0.0, 1.0))[..., :3]
    alpha = 0.6 * np.clip(heat, 0.0, 1.0)[..., None]
    blended = (1.0 - alpha) * gray + alpha * colour
    big = np.kron(np.rint(blended * 255.0).astype(np.uint8), np.ones((factor, factor, 1), dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(big, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_explanations(explainer: Explainer, files: Sequence[Path], predictions: Sequence[dict[str, Any]],
                       class_names: Sequence[str], out: Path) -> None:
    """For each file and its prediction, OUT/<n>.npy (the heat map of the predicted class on the file's grid) and
    OUT/<n>.png (the overlay), n its position from 0001; each prediction gains "heatmap" and "overlay", their paths.
    Names are positions only: nothing of a file's name, UID or patient reaches OUT."""
    check_count(len(files))
    out.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(files))))
    for number, (path, prediction) in enumerate(zip(files, predictions, strict=True), start=1):
        found = explainer.explain(path, list(class_names).index(prediction["label"]))
        stem = out / f"{number:0{digits}d}"
        np.save(stem.with_suffix(".npy"), found.heatmap)
        stem.with_suffix(".png").write_bytes(found.overlay_png())
        prediction["heatmap"], prediction["overlay"] = str(stem.with_suffix(".npy")), str(stem.with_suffix(".png"))


def check_count(files: int) -> None:
    """Refuse more than MAX_PREDICT_EXPLANATIONS files to explain in one run (checked before anything is predicted).

    Raises:
        InvalidInput: naming the limit.
    """
    if files > MAX_PREDICT_EXPLANATIONS:
        raise InvalidInput(f"{files} files to explain; at most {MAX_PREDICT_EXPLANATIONS} in one run "
                           "(training.serving.explain.MAX_PREDICT_EXPLANATIONS): split them")


def requested(attributes: str | None, data: Sequence[DicomInput], model: Any) -> bool:
    """Whether a request asks for heat maps (SageMaker's custom attributes, a comma-separated key=value list, hold
    explain=true), checked before any work: at most MAX_EXPLAIN_FILES files, and a 2-D model.

    Raises:
        InvalidInput: 400 for an explain value other than true or false, too many files, or a 3-D model.
    """
    pairs = (item.split("=", 1) for item in (attributes or "").split(",") if "=" in item)
    values = [value.strip().lower() for key, value in pairs if key.strip().lower() == "explain"]
    if not values or values[-1] == "false":
        return False
    if values[-1] != "true":
        raise InvalidInput("the custom attribute explain must be true or false (X-Amzn-SageMaker-Custom-Attributes: "
                           "explain=true)")
    if getattr(model, "spatial_dims", 2) != 2:
        raise InvalidInput("the server computes heat maps (explain=true) for 2-D models; for a series use "
                           "python -m training.predict MODEL SERIES_DIR --explain OUTDIR")
    if len(data) > MAX_EXPLAIN_FILES:
        raise InvalidInput(f"explain=true with {len(data)} files: heat maps for at most {MAX_EXPLAIN_FILES} files a "
                           "request (training.serving.explain.MAX_EXPLAIN_FILES); send the others in more requests")
    return True


def attach(explainer: Explainer, data: Sequence[DicomInput], predictions: list[dict[str, Any]],
           class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Each prediction with "overlay_png" (base64 PNG) and "heatmap" ({"rows", "columns", "uint8": base64 of the map
    on the network's grid, row-major, 255 the hottest}): small beside the overlay, whatever the file's size."""
    for item, prediction in zip(data, predictions, strict=True):
        found = explainer.explain(item.load(), list(class_names).index(prediction["label"]), name=item.name)
        rows, columns = found.network_heatmap.shape
        heat = np.rint(found.network_heatmap * 255.0).astype(np.uint8).tobytes()
        prediction["overlay_png"] = base64.b64encode(found.overlay_png()).decode("ascii")
        prediction["heatmap"] = {"rows": rows, "columns": columns, "uint8": base64.b64encode(heat).decode("ascii")}
    return predictions


@functools.lru_cache(maxsize=1)
def for_bundle(bundle_dir: str) -> Explainer:
    """The server's explainer, loaded on the first request that asks (plain predictions never pay for it)."""
    return Explainer.from_bundle(bundle_dir)


def _smoothgrad(network: torch.nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def heat(image: torch.Tensor, index: int) -> torch.Tensor:
        generator = torch.Generator(device=image.device).manual_seed(0)  # the same file gives the same map
        spread = SMOOTHGRAD_NOISE * float(image.max() - image.min() or 1.0)
        noise = torch.randn((SMOOTHGRAD_SAMPLES, *image.shape[1:]), generator=generator, device=image.device)
        noisy = (image + spread * noise).requires_grad_(True)
        with torch.enable_grad():
            network(noisy)[:, index].sum().backward()
        assert noisy.grad is not None
        evidence = noisy.grad.mean(dim=0, keepdim=True).clamp(min=0)  # where brighter raises the class's score
        return _blur(evidence.sum(dim=1, keepdim=True))

    return heat


def _occlusion(network: torch.nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    from monai.visualize import OcclusionSensitivity

    occlusion = OcclusionSensitivity(network, mask_size=OCCLUSION_MASK, n_batch=64, verbose=False)

    def heat(image: torch.Tensor, index: int) -> torch.Tensor:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI 1.6 indexes with a list (a deprecation warning for each patch)
            probabilities, _ = occlusion(image)  # 1 x classes x H x W: each class's probability with a patch hidden
        return -probabilities[:, index]  # the patch whose hiding lowers the class's probability most is the evidence

    return heat


def _gradcam(plus: bool) -> Callable[[torch.nn.Module], Callable[[torch.Tensor, int], torch.Tensor]]:
    def build(network: torch.nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
        from monai.visualize import GradCAM, GradCAMpp

        cam = (GradCAMpp if plus else GradCAM)(network, target_layers=_last_feature_layer(network))
        return lambda image, index: cam(image.clone(), class_idx=index)

    return build


def _last_feature_layer(network: torch.nn.Module) -> str:
    """The module GradCAM reads: DenseNet's last dense block, ResNet's layer4, EfficientNet's last block."""
    names = [name for name, _ in network.named_modules()]
    for candidate in ("features.denseblock4", "layer4", "_blocks"):
        if candidate in names:
            return candidate if candidate != "_blocks" else max((n for n in names if n.startswith("_blocks.")
                                                                 and n.count(".") == 1), key=_block_number)
    raise ValueError(f"no feature layer known for GradCAM in {type(network).__name__}: use method 'smoothgrad'")


def _block_number(name: str) -> int:
    return int(name.split(".")[1])


def _blur(heat: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur of BLUR_SIGMA x the image size (MONAI's GaussianFilter)."""
    from monai.networks.layers import GaussianFilter

    dims = heat.dim() - 2  # 2 for images, 3 for volumes
    sigma = BLUR_SIGMA * max(heat.shape[-dims:])
    return GaussianFilter(spatial_dims=dims, sigma=sigma)(heat.detach())


_METHOD_MAPS: dict[str, Callable[[torch.nn.Module], Callable[[torch.Tensor, int], Any]]] = {
    "smoothgrad": _smoothgrad,
    "occlusion": _occlusion,
    "gradcam": _gradcam(False),
    "gradcam++": _gradcam(True),
}

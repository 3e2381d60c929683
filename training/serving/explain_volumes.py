"""Heat maps of 3-D bundles: the map of a series, computed on the network's grid and mapped back to the original
slices (issue 22 item 1 for volumes).

    found = explain_series(Explainer.from_bundle("MODEL"), series, class_index)  # series: training.dataset.series
    found.heatmap        # float32 in [0, 1], (slices, rows, columns): the series' slices in slice-position order

The network sees training.dataset.volume.read_volume's grid: the slices oriented to (superior, posterior, left),
resampled at one isotropic spacing and zero padded. The way back uses the two affines read_volume returns: each
source voxel (slice k, row, column) is a point in patient space (source_affine), which is a continuous voxel of the
network's grid (the inverse of `affine`); the map is sampled there by trilinear interpolation, one slice at a time
(memory: one slice of points). The orientation (axes permuted and flipped) and the resampling are undone together,
since both are in the affines; nothing is assumed about the series' orientation.

Only "smoothgrad" runs in 3-D (training/serving/explain.py: GradCAM missed every lesion in 2-D, and occlusion would
take hours a volume). The overlay PNG is the network's slice (along depth) where the map is hottest, the image as
the network saw it with the map over it, pixels alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.dataset.series import Series
from training.dataset.volume import Volume, read_volume
from training.serving.explain import Explainer, overlay_png, unit


@dataclass(frozen=True)
class VolumeExplanation:
    """One series' heat map.

    Attributes:
        heatmap: float32 (slices, rows, columns) in [0, 1], on the series' own grid, slices in slice-position order.
        network_heatmap: float32 (D, H, W) on the network's grid.
        image: the volume the network saw, float32 (D, H, W) in [0, 1].
        class_index: the class explained.
    """

    heatmap: np.ndarray
    network_heatmap: np.ndarray
    image: np.ndarray
    class_index: int

    @property
    def hottest_slice(self) -> int:
        """The network's slice (along depth) that holds the map's maximum."""
        return int(np.unravel_index(int(np.argmax(self.network_heatmap)), self.network_heatmap.shape)[0])

    def overlay_png(self) -> bytes:
        """The hottest network slice in gray with the map over it."""
        depth = self.hottest_slice
        return overlay_png(self.image[depth], self.network_heatmap[depth])


def explain_series(explainer: Explainer, series: Series, class_index: int) -> VolumeExplanation:
    """The heat map of one assembled series for a class, on the series' own slices.

    Raises:
        training.dataset.volume.VolumeError: the series cannot be decoded (named by position).
        ValueError: the explainer is not a 3-D one.
    """
    if len(explainer.image_size) != 3:
        raise ValueError("explain_series needs a 3-D bundle's explainer (image_size D, H, W)")
    volume = read_volume(series, size=explainer.image_size, window=explainer.window)
    image = volume.array.astype(np.float32) / 255.0
    tensor = torch.from_numpy(image)[None, None].to(explainer.device)
    small = unit(explainer.heat(tensor, int(class_index)).detach().float().cpu().numpy().reshape(image.shape))
    return VolumeExplanation(to_source(small, volume), small, image, int(class_index))


def to_source(heat: np.ndarray, volume: Volume) -> np.ndarray:
    """A map on the network's grid (D, H, W) sampled at every source voxel: (slices, rows, columns), float32.

    Args:
        heat: the map on `volume.array`'s grid.
        volume: read_volume's result, whose affines relate the two grids.
    """
    slices, rows, columns = volume.source_shape
    to_output = np.linalg.solve(volume.affine, volume.source_affine)  # source index -> output index
    grid = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    sizes = np.array(heat.shape, dtype=np.float64)
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    out = np.empty((slices, rows, columns), dtype=np.float32)
    for k in range(slices):
        points = np.stack([np.full(r.size, k), r.ravel(), c.ravel(), np.ones(r.size)])
        d, h, w = (to_output @ points)[:3]
        # grid_sample's (x, y, z) are (w, h, d), each in [-1, 1] across the voxel centres (align_corners=True)
        normalized = np.stack([2 * w / (sizes[2] - 1) - 1, 2 * h / (sizes[1] - 1) - 1, 2 * d / (sizes[0] - 1) - 1],
                              axis=-1).reshape(1, 1, rows, columns, 3)
        sampled = torch.nn.functional.grid_sample(grid, torch.from_numpy(normalized).float(), mode="bilinear",
                                                  padding_mode="zeros", align_corners=True)
        out[k] = sampled[0, 0, 0].numpy()
    return np.clip(out, 0.0, 1.0)

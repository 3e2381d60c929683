"""A MONAI transform around `training.dataset.dicom.load_image`, for MONAI pipelines (inference, bundles, notebooks).

It adds nothing to the preprocessing: the same function produces the training cache (training/dataset/prepare.py) and
this transform's output, so a model sees identical inputs in both. Kept apart from training/dataset/dicom.py because
importing MONAI costs about 2.5 s, which decoding processes should not pay.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import Transform

from training.dataset.dicom import Source, Window, load_image


class LoadDicomImage(Transform):
    """Read a DICOM file (path, bytes or file object) into a float32 tensor (1, H, W) in [0, 1].

    Args:
        image_size: (H, W), the training resolution of the model.
        window: (center, width) overriding the file's window, as used in training; None: the file's window, else
            percentile scaling.
    """

    def __init__(self, image_size: Sequence[int], window: Window | None = None) -> None:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (H, W); got {tuple(image_size)}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.window = window

    def __call__(self, source: Source) -> torch.Tensor:  # type: ignore[override]
        """Load one image.

        Args:
            source: a path, the file's bytes, or a binary file object.

        Returns:
            float32 tensor (1, H, W).

        Raises:
            training.dataset.dicom.DicomReadError: the file cannot become an image.
        """
        return torch.from_numpy(load_image(source, image_size=self.image_size, window=self.window))


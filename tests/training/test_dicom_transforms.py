"""training/dicom_transforms.py: the MONAI transform gives exactly what load_image gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from tests.training.dicom_builders import gradient, write_image
from training.dataset.dicom import load_image
from training.dicom_transforms import LoadDicomImage


@pytest.mark.parametrize("window", [None, (0.0, 800.0)])
def test_array_transform_matches_load_image(tmp_path: Path, window: tuple[float, float] | None) -> None:
    path = write_image(tmp_path / "a.dcm", gradient(64, 64), rescale=(1.0, -1024.0), window=(40.0, 400.0))
    out = Compose([LoadDicomImage((40, 32), window)])(str(path))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 40, 32) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), load_image(path, image_size=(40, 32), window=window))


def test_image_size_is_checked() -> None:
    with pytest.raises(ValueError, match="image_size"):
        LoadDicomImage((96,))

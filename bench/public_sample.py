"""The public sample's data pipeline and training loop, reproduced as the benchmarks' baseline.

Reproduces aws-samples/annotate-medical-images-in-dicom-server-and-build-ml-models-on-amazon-sagemaker,
notebook/source/monai_dicom.py (commit 676562dabbae5ae551b850c37f9c1624715caa35), `_get_train_data_loader` and
`train`: file list and labels from meta-data.json; per item and every epoch MONAI LoadImage (ITK reads the DICOM),
ScaleIntensity, RandRotate(range_x=15, prob=0.5, keep_size=True), RandFlip(spatial_axis=0, prob=0.5),
RandZoom(0.9-1.1, prob=0.5, keep_size=True), Resize((108, 96)), ToTensor; a torch DataLoader (batch 100, shuffled;
no workers on the CPU, 10 workers with pinned memory on a GPU); MONAI densenet121 (2-D, 1 channel), Adam at 1e-5,
cross-entropy, and a step that reads `loss.item()` twice and logs every step.

What differs from the file, and why (none of it changes the work done per image or per step):
- LoadImage(image_only=True, reverse_indexing=True): with MONAI 1.6 the ITK reader returns a 2-D DICOM as
  (H, W, 1) unless reverse_indexing=True; (1, H, W) is the channel-first shape the sample's transforms expect.
- The random transforms are seeded (`set_random_state`), so runs repeat; the sample leaves them unseeded.
  MONAI reads RandRotate's range_x as radians: the sample's 15 rotates by any angle, reproduced as written.
- Its unused imports (torchvision, PIL) and the distributed branch are left out.
- `evaluate` is added (the sample has no validation): the same transforms without the random ones, for the
  time-to-accuracy figure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import densenet121
from monai.transforms import Compose, LoadImage, RandFlip, RandRotate, RandZoom, Resize, ScaleIntensity, ToTensor
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

SPATIAL_SIZE = (108, 96)  # the sample's Resize
LEARNING_RATE = 1e-5  # the sample's Adam
BATCH_SIZE = 100  # the sample's --batch-size default
CUDA_LOADER_KWARGS: dict[str, Any] = {"num_workers": 10, "pin_memory": True}  # the sample's kwargs when use_cuda


def require_itk() -> None:
    """The sample's LoadImage reads DICOM through ITK; without it MONAI would silently pick another reader.

    Raises:
        RuntimeError: itk is not installed; the message says how to install it.
    """
    try:
        import itk  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "the public sample reads DICOM through ITK (its requirements.txt: monai, itk, pillow); install it with "
            "`make setup` (requirements-dev.txt pins itk) or `pip install itk`"
        ) from None


def file_list(data_dir: str | Path) -> tuple[list[str], list[int], list[str]]:
    """The sample's file list and labels, parsed from data_dir/meta-data.json exactly as it does.

    Args:
        data_dir: a directory of `<instance id>.dcm` files and meta-data.json (the aws-samples layout;
            `python -m training.synthetic OUT --format metadata-json` writes one).

    Returns:
        (files, label indices, class names).
    """
    root = str(data_dir)
    with open(root + "/meta-data.json") as f:
        manifest = json.load(f)
        class_names = list(json.loads(manifest[0]["annotations"][0]["annotationData"]["content"])["disease"].keys())
    image_file_list, image_label_list = [], []
    for record in manifest:
        label_dict = json.loads(json.loads(record["annotations"][0]["annotationData"]["content"])["labels"])
        instance = str([label_dict["imageurl"]]).split("/file")[0].split("instances/")[1]
        image_file_list.append(root + "/" + instance + ".dcm")
        image_label_list.append(class_names.index(label_dict["label"][0]))
    return image_file_list, image_label_list, class_names


class DICOMDataset(Dataset):
    """The sample's dataset: transforms(file), label."""

    def __init__(self, image_files: Sequence[str], labels: Sequence[int], transforms: Compose) -> None:
        self.image_files = image_files
        self.labels = labels
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.image_files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transforms(self.image_files[index]), self.labels[index]


def train_transforms(seed: int) -> Compose:
    """The sample's training transforms (seeded here, see the module docstring)."""
    transforms = Compose(
        [
            LoadImage(image_only=True, reverse_indexing=True),
            ScaleIntensity(),
            RandRotate(range_x=15, prob=0.5, keep_size=True),
            RandFlip(spatial_axis=0, prob=0.5),
            RandZoom(min_zoom=0.9, max_zoom=1.1, prob=0.5, keep_size=True),
            Resize(spatial_size=SPATIAL_SIZE),
            ToTensor(),
        ]
    )
    transforms.set_random_state(seed=seed)
    return transforms


def eval_transforms() -> Compose:
    """Added for validation: the training transforms without the random ones."""
    return Compose(
        [
            LoadImage(image_only=True, reverse_indexing=True),
            ScaleIntensity(),
            Resize(spatial_size=SPATIAL_SIZE),
            ToTensor(),
        ]
    )


def train_loader(
    files: Sequence[str], labels: Sequence[int], *, batch_size: int = BATCH_SIZE, seed: int = 1, cuda: bool = False
) -> DataLoader:
    """The sample's `_get_train_data_loader` (not distributed): shuffled, workers and pinned memory on CUDA only."""
    kwargs = CUDA_LOADER_KWARGS if cuda else {}
    dataset = DICOMDataset(files, labels, train_transforms(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, **kwargs)


def build_model(num_class: int, device: torch.device) -> torch.nn.Module:
    """The sample's network: MONAI densenet121, 2-D, one input channel."""
    model: torch.nn.Module = densenet121(spatial_dims=2, in_channels=1, out_channels=num_class).to(device)
    return model


def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The sample's optimizer: Adam at 1e-5."""
    return torch.optim.Adam(model.parameters(), LEARNING_RATE)


def train_epoch(
    model: torch.nn.Module,
    train_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_function: torch.nn.Module,
    device: torch.device,
) -> tuple[float, int]:
    """One epoch of the sample's loop, statement for statement.

    Returns:
        (mean training loss, images trained on).
    """
    model.train()
    epoch_loss = 0.0
    step = 0
    images = 0
    for batch_data in train_loader:
        step += 1
        inputs, labels = batch_data[0].to(device), batch_data[1].to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_function(outputs, labels)
        loss.backward()
        optimizer.step()
        epoch_loss += loss.item()
        logger.info(f"{step}/{len(train_loader.dataset) // train_loader.batch_size}, train_loss: {loss.item():.4f}")  # type: ignore[arg-type,operator]
        images += len(labels)
    epoch_loss /= max(step, 1)
    return epoch_loss, images


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    files: Sequence[str],
    labels: Sequence[int],
    device: torch.device,
    *,
    batch_size: int = BATCH_SIZE,
    cuda: bool = False,
) -> float:
    """Added for validation: accuracy of argmax on files (the sample has no validation pass).

    Returns:
        The share of files classified correctly.
    """
    model.eval()
    loader = DataLoader(
        DICOMDataset(files, labels, eval_transforms()), batch_size=batch_size, **(CUDA_LOADER_KWARGS if cuda else {})
    )
    correct = 0
    for inputs, targets in loader:
        predicted = model(inputs.to(device)).argmax(dim=1)
        correct += int((predicted.cpu() == targets).sum())
    return correct / max(len(files), 1)

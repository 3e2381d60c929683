"""The notebook's 3-D setting (an image_size of three values): CT series in, a few slices each out, with the answer.

    DATA_DIR, DATASET_NAME, HYPERPARAMETERS, VOLUMES = demo_data(...)  # the data cell: the mode, the synthetic set
    data = make_volume_demo(WORK_DIR / "volumes")            # synthetic CT series: train/ and test/ (other patients)
    show_volume_samples(DATA_DIR)                             # a few series of each class, five slices each
    held_out = held_out_series(DATA_DIR, 4)                   # (series folder, true label) of the test channel
    predictions = predict_series_folders(predictor, [folder for folder, _ in held_out])
    print(series_table(predictions, truth))                   # one line a series: label, probability, true label
    show_series_predictions(predictions, truth)               # each predicted series: slices, label, probability

A series is shown as the network sees it: training/dataset/volume.py's `read_volume` (slices ordered along the slice
normal, the window applied, resampled to a display grid), slices picked evenly through its depth. Nothing here prints
or draws an identifier: series go by their folder, never by a UID. As in launcher/notebook.py, only the standard
library is imported with the module; each function imports what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The 3-D defaults of the notebook under its image_size, e.g. (32, 64, 64): a network that takes any depth, and a
# batch a CPU instance trains in minutes.
VOLUME_HYPERPARAMETERS: dict[str, Any] = {"network": "resnet18", "batch_size": 8}
DISPLAY_SIZE = (32, 128, 128)  # (D, H, W) a series is resampled to for display
SLICES_SHOWN = 5
ENDPOINT_PAYLOAD_BYTES = 6 * 1024 * 1024  # SageMaker's real-time payload limit (training/serving/volumes.py)


def demo_data(data_dir: str | os.PathLike[str] | None, dataset_name: str, hyperparameters: Mapping[str, Any], *,
              work_dir: str | os.PathLike[str], images: tuple[int, int]) -> tuple[Path, str, dict[str, Any], bool]:
    """The notebook's data cell: the data folder, its dataset name, the job's settings and the mode.

    The mode follows the job's rule: an image_size of three values (D, H, W) trains volumes, and then the settings get
    VOLUME_HYPERPARAMETERS under the notebook's own. With data_dir None it makes the synthetic set once under
    work_dir: images (training.local_demo, `images` = (train, test) images) or, for volumes, CT series
    (make_volume_demo: a series of 32 slices for every 8 images, at least 8 and 4), uploaded as 'synthetic-volumes'
    rather than the 2-D set's 'synthetic'.

    Returns:
        (data folder, dataset name, settings, True for volumes).
    """
    from training.local_demo import make_demo_data

    volumes = len(tuple(hyperparameters.get("image_size", ()))) == 3
    settings = volume_hyperparameters(hyperparameters) if volumes else dict(hyperparameters)
    if data_dir is not None:
        return Path(data_dir), dataset_name, settings, volumes
    if volumes:
        root = make_volume_demo(Path(work_dir) / "volumes", train_series=max(8, images[0] // 8),
                                test_series=max(4, images[1] // 8))
        return root, "synthetic-volumes" if dataset_name == "synthetic" else dataset_name, settings, volumes
    root = Path(work_dir) / "synthetic"
    if not (root / "train").is_dir():  # made once: delete the folder to make a new one
        make_demo_data(root, train_images=images[0], test_images=images[1])
    return root, dataset_name, settings, volumes


def predict_held_out(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], count: int, *,
                     volumes: bool) -> tuple[list[tuple[Path, str]], list[Any], dict[str, str]]:
    """The notebook's prediction cell: held-out files (or series, with `volumes`) classified in this kernel.

    Returns:
        (held out: (file or series folder, true label) pairs, the predictions, file or folder -> true label).
    """
    from launcher.notebook import held_out_files
    from training.inference import Predictor

    predictor = Predictor.from_bundle(model_dir, device="cpu")
    if volumes:
        held_out = held_out_series(data_dir, count)
        predictions = predict_series_folders(predictor, [folder for folder, _ in held_out])
    else:
        held_out = held_out_files(data_dir, count)
        predictions = predictor.predict([str(path) for path, _ in held_out])
    return held_out, predictions, {str(path): label for path, label in held_out}


def show_held_out(predictions: Sequence[Any], truth: Mapping[str, str], *, volumes: bool) -> Figure:
    """Print the predictions' table and draw them: series as slices (show_series_predictions), or images."""
    from launcher.notebook import prediction_table, show_predictions

    print(series_table(predictions, truth) if volumes else prediction_table(predictions, truth))
    return show_series_predictions(predictions, truth) if volumes else show_predictions(predictions, truth)


def make_volume_demo(data_dir: str | os.PathLike[str], *, train_series: int = 60, test_series: int = 16,
                     slices: int = 32, size: int = 128) -> Path:
    """The synthetic CT set of the 3-D setting, made once: data_dir/train and data_dir/test (other patients).

    Each series is a chest-like phantom; 'abnormal' ones hold a lesion sphere (training/dataset/synthetic_volume.py),
    their slices written in random order under random names, labelled by series_uid in labels.csv.

    Returns:
        data_dir.
    """
    from training.synthetic import generate_volumes

    root = Path(data_dir)
    if not (root / "train").is_dir():  # made once: delete the folder to make a new one
        generate_volumes(root / "train", count=train_series, slices=slices, size=size, seed=0)
        generate_volumes(root / "test", count=test_series, slices=slices, size=size, seed=1,
                         first_patient=train_series + 1)
    return root


def volume_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The job's settings for volumes: VOLUME_HYPERPARAMETERS under the notebook's own (which win)."""
    return {**VOLUME_HYPERPARAMETERS, **hyperparameters}


def held_out_series(data_dir: str | os.PathLike[str], count: int = 4) -> list[tuple[Path, str]]:
    """Series the job did not train on, with their labels: the test channel's (else validation's), classes mixed.

    Returns:
        (series folder, label) pairs; at most `count`.

    Raises:
        ValueError: the dataset has neither a test nor a validation folder.
    """
    from launcher.datasets.upload import local_channels
    from training.dataset.series import assemble
    from training.dataset.series_labels import label_series

    channels = local_channels(Path(data_dir))
    name = next((c for c in ("test", "validation") if c in channels), None)
    if name is None:
        raise ValueError(f"{data_dir} has no test/ or validation/ folder, so no series is held out from training")
    root = channels[name]
    labels = label_series(name, root, assemble(_dicom_files(root), root=root))
    by_label: dict[str, list[tuple[Path, str]]] = {}
    for item in sorted(labels.items, key=lambda item: item.series.location):
        by_label.setdefault(item.label, []).append((root / item.series.location, item.label))
    mixed = [pair for group in zip_longest(*by_label.values()) for pair in group if pair is not None]
    return mixed[:count]


def predict_series_folders(predictor: Any, folders: Sequence[Path]) -> list[Any]:
    """One answer per series folder from a 3-D bundle's Predictor (training.inference), its `location` the folder.

    Raises:
        ValueError: a folder does not hold exactly one usable series; the message names the folder and why.
    """
    import dataclasses

    from training.dataset.series import assemble

    answers = []
    for folder in folders:
        report = assemble(_dicom_files(folder), root=folder.parent)
        if len(report.series) != 1:
            reasons = "; ".join(entry["reason"] for entry in report.bad) or "no series"
            raise ValueError(f"{folder} holds {len(report.series)} usable series, not one ({reasons})")
        answers.append(dataclasses.replace(predictor.predict_series(report.series[0]), location=str(folder)))
    return answers


def series_table(predictions: Sequence[Any], truth: Mapping[str, str] | None = None) -> str:
    """One line per predicted series: its folder, slices, predicted label, that label's probability, true label."""
    lines = [f"{'series':<28} {'slices':>6}  {'predicted':<12} {'p':>5}  true"]
    for p in predictions:
        true = (truth or {}).get(str(p.location), "?")
        lines.append(f"{Path(p.location).name:<28} {p.slices:>6}  {p.label:<12} {p.probabilities[p.label]:>5.2f}  "
                     f"{true}")
    return "\n".join(lines)


def show_volume_samples(data_dir: str | os.PathLike[str], *, per_class: int = 2) -> Figure:
    """A few training series of each class, one row each: SLICES_SHOWN slices evenly through the volume."""
    import matplotlib.pyplot as plt

    from launcher.datasets.upload import local_channels
    from training.dataset.series import assemble
    from training.dataset.series_labels import label_series

    root = local_channels(Path(data_dir))["train"]
    labels = label_series("train", root, assemble(_dicom_files(root), root=root))
    rows = []
    for label in sorted({item.label for item in labels.items}):
        rows += [item for item in labels.items if item.label == label][:per_class]
    figure, axes = plt.subplots(len(rows), SLICES_SHOWN, figsize=(2.2 * SLICES_SHOWN, 2.4 * len(rows)),
                                layout="constrained", squeeze=False)
    for axis_row, item in zip(axes, rows, strict=True):
        _draw_slices(axis_row, item.series, f"{item.label}: {item.series.location}")
    return figure


def show_series_predictions(predictions: Sequence[Any], truth: Mapping[str, str] | None = None) -> Figure:
    """Each predicted series in a row of slices, titled with the predicted label, its probability and the true label.

    Args:
        predictions: from predict_series_folders (their `location` is the series folder).
        truth: series folder (as in the predictions) to its true label.
    """
    import matplotlib.pyplot as plt

    from training.dataset.series import assemble

    figure, axes = plt.subplots(max(1, len(predictions)), SLICES_SHOWN, figsize=(2.2 * SLICES_SHOWN,
                                2.4 * max(1, len(predictions))), layout="constrained", squeeze=False)
    for axis_row, prediction in zip(axes, predictions, strict=False):
        folder = Path(prediction.location)
        (series,) = assemble(_dicom_files(folder), root=folder.parent).series
        true = (truth or {}).get(str(prediction.location))
        title = f"{prediction.label} (p={prediction.probabilities[prediction.label]:.2f})" + (
            f", true: {true}" if true is not None else "")
        color = "black" if true is None else "green" if true == prediction.label else "red"
        _draw_slices(axis_row, series, title, color=color)
    return figure


def zip_series(folder: str | os.PathLike[str]) -> bytes:
    """A series folder as one endpoint request: its DICOM files deflated under names by position (slice-0001.dcm,
    ...: no original file name leaves the notebook). The server orders the slices by their positions, not these names.

    Raises:
        ValueError: the zip is over the endpoint's 6 MB payload; the message says how to predict the series instead.
    """
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for k, path in enumerate(_dicom_files(Path(folder)), start=1):
            archive.write(path, f"slice-{k:04d}.dcm")
    body = buffer.getvalue()
    if len(body) > ENDPOINT_PAYLOAD_BYTES:
        raise ValueError(f"{folder} zips to {len(body):,} bytes, over a real-time endpoint's {ENDPOINT_PAYLOAD_BYTES:,}"
                         ": predict it in the notebook (section 9) or with a batch transform (up to 100 MB a series)")
    return body


def _draw_slices(axes: Sequence[Axes], series: Any, title: str, *, color: str = "black") -> None:
    """SLICES_SHOWN slices of the series as read for the network (window, order along the normal), evenly spaced."""
    from training.dataset.volume import read_volume

    volume = read_volume(series, size=DISPLAY_SIZE, window=None).array
    depth = volume.shape[0]
    picks = [round(k * (depth - 1) / (SLICES_SHOWN - 1)) for k in range(SLICES_SHOWN)]
    for k, (axis, index) in enumerate(zip(axes, picks, strict=True)):
        axis.imshow(volume[index], cmap="gray", vmin=0, vmax=255)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"slice {index + 1} of {depth}", fontsize=8)
        if k == 0:
            axis.set_title(title, fontsize=9, loc="left", color=color)


def _dicom_files(root: str | os.PathLike[str]) -> list[Path]:
    """training.dataset.dicom.dicom_files_under, imported when used (this module imports the standard library only)."""
    from training.dataset.dicom import dicom_files_under

    return dicom_files_under(root)

"""launcher/notebook_volumes.py: the notebook's 3-D setting on synthetic CT series written in random order under random
names: the demo set, the settings, the held-out series and the figures (slices in the order of their positions)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pydicom
import pytest

from launcher import notebook_volumes

matplotlib.use("Agg")  # before pyplot is imported by the helpers: no display here


@pytest.fixture(scope="module")
def volume_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return notebook_volumes.make_volume_demo(tmp_path_factory.mktemp("volumes") / "data", train_series=6,
                                             test_series=4, slices=8, size=32)


def test_the_demo_set_has_train_and_test_series_of_other_patients(volume_data: Path) -> None:
    patients = {}
    for channel in ("train", "test"):
        files = [p for p in (volume_data / channel).rglob("*.dcm")]
        assert len(files) == (6 if channel == "train" else 4) * 8
        patients[channel] = {pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in files}
    assert patients["train"] and patients["test"] and not patients["train"] & patients["test"]
    made = sorted(p.stat().st_mtime_ns for p in (volume_data / "train").rglob("*.dcm"))
    notebook_volumes.make_volume_demo(volume_data, train_series=6, test_series=4, slices=8, size=32)
    assert sorted(p.stat().st_mtime_ns for p in (volume_data / "train").rglob("*.dcm")) == made  # made once


def test_the_settings_are_3d_and_the_notebook_s_own_win() -> None:
    assert notebook_volumes.volume_hyperparameters({}) == notebook_volumes.VOLUME_HYPERPARAMETERS
    mine = notebook_volumes.volume_hyperparameters({"image_size": (16, 48, 48), "epochs": 3})
    assert mine["image_size"] == (16, 48, 48) and mine["epochs"] == 3 and mine["network"] == "resnet18"
    with pytest.raises(ValueError, match=r"HYPERPARAMETERS\['image_size'\] must be three values \(D, H, W\)"):
        notebook_volumes.volume_hyperparameters({"image_size": (96, 96)})


def test_held_out_series_are_the_test_channel_s_classes_mixed(volume_data: Path) -> None:
    held_out = notebook_volumes.held_out_series(volume_data, 3)
    assert len(held_out) == 3 and {label for _, label in held_out} == {"normal", "abnormal"}
    for folder, _ in held_out:
        assert folder.parent.parent == volume_data / "test" and len(list(folder.iterdir())) == 8
    with pytest.raises(ValueError, match="no test/ or validation/ folder"):
        notebook_volumes.held_out_series(volume_data / "train")


def test_the_samples_show_each_class_as_the_network_reads_the_series(volume_data: Path) -> None:
    import matplotlib.pyplot as plt

    from training.dataset.series import assemble
    from training.dataset.volume import read_volume

    figure = notebook_volumes.show_volume_samples(volume_data, per_class=1)
    try:
        titled = [axis for axis in figure.axes if axis.get_title(loc="left")]
        assert sorted(axis.get_title(loc="left").split(":")[0] for axis in titled) == ["abnormal", "normal"]
        shown = [axis for axis in figure.axes if axis.images]
        depth = notebook_volumes.DISPLAY_SIZE[0]
        assert len(shown) == 2 * notebook_volumes.SLICES_SHOWN
        assert [axis.get_xlabel() for axis in shown[:5]] == [f"slice {k} of {depth}" for k in (1, 9, 17, 24, 32)]
        # the first row is the series its title names, read as training reads it (ordered along the slice normal)
        folder = volume_data / "train" / titled[0].get_title(loc="left").split(": ")[1]
        (series,) = assemble(sorted(folder.iterdir()), root=folder.parent).series
        volume = read_volume(series, size=notebook_volumes.DISPLAY_SIZE, window=None).array
        for axis, index in zip(shown[:5], (0, 8, 16, 23, 31), strict=True):
            assert np.array_equal(np.asarray(axis.images[0].get_array()), volume[index])
    finally:
        plt.close(figure)

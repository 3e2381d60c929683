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


def test_the_mode_follows_image_size_and_the_notebook_s_own_settings_win(volume_data: Path, tmp_path: Path) -> None:
    data_dir, name, settings, volumes = notebook_volumes.demo_data(
        volume_data, "mine", {"image_size": (16, 48, 48), "epochs": 3}, work_dir=tmp_path, images=(400, 100))
    assert (data_dir, name, volumes) == (volume_data, "mine", True)
    assert settings == {"network": "resnet18", "batch_size": 8, "image_size": (16, 48, 48), "epochs": 3}
    mine = notebook_volumes.demo_data(volume_data, "mine", {"image_size": (16, 48, 48), "network": "densenet121"},
                                      work_dir=tmp_path, images=(400, 100))[2]
    assert mine["network"] == "densenet121"
    assert notebook_volumes.demo_data(volume_data, "mine", {"epochs": 3}, work_dir=tmp_path, images=(400, 100)) == (
        volume_data, "mine", {"epochs": 3}, False)  # two values, or none: images, as before


def test_the_synthetic_ct_set_is_made_once_under_its_own_dataset_name(tmp_path: Path) -> None:
    data_dir, name, _, volumes = notebook_volumes.demo_data(None, "synthetic", {"image_size": (8, 32, 32)},
                                                            work_dir=tmp_path, images=(64, 32))
    assert (data_dir, name, volumes) == (tmp_path / "volumes", "synthetic-volumes", True)
    assert len({p.parent for p in (data_dir / "train").rglob("*.dcm")}) == 8  # a series for every 8 images
    assert len({p.parent for p in (data_dir / "test").rglob("*.dcm")}) == 4


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


def test_held_out_series_are_predicted_once_each_and_drawn_with_their_answer(
    volume_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.pyplot as plt

    from tests.training.volume_bundles import write_volume_bundle

    model_dir, _ = write_volume_bundle(tmp_path / "model")  # untrained: what is held here is one answer a series
    held_out, predictions, truth = notebook_volumes.predict_held_out(model_dir, volume_data, 2, volumes=True)
    assert [Path(p.location) for p in predictions] == [folder for folder, _ in held_out]
    assert [p.slices for p in predictions] == [8, 8] and truth == {str(f): label for f, label in held_out}
    figure = notebook_volumes.show_held_out(predictions, truth, volumes=True)
    try:
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["series", "slices", "predicted", "p", "true"] and len(table) == 3
        for line, (folder, label) in zip(table[1:], held_out, strict=True):
            assert line.split()[0] == folder.name and line.split()[1] == "8" and line.split()[-1] == label
        titled = [axis.get_title(loc="left") for axis in figure.axes if axis.get_title(loc="left")]
        assert len(titled) == 2 and all(", true: " in title for title in titled)
    finally:
        plt.close(figure)


def test_a_series_is_one_request_named_by_position_and_bounded(volume_data: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import zipfile

    from launcher.endpoints import request_of

    folder, _ = notebook_volumes.held_out_series(volume_data, 1)[0]
    request = request_of(folder)
    body = request["body"]
    assert request["content_type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert names == [f"slice-{k:04d}.dcm" for k in range(1, 9)]  # no original file name leaves the notebook
    first = sorted(folder.iterdir())[0]
    assert request_of(first) == {"body": first.read_bytes(), "content_type": "application/dicom"}
    monkeypatch.setattr(notebook_volumes, "ENDPOINT_PAYLOAD_BYTES", len(body) - 1)
    with pytest.raises(ValueError, match=f"{folder} zips to {len(body):,} bytes, over a real-time endpoint's"):
        request_of(folder)

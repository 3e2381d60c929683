"""training/serving/explain_volumes.py: a series' heat map goes back to its own slices, on a real CT series nobody
here wrote (pydicom's dicomdirtests CT5N, 5 axial slices), and `python -m training.predict --explain` writes it.

The way back is checked with a map whose truth is known: the volume the network saw, used as a "heat map", must come
back as the series' own slices (decoded alone at their own grid); the same map flipped left-right must not, so the
check can fail where an axis is mapped wrongly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.training.volume_bundles import write_volume_bundle
from training import predict
from training.dataset.dicom import load_image
from training.dataset.series import assemble
from training.dataset.volume import read_volume
from training.serving.explain_volumes import to_source

CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
WINDOW = (40.0, 400.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_a_map_on_the_network_grid_comes_back_on_the_series_own_slices() -> None:
    (series,) = assemble(sorted(str(f) for f in CT5N.iterdir())).series
    volume = read_volume(series, size=(16, 48, 48), window=WINDOW)
    seen = volume.array.astype(np.float32) / 255.0
    back = to_source(seen, volume)
    assert back.shape == (series.slice_count, series.rows, series.columns) and back.dtype == np.float32
    assert all(ref.frame is None for ref in series.slices)  # single-frame slices, each decoded alone below
    slices = np.stack([load_image(ref.file, image_size=(series.rows, series.columns), window=WINDOW)[0]
                       for ref in series.slices])
    right, flipped = _correlation(back, slices), _correlation(to_source(seen[:, :, ::-1].copy(), volume), slices)
    assert right > 0.9, right
    assert flipped < right - 0.2, (right, flipped)


def test_predict_explain_writes_each_series_map_on_its_slices(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    bundle, _ = write_volume_bundle(tmp_path / "model")
    assert predict.main([str(bundle), str(CT5N), "--explain", str(tmp_path / "maps")]) == 0
    (answer,) = json.loads(capsys.readouterr().out)["predictions"]
    assert Path(answer["heatmap"]).name == "0001.npy" and Path(answer["overlay"]).name == "0001.png"
    heat = np.load(answer["heatmap"])
    rows, columns = (int(pydicom.dcmread(next(CT5N.iterdir()), stop_before_pixels=True).get(k)) for k in
                     ("Rows", "Columns"))
    assert heat.shape == (5, rows, columns) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0.0
    assert Path(answer["overlay"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

"""training/serving/explain.py: heat maps point at the finding, through predict --explain and through the server.

One module-scoped fixture trains two models with the real job (training.job.train.main, DenseNet121 at 64x64, one
thread whatever the test run's share, so that the models are the same under pytest-xdist and alone) on the
same synthetic images (128x128, so the file's grid is not the network's): one on the true labels, one on shuffled
labels. The lesion of each abnormal test image is known (training.synthetic's SyntheticImage.lesion); a heat map hits
when its maximum lies within one lesion radius of the lesion's centre, in the file's pixels.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import random
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydicom.data import get_testdata_file

from launcher.explain import show_overlays
from training import predict
from training.dataset.dicom import load_image
from training.dataset.grayscale import resize
from training.inference import Predictor
from training.job.train import main as train_main
from training.serve import request, running_server
from training.serving import explain
from training.serving.request import InvalidInput
from training.synthetic import SyntheticImage, generate, write_labels_csv

SIZE = 128  # the files' Rows x Columns; the network sees 64x64
TRAIN, TEST = 240, 30
HIT_RATE = 0.8  # the bar: the maximum within one radius for >= 80 % of the correctly classified abnormal images
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Trained:
    model: Path  # trained on the true labels
    shuffled: Path  # the same images, labels shuffled: no lesion to find
    test: list[tuple[str, SyntheticImage]]  # (path, what was written) of the test images


def _train(channel: Path, out: Path) -> Path:
    argv = [f"--train={channel}", f"--model-dir={out / 'model'}", f"--output-dir={out / 'output'}",
            "--network", "densenet121", "--image_size", "64,64", "--epochs", "4", "--batch_size", "16",
            "--learning_rate", "0.0005", "--augment", "0.25", "--threads", "1", "--workers", "1",
            "--bootstrap_samples", "100", "--torchscript", "false", "--precise_bn", "256", "--patience", "0"]
    assert train_main(argv) == 0
    return out / "model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("explain")
    generate(root / "train", count=TRAIN, size=SIZE, seed=1)
    written = generate(root / "test", count=TEST, size=SIZE, seed=2, first_patient=500)
    with open(root / "train" / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labels = [row["label"] for row in rows]
    random.Random(0).shuffle(labels)
    shutil.copytree(root / "train" / "images", root / "shuffled" / "images")
    write_labels_csv(root / "shuffled", zip([row["file"] for row in rows], labels, strict=True))
    return Trained(_train(root / "train", root / "true"), _train(root / "shuffled", root / "shuffled-run"),
                   [(str(root / "test" / image.file), image) for image in written])


def test_the_recorded_lesion_is_where_the_pixels_are_bright(tmp_path: Path) -> None:
    written = generate(tmp_path, count=8, size=SIZE, seed=3)
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    for image in written:
        if image.lesion is None:
            assert image.label == "normal"
            continue
        pixels = load_image(tmp_path / image.file, image_size=(SIZE, SIZE))[0]
        distance = np.hypot(rows - image.lesion.row, columns - image.lesion.column) / image.lesion.radius
        assert pixels[distance < 0.7].mean() > pixels[(distance > 1.5) & (distance < 2.5)].mean() + 0.2, image.file


def _abnormal_found(bundle: Path, test: list[tuple[str, SyntheticImage]]) -> list[tuple[str, SyntheticImage]]:
    """The abnormal test images the model calls abnormal."""
    abnormal = [(path, image) for path, image in test if image.label == "abnormal"]
    answers = Predictor.from_bundle(bundle).predict([path for path, _ in abnormal])
    return [item for item, answer in zip(abnormal, answers, strict=True) if answer.label == "abnormal"]


def _hit(heatmap: np.ndarray, image: SyntheticImage) -> bool:
    assert image.lesion is not None
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return math.hypot(row - image.lesion.row, column - image.lesion.column) <= image.lesion.radius


def _hit_rate(bundle: Path, test: list[tuple[str, SyntheticImage]]) -> tuple[float, int]:
    found = _abnormal_found(bundle, test)
    explainer = explain.Explainer.from_bundle(bundle)
    index = list(Predictor.from_bundle(bundle).class_names).index("abnormal")
    hits = [_hit(explainer.explain(path, index).heatmap, image) for path, image in found]
    return sum(hits) / max(1, len(hits)), len(hits)


def test_heat_maps_point_at_the_lesion(trained: Trained) -> None:
    rate, count = _hit_rate(trained.model, trained.test)
    assert count >= 10, f"the model found only {count} of {TEST // 2} abnormal test images"
    assert rate >= HIT_RATE, f"heat maps hit the lesion in {rate:.0%} of {count} images"


def test_a_model_trained_on_shuffled_labels_does_not_reach_the_bar(trained: Trained) -> None:
    rate, count = _hit_rate(trained.shuffled, trained.test)
    assert rate < HIT_RATE, f"a model with no lesion to learn hit {rate:.0%} of {count}: the test could not fail"


def test_predict_explain_writes_maps_overlays_and_their_paths(trained: Trained, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    real = get_testdata_file("examples_overlay.dcm")  # a real file of 300 rows x 484 columns
    assert real is not None
    files = [trained.test[0][0], real]
    out = tmp_path / "maps"
    assert predict.main([str(trained.model), *files, "--explain", str(out)]) == 0
    answers = json.loads(capsys.readouterr().out)["predictions"]
    assert sorted(p.name for p in out.iterdir()) == ["0001.npy", "0001.png", "0002.npy", "0002.png"]
    for number, (file, answer) in enumerate(zip(files, answers, strict=True), start=1):
        stem = out / f"{number:04d}"
        assert (answer["heatmap"], answer["overlay"]) == (str(stem) + ".npy", str(stem) + ".png")
        heatmap = np.load(answer["heatmap"])
        header = pydicom.dcmread(file, stop_before_pixels=True)
        assert heatmap.shape == (header.Rows, header.Columns) and heatmap.dtype == np.float32
        assert 0.0 <= heatmap.min() and heatmap.max() == pytest.approx(1.0)
        png = Path(answer["overlay"]).read_bytes()
        assert png.startswith(PNG) and not {b"tEXt", b"zTXt", b"iTXt"} & {png[i : i + 4] for i in range(len(png))}
    _assert_drawn(show_overlays({"predictions": answers}), len(files))


def _assert_drawn(figure: Figure, panels: int) -> None:
    """The notebook's figure (launcher/explain.py) drew one image a prediction, each an RGB picture."""
    FigureCanvasAgg(figure).draw()
    images = [axis.images[0].get_array() for axis in figure.axes if axis.images]
    assert len(images) == panels and all(image.ndim == 3 and image.shape[0] >= 256 for image in images)


def test_every_method_gives_a_map_on_the_file_grid(trained: Trained, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explain, "OCCLUSION_MASK", 32)  # 25 patches instead of about 500: the same code, cheaper
    path, _ = next(item for item in trained.test if item[1].label == "abnormal")
    assert predict.main([str(trained.model), path, "--explain", str(tmp_path), "--explain-method", "gradcam"]) == 0
    assert np.load(tmp_path / "0001.npy").shape == (SIZE, SIZE)
    for method in explain.METHODS:
        heatmap = explain.Explainer.from_bundle(trained.model, method=method).explain(path, 0).heatmap
        assert heatmap.shape == (SIZE, SIZE) and heatmap.max() == pytest.approx(1.0), method


@pytest.mark.parametrize(
    ("attributes", "wanted"),
    [(None, False), ("", False), ("explain=true", True), ("trace=1, Explain = TRUE", True), ("explain=false", False),
     ("a=b,explain=true,c", True), ("explained=true", False)],
)
def test_the_custom_attribute_is_read_from_its_list(attributes: str | None, wanted: bool) -> None:
    assert explain.requested(attributes, [], None) is wanted


def test_a_bad_explain_value_or_too_many_files_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    real = str(get_testdata_file("CT_small.dcm"))
    too_many = [real] * (explain.MAX_PREDICT_EXPLANATIONS + 1)
    assert predict.main(["/refused-before-the-bundle-loads", *too_many, "--explain", "/nowhere"]) == 2
    assert "MAX_PREDICT_EXPLANATIONS" in capsys.readouterr().err
    with pytest.raises(InvalidInput, match="true or false"):
        explain.requested("explain=yes", [], None)
    with pytest.raises(InvalidInput, match="MAX_EXPLAIN_FILES"):
        explain.requested("explain=true", [None] * (explain.MAX_EXPLAIN_FILES + 1), None)  # type: ignore[list-item]


def _zip(paths: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, path in enumerate(paths):
            archive.write(path, f"{number:03d}.dcm")
    return buffer.getvalue()


def test_the_server_explains_when_asked_and_refuses_beyond_its_limit(trained: Trained) -> None:
    found = _abnormal_found(trained.model, trained.test)[: explain.MAX_EXPLAIN_FILES]
    headers = {"Content-Type": "application/zip", "X-Amzn-SageMaker-Custom-Attributes": "explain=true"}
    with running_server(trained.model) as (_, port):
        status, body = request(port, "POST", "/invocations", _zip([path for path, _ in found]), headers=headers)
        assert status == 200, body
        answers = json.loads(body)["predictions"]
        hits = 0
        for (_, image), answer in zip(found, answers, strict=True):
            assert base64.b64decode(answer["overlay_png"]).startswith(PNG)
            rows, columns = answer["heatmap"]["rows"], answer["heatmap"]["columns"]
            small = np.frombuffer(base64.b64decode(answer["heatmap"]["uint8"]), np.uint8).reshape(rows, columns)
            hits += answer["label"] == "abnormal" and _hit(resize(small.astype(np.float32), (SIZE, SIZE)), image)
        assert hits >= HIT_RATE * len(found)
        _assert_drawn(show_overlays(json.loads(body)), len(found))
        too_many = _zip([path for path, _ in trained.test[: explain.MAX_EXPLAIN_FILES + 1]])
        status, body = request(port, "POST", "/invocations", too_many, headers=headers)
        assert status == 400 and "MAX_EXPLAIN_FILES" in json.loads(body)["error"]
        status, body = request(port, "POST", "/invocations", too_many, headers={"Content-Type": "application/zip"})
        assert status == 200 and "overlay_png" not in json.loads(body)["predictions"][0]

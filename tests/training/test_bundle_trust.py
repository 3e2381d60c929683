"""A bundle's trust boundary: our loaders read it as data and evaluate nothing in it (DESIGN.md "Trust boundary").

A bundle is what a training job left in S3 or what someone handed over: its configs/inference.json is MONAI config
syntax, where `_target_` names any callable and `$...` is Python. `Predictor.from_bundle`, `model_fn` and
`load_network` must read its named plain fields (training.job.bundle.read_bundle), refuse one that fails its type or
range with a BundleError naming the file and the field, and build the network from our own factory.

Every test copies the session's tiny trained bundle (tests/conftest.py `tiny_job`) before changing it: what is
checked is how a bundle is read, whatever its size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import TinyJob
from training import inference
from training.inference import Predictor
from training.job.bundle import BundleError, load_network, read_bundle


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def _edit(bundle: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    path = bundle / "configs" / name
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


LOADERS: dict[str, Callable[[Path], object]] = {
    "Predictor.from_bundle": lambda root: Predictor.from_bundle(root, device="cpu"),
    "model_fn": inference.model_fn,
    "load_network": load_network,
}


def _touch(marker: Path) -> str:
    return f"$__import__('pathlib').Path({str(marker)!r}).touch()"


# Each value the old loaders evaluated (ConfigParser's `evaluator` and what it references; load_network's
# `network_def`), made to write a marker file.
ATTACKS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "network_def _target_": lambda c, m: c.update(network_def={"_target_": "pathlib.Path.touch", "self": str(m)}),
    "device expression": lambda c, m: c.update(device=_touch(m)),
    "threshold expression": lambda c, m: c.update(threshold=_touch(m)),
    "checkpoint expression": lambda c, m: c.update(checkpoint=_touch(m)),
    "postprocessing expression": lambda c, m: c.update(postprocessing=_touch(m)),
    "evaluator _target_": lambda c, m: c.update(evaluator={"_target_": "pathlib.Path.touch", "self": str(m)}),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("loader", list(LOADERS))
def test_loading_a_bundle_runs_none_of_its_code(tiny_job: TinyJob, tmp_path: Path, loader: str, attack: str) -> None:
    bundle = _copy(tiny_job.model_dir, tmp_path)
    marker = tmp_path / "marker"
    _edit(bundle, "inference.json", lambda c: ATTACKS[attack](c, marker))
    try:
        LOADERS[loader](bundle)
    except BundleError:
        pass  # refusing the bundle is fine; running its code is not
    assert not marker.exists(), f"{loader} ran the bundle's {attack}"


def test_a_changed_network_target_is_refused_naming_the_field(tiny_job: TinyJob, tmp_path: Path) -> None:
    bundle = _copy(tiny_job.model_dir, tmp_path)
    marker = tmp_path / "marker"
    _edit(
        bundle,
        "inference.json",
        lambda c: c.update(network_def={"_target_": "pathlib.Path.touch", "self": str(marker)}),
    )
    with pytest.raises(BundleError, match=r"inference\.json.*network_def\._target_"):
        read_bundle(bundle)


def test_an_unknown_network_name_is_refused_naming_the_field(tiny_job: TinyJob, tmp_path: Path) -> None:
    bundle = _copy(tiny_job.model_dir, tmp_path)
    _edit(bundle, "metadata.json", lambda m: m.update(network="os.system"))
    with pytest.raises(BundleError, match=r"metadata\.json.*'network'.*densenet121") as refused:
        Predictor.from_bundle(bundle, device="cpu")
    assert isinstance(refused.value, ValueError)


def test_a_negative_threshold_is_refused_naming_the_field(tiny_job: TinyJob, tmp_path: Path) -> None:
    bundle = _copy(tiny_job.model_dir, tmp_path)
    _edit(bundle, "inference.json", lambda c: c.update(threshold=-0.1))
    with pytest.raises(BundleError, match=r"inference\.json.*'threshold'.*between 0 and 1"):
        inference.model_fn(bundle)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("inference.json", "threshold", 1.5),
        ("inference.json", "threshold", "0.5"),
        ("inference.json", "threshold", True),
        ("inference.json", "positive_index", 2),
        ("inference.json", "positive_index", -1),
        ("inference.json", "class_names", []),
        ("inference.json", "class_names", ["a", "a"]),
        ("inference.json", "class_names", ["a", "x" * 200]),
        ("inference.json", "class_names", ["a", 3]),
        ("inference.json", "image_size", [96]),
        ("inference.json", "image_size", [96, 0]),
        ("inference.json", "image_size", [96, 100000]),
        ("inference.json", "image_size", [96.0, 96]),
        ("inference.json", "window", [40.0, 0.0]),
        ("inference.json", "window", [40.0, "$1"]),
        ("inference.json", "window", [40.0]),
        ("inference.json", "network_def", {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 2}),
        ("metadata.json", "network", 121),
    ],
)
def test_each_field_is_checked_by_type_and_range(
    tiny_job: TinyJob, tmp_path: Path, name: str, field: str, value: Any
) -> None:
    bundle = _copy(tiny_job.model_dir, tmp_path)
    _edit(bundle, name, lambda d: d.update({field: value}))
    with pytest.raises(BundleError, match=rf"{name}.*'{field}"):
        read_bundle(bundle)


@pytest.mark.parametrize(
    ("key", "value"),
    [("spatial_dims", 3), ("in_channels", 3), ("out_channels", 5), ("out_channels", 2.0), ("growth_rate", 32)],
)
def test_network_arguments_are_checked(tiny_job: TinyJob, tmp_path: Path, key: str, value: Any) -> None:
    bundle = _copy(tiny_job.model_dir, tmp_path)
    _edit(bundle, "inference.json", lambda c: c["network_def"].update({key: value}))
    with pytest.raises(BundleError, match=rf"inference\.json.*network_def\.{key}"):
        read_bundle(bundle)


def test_weights_that_are_not_a_plain_state_dict_are_refused(tiny_job: TinyJob, tmp_path: Path) -> None:
    bundle = _copy(tiny_job.model_dir, tmp_path)
    torch.save(
        {"state": np.random.default_rng(0).bit_generator.state, "x": np.arange(3)}, bundle / "models" / "model.pt"
    )
    with pytest.raises(BundleError, match=r"model\.pt"):
        load_network(bundle)


def test_the_untouched_bundle_reads_and_predicts_as_the_config_says(
    tiny_job: TinyJob, tmp_path: Path
) -> None:
    config = json.loads((tiny_job.model_dir / "configs" / "inference.json").read_text(encoding="utf-8"))
    spec = read_bundle(tiny_job.model_dir)
    assert spec.network == json.loads((tiny_job.model_dir / "configs" / "metadata.json").read_text())["network"]
    assert list(spec.class_names) == config["class_names"]
    assert list(spec.image_size) == config["image_size"]
    assert spec.window == (tuple(config["window"]) if config["window"] is not None else None)
    assert spec.threshold == config["threshold"] and spec.positive_index == config["positive_index"]

    # The reference: MONAI's own parser on the original config (a bundle we wrote ourselves: trusted here).
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(tiny_job.model_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(tiny_job.model_dir)
    parser["device"] = "$torch.device('cpu')"
    reference = parser.get_parsed_content("evaluator").predict(tiny_job.test_files)

    predictions = Predictor.from_bundle(_copy(tiny_job.model_dir, tmp_path), device="cpu").predict(tiny_job.test_files)
    assert [p.label for p in predictions] == [p.label for p in reference]
    ours = np.array([list(p.probabilities.values()) for p in predictions])
    theirs = np.array([list(p.probabilities.values()) for p in reference])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)

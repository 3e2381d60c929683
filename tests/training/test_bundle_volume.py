"""The 3-D bundle (issue 21 item 5): write_bundle records the mode, read_bundle reads it as data, every loader builds
the 3-D network: ours (load_network), MONAI's ConfigParser (network_def), and TorchScript on a 5-D input. A bundle
without "spatial_dims" stays 2-D, and a 2-D bundle's inference.json holds no such key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser

from tests.training.volume_bundles import CLASSES, NETWORK, SIZE, write_volume_bundle
from training.job.bundle import BundleError, load_network, read_bundle
from training.job.bundle_writer import write_bundle
from training.job.config import TrainConfig
from training.job.networks import build_network

SCHEMA = Path(__file__).parent / "schemas" / "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    return write_volume_bundle(tmp_path_factory.mktemp("volume") / "model", torchscript=True)


@pytest.fixture(scope="module")
def expected(bundle: tuple[Path, torch.nn.Module]) -> torch.Tensor:
    """The written network's logits on one random volume (1 x 1 x D x H x W)."""
    return _logits(bundle[1])


def _volume(seed: int = 1) -> torch.Tensor:
    return torch.rand((1, 1, *SIZE), generator=torch.Generator().manual_seed(seed))


def _logits(network: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return network(_volume())


def test_the_bundle_records_the_mode_and_the_volume_size(bundle: tuple[Path, torch.nn.Module]) -> None:
    root, _ = bundle
    config = json.loads((root / "configs" / "inference.json").read_text())
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert config["spatial_dims"] == 3 and config["image_size"] == list(SIZE)
    assert config["network_def"]["spatial_dims"] == 3
    assert config["preprocessing"]["_target_"] == "training.inference.LoadSeriesVolume"
    assert config["run"] == ["$@evaluator.write_series_predictions(@dataset, @output_file)"]
    assert config["evaluator"]["spatial_dims"] == "@spatial_dims"  # MONAI builds a 3-D Predictor
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == list(SIZE)
    assert "series" in meta["task"] and "32x32x32 (D x H x W)" in meta["description"]
    assert "Decision: abnormal when its probability >= 0.5." in meta["description"]
    assert "predict_volumes" in (root / "docs" / "README.md").read_text()


def test_read_bundle_and_load_network_build_the_3d_network_with_its_weights(
    bundle: tuple[Path, torch.nn.Module], expected: torch.Tensor
) -> None:
    spec = read_bundle(bundle[0])
    assert (spec.spatial_dims, spec.image_size, spec.network) == (3, SIZE, NETWORK)
    assert torch.allclose(_logits(load_network(spec)), expected, atol=1e-5)


def test_monai_config_parser_and_torchscript_build_the_same_3d_network(
    bundle: tuple[Path, torch.nn.Module], expected: torch.Tensor
) -> None:
    root, _ = bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    monai_network = parser.get_parsed_content("network_def")  # MONAI's own reading of the config
    monai_network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    assert torch.allclose(_logits(monai_network.eval()), expected, atol=1e-5)
    scripted = torch.jit.load(str(root / "models" / "model.ts"), map_location="cpu")
    assert torch.allclose(_logits(scripted), expected, atol=1e-4)


def _edited(root: Path, tmp_path: Path, network: str = NETWORK, **fields: object) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(root / "configs", copy / "configs")
    (copy / "models").mkdir()
    (copy / "models" / "model.pt").symlink_to(root / "models" / "model.pt")
    config = json.loads((copy / "configs" / "inference.json").read_text())
    for key, value in fields.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (copy / "configs" / "inference.json").write_text(json.dumps(config))
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    (copy / "configs" / "metadata.json").write_text(json.dumps({**meta, "network": network}))
    return copy


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"spatial_dims": 4}, "spatial_dims", "must be 2 (images) or 3 (volumes)"),
        ({"spatial_dims": True}, "spatial_dims", "must be 2 (images) or 3 (volumes)"),
        ({"image_size": [32, 32]}, "image_size", "must be [D, H, W] with spatial_dims 3"),
        ({"spatial_dims": None}, "image_size", "must be [H, W]"),  # no mode: a 2-D bundle, and 3 sizes are refused
        ({"image_size": [16, 32, 32], "network": "densenet121"}, "image_size", "needs a depth of at least 29"),
        ({"image_size": [4, 32, 32]}, "image_size", "each between 8 and 4096"),  # config.check_image_size
        ({"image_size": [32, 32, 600]}, "image_size", "sides from 4 to 512"),  # read_volume's bound
        ({"image_size": [256, 256, 256]}, "image_size", "over 4,194,304"),  # config.MAX_VOXELS
    ],
)
def test_a_mode_that_does_not_fit_its_size_or_network_is_refused_naming_the_field(
    bundle: tuple[Path, torch.nn.Module], tmp_path: Path, fields: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(BundleError, match=r"'" + field + r"'") as refused:
        read_bundle(_edited(bundle[0], tmp_path, **fields))
    assert says in str(refused.value)


def test_a_3d_network_def_in_a_2d_bundle_is_refused(bundle: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    edited = _edited(bundle[0], tmp_path, spatial_dims=None, image_size=[32, 32])
    with pytest.raises(BundleError, match="network_def.spatial_dims"):
        read_bundle(edited)


def test_a_2d_bundle_holds_no_mode_key_and_loads_as_2d(tmp_path: Path) -> None:
    network = build_network("resnet18", num_classes=2)
    write_bundle(tmp_path, network=network, network_name="resnet18", classes=CLASSES,
                 config=TrainConfig(network="resnet18", image_size=(32, 32), torchscript=False), positive_index=0,
                 eval_metrics={}, lineage={})
    config = json.loads((tmp_path / "configs" / "inference.json").read_text())
    assert "spatial_dims" not in config and config["network_def"]["spatial_dims"] == 2
    assert config["preprocessing"]["_target_"] == "training.dicom_transforms.LoadDicomImage"
    assert "2-D DICOM image" in json.loads((tmp_path / "configs" / "metadata.json").read_text())["task"]
    spec = read_bundle(tmp_path)
    assert (spec.spatial_dims, spec.image_size) == (2, (32, 32))

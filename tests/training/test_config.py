"""training/job/config.py: every hyperparameter in one dataclass, filled from strings as SageMaker sends them."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import types

import pytest

from training.dataset.prepare import DataOptions
from training.dataset.prepare_volumes import VolumeOptions
from training.job import config as config_module
from training.job.config import TrainConfig, format_value, json_to_string, parse_bool, parse_pair
from training.job.train import build_parser


def test_defaults_are_valid_and_documented() -> None:
    config = TrainConfig()
    assert config.network == "densenet121"
    assert config.learning_rate == 1e-3  # not the public sample's 1e-5
    source = open(config_module.__file__, encoding="utf-8").read()
    for field in dataclasses.fields(TrainConfig):
        line = next(line for line in source.splitlines() if line.strip().startswith(f"{field.name}:"))
        assert "  # " in line, f"{field.name} has no comment explaining its default"


def test_every_field_is_a_flag_of_the_same_name() -> None:
    parser = build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name}" in options


def test_no_argparse_actions_besides_help() -> None:
    for action in build_parser()._actions:
        assert isinstance(action, argparse._StoreAction | argparse._HelpAction), action


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_parse_bool_accepts_sagemaker_and_toolkit_spellings(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "maybe", "2", "t"])
def test_parse_bool_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        parse_bool(text)


@pytest.mark.parametrize("text", ["64,64", "64x64", "[64, 64]", "(64, 64)", "64", " 64 , 64 "])
def test_image_size_spellings(text: str) -> None:
    assert TrainConfig.from_strings({"image_size": text}).image_size == (64, 64)


def test_window_and_empty_window() -> None:
    assert TrainConfig.from_strings({"window": "-600,1500"}).window == (-600.0, 1500.0)
    assert TrainConfig.from_strings({"window": "[40, 400]"}).window == (40.0, 400.0)
    for empty in ("", "none", "null"):
        assert TrainConfig.from_strings({"window": empty}).window is None


def test_parse_pair_rejects_three_numbers() -> None:
    with pytest.raises(ValueError, match="two numbers"):
        parse_pair("1,2,3", int)


def test_round_trip_through_hyperparameter_strings() -> None:
    config = TrainConfig(epochs=3, image_size=(64, 80), window=(40.0, 400.0), class_weighting=False)
    strings = config.hyperparameters()
    assert all(isinstance(v, str) for v in strings.values())
    assert strings["class_weighting"] == "false"
    assert TrainConfig.from_strings(strings) == config


def test_sm_hps_values_become_the_strings_sagemaker_sent() -> None:
    decoded = json.loads('{"epochs": 5, "augment": 0.25, "class_weighting": true, "image_size": [64, 64], "x": "a"}')
    strings = {k: json_to_string(v) for k, v in decoded.items()}
    assert strings == {"epochs": "5", "augment": "0.25", "class_weighting": "true", "image_size": "[64, 64]", "x": "a"}


def test_hyphenated_names_are_the_same_hyperparameter() -> None:
    assert TrainConfig.from_strings({"learning-rate": "0.01"}).learning_rate == 0.01
    namespace = build_parser().parse_args(["--train", ".", "--learning-rate", "0.02", "--batch_size", "8"])
    config = config_module.from_arguments(namespace)
    assert (config.learning_rate, config.batch_size) == (0.02, 8)


def test_command_line_beats_sm_hps_beats_default() -> None:
    namespace = build_parser().parse_args(["--epochs", "7"])
    config = config_module.from_arguments(namespace, {"epochs": "3", "batch_size": "8"})
    assert (config.epochs, config.batch_size, config.seed) == (7, 8, 0)


def test_unknown_hyperparameter_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown hyperparameter 'lr'.*learning_rate"):
        TrainConfig.from_strings({"lr": "0.1"})


def test_bad_value_names_the_field() -> None:
    with pytest.raises(ValueError, match="hyperparameter epochs='five'"):
        TrainConfig.from_strings({"epochs": "five"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"network": "vgg16"}, "network must be one of densenet121"),
        ({"optimizer": "adam"}, "optimizer must be one of adamw, sgd"),
        ({"schedule": "step"}, "schedule must be one of cosine, onecycle, none"),
        ({"precision": "int8"}, "precision must be one of auto"),
        ({"on_bad_file": "ignore"}, "on_bad_file must be one of fail, skip"),
        ({"image_size": (4, 4)}, "image_size must be two sizes"),
        ({"window": (40.0, 0.0)}, "window must be center,width"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"workers": 0}, "workers must be an integer >= 1"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
        ({"augment": 1.5}, "augment must be between 0 and 1"),
        ({"threshold": -0.1}, "threshold must be between 0 and 1"),
        ({"val_fraction": 1.0}, "val_fraction must be in"),
    ],
)
def test_invalid_values_say_what_is_allowed(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3  # type: ignore[misc]


def test_format_value() -> None:
    assert [format_value(v) for v in (True, None, (1, 2), 0.5, "x")] == ["true", "", "1,2", "0.5", "x"]


def test_config_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(open(config_module.__file__, encoding="utf-8").read())
    imports = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imports |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imports <= {"__future__", "argparse", "dataclasses", "json", "math", "typing", "collections"}


# --- the mode: two values (H, W) train images, three (D, H, W) volumes ---

VOLUME_REFUSED = "image_size with three values .a volume. is read by the series data layer"


@pytest.mark.parametrize("text", ["32,96,96", "32x96x96", "[32, 96, 96]", "(32, 96, 96)", " 32 , 96 , 96 "])
def test_three_values_parse_depth_first(text: str) -> None:
    assert config_module.field_parsers()["image_size"](text) == (32, 96, 96)
    assert config_module.parse_size(format_value((32, 96, 96))) == (32, 96, 96)


@pytest.mark.parametrize("text", ["1,2,3,4", ""])
def test_image_size_parser_says_two_or_three(text: str) -> None:
    with pytest.raises(ValueError, match=r"two numbers \(H, W\) like 96,96 or three \(D, H, W\) like 32,96,96"):
        config_module.parse_size(text)


def test_check_image_size_returns_the_sizes_and_spatial_dims_follows_them() -> None:
    assert config_module.check_image_size([64, 80]) == (64, 80)
    assert config_module.check_image_size(("32", 96, 96)) == (32, 96, 96)
    assert config_module.spatial_dims(TrainConfig(image_size=(64, 80))) == 2
    assert config_module.spatial_dims(TrainConfig(network="resnet18", image_size=(16, 32, 32))) == 3
    # anything with an image_size: the 2-D DataOptions refuses a volume, the rule itself does not
    assert config_module.spatial_dims(types.SimpleNamespace(image_size=(32, 96, 96))) == 3


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((4, 96, 96), r"two sizes \(H, W\) or three \(D, H, W\), each between 8 and 4096"),
        ((32, 96, 5000), "each between 8 and 4096"),
        ((96,), "two sizes"),
        ((8, 8, 8, 8), "two sizes"),
        ((256, 256, 256), "16,777,216 voxels, over 4,194,304"),
        ((65, 256, 256), "over 4,194,304"),
    ],
)
def test_each_axis_and_a_volume_are_bounded(size: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_module.check_image_size(size)
    assert config_module.check_image_size((64, 256, 256)) == (64, 256, 256)  # exactly MAX_VOXELS


def test_a_volume_is_read_on_every_path_that_reads_image_size_and_the_2d_data_layer_refuses_it() -> None:
    volume = (32, 96, 96)
    assert TrainConfig(image_size=volume).image_size == volume
    assert TrainConfig.from_strings({"image_size": "32,96,96"}).image_size == volume
    assert config_module.from_arguments(build_parser().parse_args(["--image_size", "32,96,96"])).image_size == volume
    namespace = build_parser().parse_args([])
    assert config_module.from_arguments(namespace, {"image-size": json_to_string([32, 96, 96])}).image_size == volume
    with pytest.raises(ValueError, match=VOLUME_REFUSED):
        DataOptions(image_size=volume)  # the 2-D data layer's settings: two of three values would be read silently
    assert VolumeOptions(image_size=volume).image_size == volume


@pytest.mark.parametrize(
    ("network", "size", "message"),
    [
        ("densenet121", "16,96,96", "densenet121 in 3-D needs a depth of at least 29; got 16"),
        ("densenet201", "32,96,28", "densenet201 in 3-D needs a width of at least 29; got 28"),
        ("efficientnet-b1", "15,64,64", "efficientnet-b1 in 3-D needs a depth of at least 16; got 15"),
    ],
)
def test_a_size_the_network_cannot_pool_names_the_smallest_that_works(network: str, size: str, message: str) -> None:
    namespace = build_parser().parse_args(["--network", network, "--image_size", size])
    with pytest.raises(ValueError, match=message):
        config_module.from_arguments(namespace)


def test_2d_sizes_keep_their_rule_and_the_network_rule_is_there_to_call() -> None:
    assert TrainConfig(network="densenet121", image_size=(28, 96)).image_size == (28, 96)  # as before 3-D came
    with pytest.raises(ValueError, match="densenet121 in 2-D needs a height of at least 29; got 28"):
        config_module.check_network_input("densenet121", (28, 96))
    with pytest.raises(ValueError, match="efficientnet-b0 in 2-D needs a width of at least 32; got 31"):
        config_module.check_network_input("efficientnet-b0", (96, 31))


def test_the_smallest_sizes_pass_the_network_check() -> None:
    assert TrainConfig(network="densenet121", image_size=(29, 29)).image_size == (29, 29)
    assert TrainConfig(network="resnet18", image_size=(8, 8)).image_size == (8, 8)
    for network, smallest in config_module.SMALLEST_SIZE.items():
        size = (max(smallest, 8),) * 3
        config_module.check_network_input(network, size)
        assert TrainConfig(network=network, image_size=size).image_size == size

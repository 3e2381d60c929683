"""training/job/config.py: every hyperparameter in one dataclass, filled from strings as SageMaker sends them."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json

import pytest

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

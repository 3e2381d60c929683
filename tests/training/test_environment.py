"""training/job/environment.py: the SageMaker training contract, read in one place, with local defaults.

The end-to-end check (SageMaker's own driver running the job in an /opt/ml-like tree) is in test_job_sagemaker.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.job_sagemaker import ROOT
from training.job import environment
from training.job.train import build_parser, main


def _context(argv: list[str], env: dict[str, str]) -> environment.JobContext:
    namespace, _ = build_parser().parse_known_args(argv)
    return environment.read_context(namespace, env, interactive=True)


def _sagemaker_env(base: Path) -> dict[str, str]:
    """What SageMaker's drivers export (SDK v3 environment.py), as strings."""
    for channel in ("train", "test", "code", "sm_drivers"):
        (base / "input" / "data" / channel).mkdir(parents=True)
    hps = {
        "epochs": 5,
        "class_weighting": True,
        "image_size": [64, 64],
        "network": "resnet18",
        "sagemaker_program": "x",
    }
    return {
        "SM_MODEL_DIR": str(base / "model"),
        "SM_OUTPUT_DATA_DIR": str(base / "output" / "data"),
        "SM_OUTPUT_DIR": str(base / "output"),
        "SM_CHANNELS": json.dumps(["train", "test", "code", "sm_drivers"]),
        "SM_CHANNEL_TRAIN": str(base / "input" / "data" / "train"),
        "SM_CHANNEL_TEST": str(base / "input" / "data" / "test"),
        "SM_CHANNEL_CODE": str(base / "input" / "data" / "code"),
        "SM_CHANNEL_SM_DRIVERS": str(base / "input" / "data" / "sm_drivers"),
        "SM_HPS": json.dumps(hps),
        "SM_HOSTS": json.dumps(["algo-1", "algo-2"]),
        "SM_CURRENT_HOST": "algo-2",
        "SM_NUM_GPUS": "0",
        "SM_TRAINING_ENV": json.dumps({"job_name": "j"}),
        "TRAINING_JOB_NAME": "j",
        "TRAINING_IMAGE_VERSION": "1.2.3",
        "TRAINING_IMAGE_BASE": "pytorch:2.13-cpu",
        "TRAINING_CODE_COMMIT": "abc123",
    }


def test_sagemaker_environment(tmp_path: Path) -> None:
    context = _context([], _sagemaker_env(tmp_path))
    assert context.channels == {"train": tmp_path / "input/data/train", "test": tmp_path / "input/data/test"}
    assert context.model_dir == tmp_path / "model"
    assert context.output_dir == tmp_path / "output/data"
    assert context.hyperparameters == {
        "epochs": "5",
        "class_weighting": "true",
        "image_size": "[64, 64]",
        "network": "resnet18",
    }
    assert context.on_sagemaker and not context.progress_bar  # no tqdm bars in CloudWatch
    assert (context.hosts, context.current_host, context.num_gpus) == (("algo-1", "algo-2"), "algo-2", 0)
    assert context.image == {"version": "1.2.3", "base": "pytorch:2.13-cpu"}
    assert (context.code_commit, context.job_name) == ("abc123", "j")
    assert context.rank == 0


def test_local_defaults(tmp_path: Path) -> None:
    context = _context(["--train", str(tmp_path)], {})
    assert context.channels == {"train": tmp_path}
    assert (context.model_dir, context.output_dir) == (Path("model"), Path("output"))
    assert not context.on_sagemaker and context.progress_bar
    assert context.hyperparameters == {} and context.image == {} and context.code_commit is None
    assert (context.rank, context.world_size) == (0, 1)


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    env = _sagemaker_env(tmp_path / "sm")
    local = tmp_path / "local"
    local.mkdir()
    context = _context(["--train", str(local), "--model_dir", str(tmp_path / "m"), "--output-dir", "o"], env)
    assert context.channels["train"] == local
    assert (context.model_dir, context.output_dir) == (tmp_path / "m", Path("o"))


def test_torchrun_placement(tmp_path: Path) -> None:
    context = _context(["--train", str(tmp_path)], {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (context.rank, context.local_rank, context.world_size) == (3, 1, 4)


def test_missing_train_channel_says_how_to_give_it() -> None:
    with pytest.raises(ValueError, match="pass --train DIR"):
        _context([], {})


def test_channel_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the validation channel .* is not a directory"):
        _context(["--train", str(tmp_path), "--validation", str(tmp_path / "nope")], {})


def test_bad_sm_hps_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SM_HPS is not valid JSON"):
        _context(["--train", str(tmp_path)], {"SM_HPS": "{not json"})


def test_split_injected_arguments() -> None:
    ignored, rejected = environment.split_injected(["--sagemaker_program", "train.py", "--lr", "0.1", "--x"])
    assert ignored == ["--sagemaker_program", "train.py"]
    assert rejected == ["--lr", "0.1", "--x"]


def test_write_failure_only_under_sagemaker(tmp_path: Path) -> None:
    assert environment.write_failure("no", {}) is None
    path = environment.write_failure("bad data" * 500, {"SM_TRAINING_ENV": "{}", "SM_OUTPUT_DIR": str(tmp_path)})
    assert path == tmp_path / "failure"
    assert len(path.read_text()) == 1024


def test_unknown_flag_is_rejected_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--train", str(tmp_path), "--learning_rat", "0.1"], {})
    assert exit_info.value.code == 2
    assert "unknown arguments --learning_rat 0.1" in capsys.readouterr().err


def test_injected_flag_is_ignored_and_a_bad_value_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as exit_info:
        main(["--train", str(tmp_path), "--sagemaker_program", "x.py", "--epochs", "zero"], {})
    assert exit_info.value.code == 2
    assert "ignoring SageMaker's own arguments: --sagemaker_program x.py" in caplog.text
    assert "hyperparameter epochs='zero'" in capsys.readouterr().err


def test_unusable_data_exits_1_with_the_reason_in_the_failure_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "train").mkdir()
    env = {"SM_TRAINING_ENV": "{}", "SM_OUTPUT_DIR": str(tmp_path / "output"), "SM_MODEL_DIR": str(tmp_path / "m")}
    assert main(["--train", str(tmp_path / "train")], env) == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert reason in caplog.text and "train" in reason


def test_python_dash_m_training_help(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "--learning_rate" in done.stdout and "--model-dir" in done.stdout

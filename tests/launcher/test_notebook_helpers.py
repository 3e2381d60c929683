"""launcher/notebook.py: the notebook's kernel check, data check, figures, tables and clean-up."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pytest

from infra.lifecycle import render
from launcher import notebook
from launcher.notebook import KernelNotReadyError, check_kernel
from tests.launcher.conftest import Stack

matplotlib.use("Agg")  # before pyplot is imported by the helpers: no display here

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sagemaker.*")


def test_the_lifecycle_paths_are_the_lifecycle_script_s() -> None:
    assert str(notebook.STATE_DIR) == render.STATE_DIR
    assert str(notebook.STATE_DIR / notebook.KERNEL_READY) == render.KERNEL_READY_MARKER
    assert str(notebook.STATE_DIR / notebook.KERNEL_FAILED) == render.KERNEL_FAILED_MARKER
    assert str(notebook.STATE_DIR / notebook.KERNEL_LOG) == render.KERNEL_INSTALL_LOG


@pytest.fixture
def instance(tmp_path: Path) -> dict[str, Path]:
    """A notebook instance's files: its metadata file and the lifecycle's state folder."""
    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text('{"ResourceName": "nb"}')
    state = tmp_path / "state"
    state.mkdir()
    return {"instance_metadata": metadata, "state_dir": state}


def test_outside_a_notebook_instance_it_says_it_runs_locally(tmp_path: Path) -> None:
    message = check_kernel(state_dir=tmp_path / "none", instance_metadata=tmp_path / "none.json")
    assert message.startswith("Not on a SageMaker notebook instance: running locally")


def test_while_installing_it_says_wait_look_at_the_log_and_restart(instance: dict[str, Path]) -> None:
    with pytest.raises(KernelNotReadyError) as raised:
        check_kernel(**instance)
    message = str(raised.value)
    assert "still being installed" in message and str(instance["state_dir"] / "kernel-install.log") in message
    assert "restart the kernel" in message


def test_a_failed_install_names_its_reason_and_the_log(instance: dict[str, Path]) -> None:
    (instance["state_dir"] / "kernel-install-failed").write_text("pip install into /env exited with 1\n")
    with pytest.raises(KernelNotReadyError, match=r"failed: pip install into /env exited with 1\. Read .*"
                                                  r"kernel-install\.log.*restart the notebook instance"):
        check_kernel(**instance)


def test_an_instance_without_the_lifecycle_state_is_named(instance: dict[str, Path]) -> None:
    instance["state_dir"].rmdir()
    with pytest.raises(KernelNotReadyError, match="was not started with the stack's lifecycle configuration"):
        check_kernel(**instance)


def test_a_kernel_in_another_environment_is_told_to_change_kernel(instance: dict[str, Path], tmp_path: Path) -> None:
    (instance["state_dir"] / "kernel-ready").write_text(str(tmp_path / "envs" / "pytorch") + "\n")
    with pytest.raises(KernelNotReadyError, match="choose the conda_pytorch kernel"):
        check_kernel(**instance, prefix=str(tmp_path / "envs" / "other"), started=time.time())


def test_a_kernel_older_than_the_install_is_told_to_restart(instance: dict[str, Path], tmp_path: Path) -> None:
    env = tmp_path / "envs" / "pytorch"
    (instance["state_dir"] / "kernel-ready").write_text(f"{env}\n")
    with pytest.raises(KernelNotReadyError, match="installed after this kernel started.*restart the kernel"):
        check_kernel(**instance, prefix=str(env), started=time.time() - 3600)
    assert check_kernel(**instance, prefix=str(env), started=time.time() + 1).startswith(
        f"Kernel ready: packages installed into {env}")


def test_this_process_start_time_is_read_from_proc() -> None:
    started = notebook._process_start()
    assert started is not None and time.time() - 24 * 3600 < started <= time.time()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.local_demo import make_demo_data

    root = tmp_path_factory.mktemp("demo-data")
    make_demo_data(root, train_images=16, test_images=8)
    return root


def test_check_dataset_runs_the_job_s_check_on_every_channel(demo_data: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert notebook.check_dataset(demo_data) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"python -m training.check {demo_data / 'train'} --test={demo_data / 'test'}\n")
    assert "channel test: labels from labels.csv" in printed and "result: every labeled file is usable" in printed


def test_held_out_files_come_from_the_test_channel_classes_in_turn(demo_data: Path) -> None:
    held_out = notebook.held_out_files(demo_data, 4)
    assert len(held_out) == 4 and all(path.is_relative_to(demo_data / "test") for path, _ in held_out)
    assert {label for _, label in held_out[:2]} == {"normal", "abnormal"}  # each class first, then the rest


def test_without_a_test_or_validation_folder_nothing_is_held_out(demo_data: Path) -> None:
    with pytest.raises(ValueError, match="no test/ or validation/ folder"):
        notebook.held_out_files(demo_data / "train")


def test_show_samples_plots_the_counts_and_images_of_each_class(demo_data: Path) -> None:
    import matplotlib.pyplot as plt

    figure = notebook.show_samples(demo_data, per_class=2)
    try:
        images = [axis for axis in figure.axes if axis.images]
        assert len(images) == 4 and {axis.get_title() for axis in images} == {"normal", "abnormal"}
        (bars,) = [axis for axis in figure.axes if axis.patches]
        assert [text.get_text() for text in bars.get_legend().get_texts()] == ["train (16)", "test (8)"]
    finally:
        plt.close(figure)


@dataclass(frozen=True)
class Prediction:  # training.inference.Prediction's fields
    file: str
    label: str
    probabilities: dict[str, float]


def test_predictions_are_shown_with_probability_and_truth(demo_data: Path) -> None:
    import matplotlib.pyplot as plt

    (first, first_label), (second, second_label) = notebook.held_out_files(demo_data, 2)
    other = {"normal": "abnormal", "abnormal": "normal"}
    predictions = [Prediction(str(first), first_label, {first_label: 0.93, other[first_label]: 0.07}),
                   Prediction(str(second), other[second_label], {second_label: 0.4, other[second_label]: 0.6})]
    truth = {str(first): first_label, str(second): second_label}
    table = notebook.prediction_table(predictions, truth).splitlines()
    assert table[1].split() == [first.name, first_label, "0.930", first_label]
    assert table[2].split() == [second.name, other[second_label], "0.600", second_label]
    figure = notebook.show_predictions(predictions, truth, columns=4)
    try:
        titled = [axis for axis in figure.axes if axis.images]
        assert [axis.title.get_color() for axis in titled] == ["green", "red"]
        assert titled[0].get_title() == f"{first_label} (p=0.93)\ntrue: {first_label}"
    finally:
        plt.close(figure)


def test_summarize_gives_the_test_metrics_with_intervals() -> None:
    @dataclass(frozen=True)
    class Job:
        name: str

    @dataclass(frozen=True)
    class Results:
        job: Job
        status: str
        metrics: dict[str, object]

    metrics = {"best_epoch": 2, "epochs_run": 3, "seconds": 12.5, "validation": {"n": 8, "metrics": {}},
               "test": {"n": 40, "metrics": {"accuracy": {"value": 0.975, "ci95": [0.925, 1.0]},
                                             "auc": {"value": None, "ci95": [None, None]}}}}
    text = notebook.summarize(Results(Job("j"), "Completed", metrics))  # type: ignore[arg-type]
    assert text.splitlines() == ["j: Completed; best epoch 2 of 3, 12.5 s of training", "test set (40 images):",
                                 "  accuracy     0.975  (95% CI 0.925 to 1.000)",
                                 "  auc            n/a  (95% CI   n/a to   n/a)"]


def test_clean_up_leaves_an_ended_job_and_the_data_alone(stack: Stack, dicom_folder: Path) -> None:
    from launcher.datasets.upload import upload_dataset
    from launcher.jobs.launch import start_training

    settings = stack.settings
    manifest = upload_dataset(settings, dicom_folder, "cleanup", progress=False)
    job = start_training(settings, dataset=manifest)  # the SageMaker runner: moto reports it Completed
    text = notebook.clean_up(job, manifest)
    assert f"Training job {job.name} has ended (Completed): nothing to stop." in text
    assert f"Kept: the model {job.model_uri}" in text
    assert f"Kept: the dataset s3://{settings.bucket}/datasets/cleanup/ ({len(manifest.objects)} files)" in text
    assert notebook.clean_up(None).startswith("Nothing else runs on your behalf")


def test_the_package_imports_without_its_dependencies(tmp_path: Path) -> None:
    """check_kernel must run in a kernel whose packages are still being installed: no boto3 yet."""
    import subprocess
    import sys

    blocker = tmp_path / "boto3"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('boto3 is being installed')\n")
    code = ("from launcher.notebook import check_kernel; print(check_kernel())\n"
            "try:\n    from launcher import start_training\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Not on a SageMaker notebook instance")
    assert lines[1].startswith("ImportError: launcher.start_training is not available: boto3 is being installed")


def test_the_notebook_checks_with_the_deployment_s_pseudonym_key(stack: Stack, demo_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    from launcher.jobs.launch import PSEUDONYM_KEY_OBJECT

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = notebook.fetch_pseudonym_key(stack.settings)
    assert path == tmp_path / "config" / "monai-dicom-sagemaker" / "pseudonym-key"
    assert path.stat().st_mode & 0o777 == 0o600
    stored = boto3.Session().client("s3").get_object(Bucket=stack.settings.bucket, Key=PSEUDONYM_KEY_OBJECT)
    assert path.read_bytes() == stored["Body"].read()
    assert notebook.check_dataset(demo_data, stack.settings) == 0
    assert f"--pseudonym-key-file={path}" in capsys.readouterr().out

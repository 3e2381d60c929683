"""collect (download and open a job's archives) and list_jobs (the stack's jobs with their final metrics)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import boto3
import pytest

from launcher import job_contract
from launcher.datasets.upload import upload_dataset
from launcher.jobs.handle import STACK_TAG, TrainingJob, attach
from launcher.jobs.launch import start_training
from launcher.jobs.results import collect, list_jobs, unpack
from tests.launcher.conftest import BUCKET, STACK_NAME, Stack

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sagemaker.*")

HISTORY = [{"epoch": 1, "train_loss": 0.69, "val_loss": 0.65, "val_accuracy": 0.81, "val_auc": 0.9},
           {"epoch": 2, "train_loss": 0.42, "val_loss": 0.38, "val_accuracy": 0.91, "val_auc": 0.97}]
METADATA = {"version": "0.1.0", "name": "MONAI DICOM classifier", "classes": ["abnormal", "normal"],
            "lineage": {"job": {"name": None, "on_sagemaker": True}}}


def archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def job(stack: Stack, dicom_folder: Path) -> TrainingJob:
    manifest = upload_dataset(stack.settings, dicom_folder, "results", progress=False)
    return start_training(stack.settings, dataset=manifest)


@pytest.fixture(scope="module")
def finished(job: TrainingJob, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> TrainingJob:
    """The job's archives where SageMaker writes them (jobs/<job>/output/), encrypted with the stack's key."""
    from training.job.plots import learning_curve

    figure = learning_curve(HISTORY, tmp_path_factory.mktemp("figures") / "learning_curve.png", best_epoch=2)
    model = archive({job_contract.BUNDLE_METADATA: json.dumps(METADATA).encode(),
                     "models/model.pt": b"weights", "docs/README.md": b"# bundle"})
    output = archive({job_contract.METRICS_FILE: json.dumps({"best_epoch": 2, "history": HISTORY}).encode(),
                      "learning_curve.png": figure.read_bytes(), "confusion_matrix.csv": b"true\\predicted\n"})
    s3 = boto3.Session().client("s3")
    encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": stack.settings.data_key_arn}
    for uri, body in ((job.model_uri, model), (job.output_data_uri, output)):
        s3.put_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"), Body=body, **encryption)
    return job


def test_collect_opens_the_bundle_and_the_figures(finished: TrainingJob, tmp_path: Path) -> None:
    results = collect(finished, tmp_path)

    assert results.status == "Completed"
    assert results.directory == tmp_path / finished.name
    assert results.metadata == METADATA
    assert (results.model_dir / "models" / "model.pt").read_bytes() == b"weights"
    assert results.metrics["history"] == HISTORY
    assert [p.name for p in results.plots] == ["learning_curve.png"]
    assert results.plots[0].read_bytes().startswith(b"\x89PNG")
    assert isinstance(results.final_metrics, dict)


def test_attach_finds_an_earlier_job_of_the_stack(finished: TrainingJob, stack: Stack) -> None:
    assert attach(stack.settings, finished.name) == finished


def test_list_jobs_lists_this_stacks_jobs_only(finished: TrainingJob, stack: Stack) -> None:
    sagemaker = boto3.Session().client("sagemaker")
    other = {"AlgorithmSpecification": {"TrainingImage": stack.settings.training_image_uri,
                                        "TrainingInputMode": "File"},
             "RoleArn": stack.settings.training_role_arn,
             "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/jobs/"},
             "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
             "StoppingCondition": {"MaxRuntimeInSeconds": 60}}
    # Another stack whose name shares this one's prefix, and a job with this stack's prefix but no tag.
    sagemaker.create_training_job(TrainingJobName=f"{STACK_NAME}-2-abcd-20260101000000",
                                  Tags=[{"Key": STACK_TAG, "Value": f"{STACK_NAME}-2"}], **other)
    sagemaker.create_training_job(TrainingJobName=f"{STACK_NAME}-ffff-20260101000000", **other)

    summaries = list_jobs(stack.settings)

    assert [s.name for s in summaries] == [finished.name]
    summary = summaries[0]
    assert (summary.status, summary.dataset, summary.instance_type, summary.instance_count, summary.spot) == (
        "Completed", "results", "ml.m5.xlarge", 1, False)
    assert isinstance(summary.final_metrics, dict)  # moto reports a placeholder metric


def test_unsafe_archives_are_not_unpacked(tmp_path: Path) -> None:
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(archive({"../outside.txt": b"x"}))
    with pytest.raises(ValueError, match=r"'\.\./outside\.txt', which is not a plain file inside"):
        unpack(path, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()

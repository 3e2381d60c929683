"""The notebook, every cell, executed headless (nbclient) against the stack deployed on the emulator.

What `make demo` does, on a smaller run (small_size below: 200 + 40 images at 32x32, 3 epochs): the
stack is deployed with the real CDK CLI, the notebook runs on this Python's kernel with the local runner (the batch
transform and the endpoint served here by training.serve), and the tests read what its cells printed and displayed,
and what the emulator holds afterwards. The emulator records every request the kernel sends; a real IAM evaluator
then decides each call, and what it implies, against the synthesized template (tests/e2e/journey_calls.py).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dicomweb_client import DICOMwebClient

from demo.emulator import bootstrap, client, deploy, emulator_context, emulator_env, start_emulator
from demo.notebook import (
    INJECTED_TAG,
    NOTEBOOK,
    PARAMETERS_TAG,
    JourneySize,
    NotebookRun,
    inject_parameters,
    journey_parameters,
    notebook_env,
    pacs_parameters,
    run_notebook,
)
from demo.orthanc import orthanc_missing, start_orthanc
from launcher.jobs.launch import PSEUDONYM_KEY_OBJECT
from launcher.local.runner import descendants
from tests.e2e.journey_calls import (
    ALLOWED,
    NOT_A_ROLE_CALL,
    TOLERATED,
    JourneyCall,
    journey_calls,
    requests_for,
    stack_view,
    table,
)
from tests.infra.conftest import SynthCache
from tests.infra.iam import evaluate
from tests.processes import still_running
from training.job.metrics import parse_line

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(r"ignore:Tried to parse:UserWarning:moto\.")]

STACK = "MonaiDicomSageMaker"
JOURNEY_KEY = bytes(range(100, 132))  # the deployment's pseudonym key in this test (32 bytes)
STAND_INS = Path(__file__).with_name("stand_ins")


def small_size() -> JourneySize:
    """The tests: the demo's settings on half the images at 32x32, 3 epochs, no TorchScript, fewer bootstrap samples.

    200 training images leave 40 for validation: the demo's 95% validation accuracy then allows two mistakes, which
    keeps the check meaningful on a set this small (runs on a busy CPU are not bit-identical).
    """
    from training.local_demo import DEMO_HYPERPARAMETERS

    hyperparameters = {**DEMO_HYPERPARAMETERS, "image_size": "32,32", "epochs": "3", "bootstrap_samples": "200",
                       "torchscript": "false"}
    return JourneySize(200, 40, hyperparameters)


SIZE = small_size()


@dataclass(frozen=True)
class Journey:
    run: NotebookRun
    workdir: Path
    outputs: dict[str, str]  # the stack's CloudFormation outputs
    jobs: list[dict[str, Any]]  # ListTrainingJobs of the emulator after the run
    objects: list[str]  # the data bucket's keys after the run
    processes_after: list[int]  # processes this one started that were still there after the run
    transforms: list[dict[str, Any]]  # ListTransformJobs after the run
    left: dict[str, list[str]]  # the models, endpoint configs and endpoints the emulator still has after the run
    requests: list[dict[str, Any]]  # every request the notebook's kernel sent the emulator (demo/emulator.py)
    physical: dict[str, str]  # the stack's logical resource ids to the emulator's physical ids
    reports: list[dict[str, Any]]  # the SR instances the PACS holds after the run (QIDO-RS)


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    workdir = tmp_path_factory.mktemp("journey")
    earlier = set(descendants(os.getpid()))  # what other tests of this worker run (a server fixture, say)
    recording: list[dict[str, Any]] = []
    with start_emulator(recording=recording) as emulator:
        env = emulator_env(emulator)
        bootstrap(env)
        deploy(env, emulator_context())
        cloudformation = client(env, "cloudformation")
        described = cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
        physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in cloudformation.list_stack_resources(
            StackName=STACK)["StackResourceSummaries"] if r.get("PhysicalResourceId")}
        # The deployment's pseudonym key, fixed here (else made of random bytes on first use): the pulled files are
        # named by keyed pseudonyms, so a random key gave every run its own file order and patient split, and the
        # accuracy test its own training run (once 0.875 in 3 epochs).
        client(env, "s3").put_object(Bucket=outputs["DataBucketName"], Key=PSEUDONYM_KEY_OBJECT, Body=JOURNEY_KEY,
                                     ServerSideEncryption="aws:kms", SSEKMSKeyId=outputs["DataKeyArn"])
        recording.clear()  # the CLI's deploy: not the notebook's
        # The kernel loads tests/e2e/stand_ins/sitecustomize.py: the local runner's requests say which role they
        # stand in for.
        kernel_env = {**notebook_env(env, emulator), "PYTHONPATH": os.pathsep.join(
            [str(STAND_INS), *filter(None, [os.environ.get("PYTHONPATH")])])}
        missing = orthanc_missing()
        if missing:
            pytest.fail(missing)
        pacs = start_orthanc(workdir / "orthanc")  # the notebook's From your PACS, as make demo runs it
        try:
            parameters = journey_parameters(workdir, SIZE, stack_name=STACK) | pacs_parameters(
                pacs.dicomweb, workdir / "seed", SIZE)
            run = run_notebook(kernel_env, parameters, output=workdir / "executed.ipynb")
            reports = DICOMwebClient(pacs.dicomweb).search_for_instances(search_filters={"Modality": "SR"})
        finally:
            pacs.stop()
        requests = list(recording)
        sagemaker = client(env, "sagemaker")
        jobs = sagemaker.list_training_jobs()["TrainingJobSummaries"]
        objects = [o["Key"] for page in client(env, "s3").get_paginator("list_objects_v2").paginate(
            Bucket=outputs["DataBucketName"]) for o in page.get("Contents", [])]
        started = [pid for pid in descendants(os.getpid()) if pid not in earlier]
        transforms = sagemaker.list_transform_jobs()["TransformJobSummaries"]
        configs = sagemaker.list_endpoint_configs()["EndpointConfigs"]
        left = {"models": [m["ModelName"] for m in sagemaker.list_models()["Models"]],
                "endpoint configs": [c["EndpointConfigName"] for c in configs],
                "endpoints": [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]]}
        yield Journey(run, workdir, outputs, jobs, objects, started, transforms, left, requests, physical, reports)


def test_every_cell_ran_without_error(journey: Journey) -> None:
    run = journey.run
    assert run.error is None, run.error
    code = [c for c in run.notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [c.id for c in code if any(o.get("output_type") == "error" for o in c.outputs)]
    assert errors == []
    assert run.notebook.metadata.kernelspec.name == "conda_pytorch"  # what a notebook instance opens it with


def test_the_kernel_check_says_it_runs_locally_and_settings_come_from_the_stack(journey: Journey) -> None:
    assert "Not on a SageMaker notebook instance: running locally" in journey.run.text("kernel")
    stack = journey.run.text("stack")
    assert f"s3://{journey.outputs['DataBucketName']}" in stack
    assert f"the outputs of CloudFormation stack '{STACK}'" in stack
    assert "jobs run by:    local" in stack


def test_the_data_is_pulled_from_the_pacs_checked_and_shown(journey: Journey) -> None:
    pulled = journey.run.text("pacs-pull")
    for channel, images in (("train", SIZE.train_images), ("test", SIZE.test_images)):
        assert f"{channel}: {images} files pulled, 0 already here, 0 refused" in pulled
        assert f"labels.csv lists {images} files of {images} studies" in pulled
    check = journey.run.text("check")
    assert "python -m training.check" in check and "result: every labeled file is usable" in check
    assert re.search(r"channel train: labels from labels.csv .*, \d+ labeled DICOM file", check)
    assert re.search(r"channel test: labels from labels.csv .*, \d+ labeled DICOM file", check)
    assert journey.run.images("samples") == 1


def test_the_upload_lands_in_the_stack_bucket(journey: Journey) -> None:
    files = SIZE.train_images + SIZE.test_images + 2  # and a labels.csv in each channel
    bucket = journey.outputs["DataBucketName"]
    assert f"{files} files in s3://{bucket}/datasets/pacs/" in journey.run.text("upload")
    assert "datasets/pacs/manifest.json" in journey.objects
    assert not [key for key in journey.objects if ".link" in key]  # the link files stay on the notebook


def test_one_job_was_recorded_and_its_model_written_where_sagemaker_writes_it(journey: Journey) -> None:
    (job,) = journey.jobs
    name = job["TrainingJobName"]
    assert name.startswith(f"{STACK}-") and f"training job {name}" in journey.run.text("train")
    assert {f"jobs/{name}/output/model.tar.gz", f"jobs/{name}/output/output.tar.gz"} <= set(journey.objects)
    assert name in journey.run.text("jobs")


def test_the_job_reached_the_accuracy_the_job_s_tests_promise(journey: Journey) -> None:
    followed = journey.run.text("follow")
    epochs = [parse_line(line) for line in followed.splitlines() if line.startswith("epoch=")]
    assert 1 <= len(epochs) <= int(SIZE.hyperparameters["epochs"])
    assert "Completed" in followed
    assert max(row["validation:accuracy"] for row in epochs) >= 0.95  # tests/training/test_job_sagemaker.py
    (test_line,) = [line for line in followed.splitlines() if line.startswith("test_accuracy=")]
    assert parse_line(test_line)["test:accuracy"] >= 0.85


def test_the_results_are_summarized_and_plotted(journey: Journey) -> None:
    results = journey.run.text("results")
    assert re.search(r"test set \(\d+ images\):", results) and re.search(r"accuracy +\d\.\d{3} +\(95% CI", results)
    # the learning curve, the confusion matrix, the reliability diagram, and the ROC and precision-recall curves
    assert journey.run.images("results") == 4
    assert re.search(r"operating point: threshold \d\.\d{3} \(the threshold hyperparameter\)", results)
    assert re.search(r"calibration: temperature \d+\.\d{3}; test ECE \d\.\d{3} -> \d\.\d{3}", results)
    assert re.search(r"test set by subgroup .*\nattribute +value +n +accuracy", results)
    assert re.search(r"\nModality +(CT|CR|other) +\d+ +\d\.\d{3} \(", results)  # the synthetic set's modalities


def test_held_out_files_are_predicted_in_the_kernel(journey: Journey) -> None:
    table = journey.run.text("predict").strip().splitlines()
    rows = [line.split() for line in table[1:]]
    assert table[0].split() == ["file", "predicted", "probability", "true"]
    assert len(rows) == SIZE.predict_count
    assert all(row[1] in ("normal", "abnormal") and 0.5 <= float(row[2]) <= 1.0 for row in rows)
    assert {row[3] for row in rows} == {"normal", "abnormal"}  # both classes held out and shown
    assert sum(row[1] == row[3] for row in rows) >= SIZE.predict_count - 2
    assert journey.run.images("predict") == 1
    assert journey.run.images("explain") == 1  # the held-out images' overlays (launcher/explain.py show_overlays)


def test_held_out_predictions_go_back_to_the_pacs_as_structured_reports(journey: Journey) -> None:
    count = SIZE.predict_count  # one study per image (demo/pacs.py): as many original studies
    assert f"{count} structured reports stored in {count} original studies of the PACS" in journey.run.text("pacs-push")
    assert len(journey.reports) == count  # what QIDO-RS finds after the run (the SRs themselves: test_pacs_push.py)


def _table(text: str) -> dict[str, tuple[str, float, str]]:
    """prediction_table's rows: file name -> (predicted, probability, true)."""
    lines = text.strip().splitlines()
    assert lines[0].split() == ["file", "predicted", "probability", "true"]
    return {row[0]: (row[1], float(row[2]), row[3]) for row in (line.split() for line in lines[1:])}


def test_a_batch_transform_classified_every_held_out_file_as_the_kernel_did(journey: Journey) -> None:
    (transform,) = journey.transforms
    name = transform["TransformJobName"]
    assert transform["TransformJobStatus"] == "Completed"
    assert f"batch transform {name}: {SIZE.predict_count} files in s3://" in journey.run.text("transform")
    (job,) = journey.jobs
    inputs = [k for k in journey.objects if k.startswith(f"inference/{job['TrainingJobName']}/input/")]
    outputs = [k for k in journey.objects if k.startswith(f"inference/{job['TrainingJobName']}/output/")]
    assert len(inputs) == SIZE.predict_count
    assert sorted(outputs) == sorted(k.replace("/input/", "/output/", 1) + ".out" for k in inputs)
    batch, kernel = _table(journey.run.text("transform-results")), _table(journey.run.text("predict"))
    assert set(batch) == set(kernel) and len(batch) == SIZE.predict_count
    for file, (label, probability, true) in batch.items():  # the same bundle, served: the same answers
        assert (label, true) == (kernel[file][0], kernel[file][2])
        assert probability == pytest.approx(kernel[file][1], abs=0.002)


def test_the_endpoint_answered_one_file(journey: Journey) -> None:
    text = journey.run.text("endpoint")
    match = re.search(r"endpoint (\S+) on (\S+) \(true label (\w+)\) answered:\n(.*)", text)
    assert match, text
    assert match.group(1).startswith(f"{STACK}-endpoint-")
    assert "'label': " in match.group(4) and "'probabilities': {" in match.group(4)


def test_clean_up_deletes_the_endpoint_and_model_stops_nothing_that_ended_and_says_what_stays(
        journey: Journey) -> None:
    text = journey.run.text("cleanup")
    assert re.search(rf"Deleted the endpoint {STACK}-endpoint-\S+ and its configuration", text)
    assert re.search(rf"Deleted the model {STACK}-model-\S+ ", text)
    assert journey.left == {"models": [], "endpoint configs": [], "endpoints": []}
    assert "has ended (Completed): nothing to stop" in text
    assert "Kept: the model s3://" in text and "Kept: the dataset s3://" in text



def test_no_output_names_a_patient_or_holds_a_guessable_pseudonym(journey: Journey) -> None:
    from tests.pseudonyms import guessable
    from training.dataset.dicom import read_header

    ids = sorted({read_header(path).patient_id for path in (journey.workdir / "seed").rglob("img-*")})
    assert len(ids) >= SIZE.train_images // 8  # about 4 images a patient
    shown = (journey.workdir / "executed.ipynb").read_text(encoding="utf-8")  # every cell's output, as saved
    collected = [p for p in (journey.workdir / "results").rglob("*") if p.is_file()]  # bundle, metrics, figures
    assert any(p.name == "metrics.json" for p in collected)
    written = shown + "\n".join(p.read_bytes().decode("latin-1") for p in collected)
    assert [value for value in ids if value in written] == []
    assert [value for value in guessable(ids) if value in written] == []
    assert re.search(r"\bp-[0-9a-f]{16}\b", written)  # patients are named, by keyed pseudonyms


def test_iam_allows_every_call_of_the_journey_and_denies_its_neighbours(journey: Journey,
                                                                        synth: SynthCache) -> None:
    """Issue 18 item 4: every AWS call the notebook and the launcher made, what the local stand-ins did as the
    training and model roles, and what AWS does on their behalf (tests/e2e/journey_calls.py), evaluated by a real IAM
    evaluator (tests/infra/iam.py) against the synthesized template's policies, bucket policy and key policy, in
    both network variants; the must-deny calls beside them refused. The journey ran once, without a VPC: in the VPC
    variant, CreateTrainingJob and CreateModel carry that template's subnets and security group, as the launcher
    sends them there. The table prints with -s (and on failure)."""
    items: list[tuple[str, JourneyCall]] = []
    requests = []
    for variant in ("default", "vpc"):
        stack = stack_view(synth.get(variant).doc, journey.physical, journey.outputs["TrainingImageUri"])
        found = list(journey_calls(journey.requests, stack))
        items += [(variant, item) for item in found]
        requests += requests_for(found, stack)
    verdicts = evaluate(requests)
    rows = [(variant, item, verdict) for (variant, item), verdict in zip(items, verdicts, strict=True)]
    print(table(rows))
    recorded = {item.call.action for _, item in items if item.origin == "recorded"}
    assert {"sagemaker:CreateTrainingJob", "sagemaker:CreateModel", "sagemaker:CreateTransformJob",
            "sagemaker:CreateEndpoint", "s3:PutObject", "logs:GetLogEvents"} <= recorded
    assert {item.origin for _, item in items} == {"recorded", "stand-in", "implied", "must-deny", "exempt"}
    unasserted = {(item.role, item.call.action) for _, item in items if item.expected == "any"}
    assert unasserted == set(NOT_A_ROLE_CALL) | set(TOLERATED)  # each exemption still needed, none more
    assert {item.role for _, item in items if item.origin == "stand-in"} == {"TrainingRole", "ModelRole"}
    needed_but_denied = [f"{v} {i.role} {i.call}" for v, i, x in rows if i.expected == ALLOWED and x != ALLOWED]
    allowed_but_must_not = [f"{v} {i.role} ({i.why}): {i.call}" for v, i, x in rows
                            if i.expected == "denied" and x == ALLOWED]
    assert not needed_but_denied, "needed calls denied:\n" + "\n".join(needed_but_denied)
    assert not allowed_but_must_not, "must-deny calls allowed:\n" + "\n".join(allowed_but_must_not)


def test_nothing_is_left_running(journey: Journey) -> None:
    deadline = time.monotonic() + 10  # one caught mid-exit has a few seconds to finish
    while still_running(journey.processes_after) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert still_running(journey.processes_after) == []


def test_the_notebook_as_committed_opens_on_conda_pytorch_with_short_cells_and_one_data_cell() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "conda_pytorch"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # committed without outputs
    assert max(len(c.source.splitlines()) for c in code) <= 10  # the logic lives in launcher/ and training/
    assert len([c for c in code if "DATA_DIR = " in c.source and "YOUR DATA" in c.source]) == 1
    assert [c.id for c in code if PARAMETERS_TAG in c.metadata.get("tags", [])] == ["parameters"]


def test_parameters_go_right_after_the_parameters_cell() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    inject_parameters(notebook, {"WORK_DIR": "/tmp/x", "HYPERPARAMETERS": {"epochs": "1"}})
    ids = [c.id for c in notebook.cells]
    assert ids[ids.index("parameters") + 1] == INJECTED_TAG
    assert notebook.cells[ids.index(INJECTED_TAG)].source.splitlines()[1:] == [
        "WORK_DIR = '/tmp/x'", "HYPERPARAMETERS = {'epochs': '1'}"]
    for cell in notebook.cells:
        cell.metadata.pop("tags", None)
    with pytest.raises(ValueError, match="has no cell tagged 'parameters'"):
        inject_parameters(notebook, {})

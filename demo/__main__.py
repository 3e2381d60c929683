"""`python -m demo` (what `make demo` runs): the whole journey on a local AWS emulator, no AWS account needed.

Starts moto's server in this process, synthesizes the app, bootstraps the emulator and deploys the default stack with
the real CDK CLI, shows what was created, then executes the notebook (notebooks/dicom_training.ipynb) headless with
nbclient against it, as a user would on the notebook instance: the synthetic DICOM set is generated, checked and
uploaded, the training job is created in the emulator and run on this machine by the local runner
(launcher/local/runner.py), its results are collected and plotted, and the model classifies held-out images. The
executed notebook is written to demo-output/ (with the data and results under demo-output/work/). Finally it runs
`python -m infra.teardown` (what `make destroy` runs), which prints what the stack kept. Everything it starts is
stopped before it returns, and it checks that no process of its own is left.

`python -m demo --volumes` walks the notebook's 3-D setting instead (an image_size of three values, demo/notebook.py
volume_parameters): synthetic CT series trained, predicted, transformed and served as volumes; no PACS.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from demo.emulator import (
    ROOT,
    CdkError,
    Emulator,
    bootstrap,
    client,
    context_args,
    deploy,
    emulator_context,
    emulator_env,
    run_process,
    start_emulator,
    synth,
    timed,
)
from demo.notebook import (
    NOTEBOOK,
    NotebookRun,
    demo_size,
    first_line,
    journey_parameters,
    notebook_env,
    pacs_parameters,
    run_notebook,
    volume_parameters,
)
from demo.orthanc import Orthanc, orthanc_missing, start_orthanc

DEFAULT_STACK = "MonaiDicomSageMaker"
BOOTSTRAP_STACK = "CDKToolkit"
TEARDOWN_TIMEOUT_S = 300
OUTPUT_DIR = ROOT / "demo-output"  # git-ignored
EXECUTED_NOTEBOOK = OUTPUT_DIR / "dicom_training.ipynb"
WORK_DIR = OUTPUT_DIR / "work"  # the notebook's WORK_DIR: generated data, collected results


def step(title: str) -> None:
    """Print a step's title."""
    print(f"\n==> {title}", flush=True)


def owners(env: Mapping[str, str], stacks: list[str]) -> dict[str, str]:
    """Which stack created each physical resource id (bucket names, key ids, role names).

    Args:
        env: the emulator's environment.
        stacks: stack names to look in.
    """
    cfn, owner = client(env, "cloudformation"), {}
    for stack in stacks:
        for resource in cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]:
            if resource.get("PhysicalResourceId"):
                owner[resource["PhysicalResourceId"]] = stack
    return owner


def show_created(env: Mapping[str, str], stack: str) -> None:
    """Print the stack's outputs and the buckets, keys and roles the emulator now holds, with the stack of each.

    Args:
        env: the emulator's environment.
        stack: the deployed stack's name.
    """
    outputs = client(env, "cloudformation").describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    print(f"Outputs of {stack}:")
    for output in sorted(outputs, key=lambda o: o["OutputKey"]):
        print(f"  {output['OutputKey']:<18} {output['OutputValue']}")
    owner = owners(env, [stack, BOOTSTRAP_STACK])

    def listing(title: str, items: list[tuple[str, str]]) -> None:
        print(f"{title}:")
        for shown, physical_id in sorted(items):
            print(f"  {shown}  [{owner.get(physical_id, 'not from a stack')}]")

    listing("S3 buckets", [(b["Name"], b["Name"]) for b in client(env, "s3").list_buckets()["Buckets"]])
    # KeyArn from list_keys: moto's DescribeKey fails on keys that its CloudFormation created.
    listing("KMS keys", [(k["KeyArn"], k["KeyId"]) for k in client(env, "kms").list_keys()["Keys"]])
    listing("IAM roles", [(r["RoleName"], r["RoleName"]) for r in client(env, "iam").list_roles()["Roles"]])
    notebooks = client(env, "sagemaker").list_notebook_instances()["NotebookInstances"]
    listing("SageMaker notebook instances",
            [(f"{n['NotebookInstanceName']} ({n['NotebookInstanceStatus']})", n["NotebookInstanceArn"])
             for n in notebooks])


def teardown(env: Mapping[str, str], context: Mapping[str, Any]) -> None:
    """Run `python -m infra.teardown` against the emulator and print its report.

    Args:
        env: the emulator's environment.
        context: the context the stack was deployed with.

    Raises:
        RuntimeError: teardown failed; the message holds its output.
    """
    command = [sys.executable, "-m", "infra.teardown", *context_args(context)]
    done = run_process(command, env, timeout_s=TEARDOWN_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed with exit status {done.returncode}:\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(done.stdout.rstrip())


def start_pacs(running: ExitStack) -> Orthanc | None:
    """A local Orthanc (demo/orthanc.py) holding the synthetic set (demo/pacs.py), stopped with `running`; None,
    with what to do, where Orthanc is not installed (the notebook then reads the synthetic set from a folder)."""
    missing = orthanc_missing()
    if missing:
        print(f"no local PACS: {missing}. The notebook reads the synthetic set from a folder instead.")
        return None
    shutil.rmtree(OUTPUT_DIR / "orthanc", ignore_errors=True)  # a fresh PACS, as the emulator is fresh
    server = start_orthanc(OUTPUT_DIR / "orthanc")
    running.callback(server.stop)
    return server


def run_journey(emulator: Emulator, env: Mapping[str, str], stack: str, pacs: Orthanc | None, *,
                volumes: bool = False) -> NotebookRun:
    """Execute the notebook against the deployed stack with the local runner, printing each cell as it ends.

    Args:
        emulator: the running emulator.
        env: the emulator's environment.
        stack: the deployed stack's name.
        pacs: the local PACS the notebook pulls the synthetic set from and pushes its results to, or None.
        volumes: the notebook's 3-D setting (volume_parameters).
    """
    shutil.rmtree(WORK_DIR, ignore_errors=True)  # a fresh emulator: start from fresh data too

    def progress(number: int, count: int, cell: Any, seconds: float) -> None:
        print(f"  [{number:>2}/{count}] {seconds:6.1f} s  {first_line(cell)}", flush=True)

    size = demo_size()
    print(f"synthetic set: {size.train_images} training + {size.test_images} test images; hyperparameters "
          + " ".join(f"{k}={v}" for k, v in size.hyperparameters.items()), flush=True)
    parameters = journey_parameters(WORK_DIR, size, stack_name=stack)
    if volumes:
        parameters |= volume_parameters()
        print(f"volumes: hyperparameters {parameters['HYPERPARAMETERS']}", flush=True)
    if pacs is not None:
        parameters |= pacs_parameters(pacs.dicomweb, WORK_DIR / "seed", size)
        print(f"the synthetic set is stored in the local PACS at {pacs.dicomweb}, one study per image, with one "
              "labels CSV per channel (demo/pacs.py)", flush=True)
    return run_notebook(notebook_env(env, emulator), parameters, output=EXECUTED_NOTEBOOK, on_cell=progress)


def show_journey(run: NotebookRun) -> None:
    """Print what the notebook's cells printed about training, results and predictions."""
    for title, cell_id in (("From your PACS (pulled, de-identified, labelled)", "pacs-pull"),
                           ("The job's epochs (follow)", "follow"), ("Results (collect)", "results"),
                           ("Predictions on held-out images", "predict"), ("Heat maps", "explain"),
                           ("Back to your PACS", "pacs-push"),
                           ("Batch transform (the local runner serves the bundle)", "transform-results"),
                           ("Real-time endpoint", "endpoint"), ("Clean up", "cleanup")):
        print(f"--- {title}")
        print(run.text(cell_id).rstrip())
    print(f"--- The executed notebook, with its figures: {EXECUTED_NOTEBOOK.relative_to(ROOT)}")


def structured_reports(pacs: Orthanc) -> list[dict[str, Any]]:
    """The SR instances the PACS holds (QIDO-RS)."""
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(pacs.dicomweb).search_for_instances(search_filters={"Modality": "SR"})


def leftover_processes() -> list[str]:
    """Processes this one started that still run (zombies aside): none once the demo has stopped everything."""
    from launcher.local.runner import descendants

    left = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
            left.append(f"{pid} {command}")
        except OSError:
            continue
    return left


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Walk the journey on the emulator; print each step's duration.

    Args:
        argv: the arguments (default sys.argv[1:]): `--volumes` for the 3-D setting.

    Returns:
        The exit status.
    """
    arguments = sys.argv[1:] if argv is None else argv
    if set(arguments) - {"--volumes"}:
        print("usage: python -m demo [--volumes]", file=sys.stderr)
        return 2
    volumes = "--volumes" in arguments
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the CLI and the emulator are stopped too
    timings: dict[str, float] = {}
    context = emulator_context()
    stack = str(context.get("stackName", DEFAULT_STACK))
    start = time.perf_counter()
    journey: NotebookRun | None = None
    try:
        with ExitStack() as running:
            step("Starting the local AWS emulator (moto's server, in this process)")
            with timed(timings, "start emulator"):
                emulator = running.enter_context(start_emulator())
            print(f"Emulator at {emulator.endpoint}; account 123456789012, region us-east-1, dummy credentials")
            env = emulator_env(emulator)
            step("npx cdk synth --quiet (cdk-nag checks included)")
            with timed(timings, "synth"):
                synth(env, context)
            step("npx cdk bootstrap aws://123456789012/us-east-1")
            with timed(timings, "bootstrap"):
                bootstrap(env)
            step(f"npx cdk deploy {' '.join(context_args(context))}")
            with timed(timings, "deploy"):
                deploy(env, context)
            step("Created in the emulator")
            show_created(env, stack)
            pacs = None
            if not volumes:  # the PACS holds the 2-D synthetic set
                step("A local PACS (Orthanc with DICOMweb) for the notebook's From your PACS")
                with timed(timings, "start PACS"):
                    pacs = start_pacs(running)
            step(f"The notebook {NOTEBOOK.relative_to(ROOT)}, headless (nbclient), with the local runner")
            with timed(timings, "notebook"):
                journey = run_journey(emulator, env, stack, pacs, volumes=volumes)
            if "train" in journey.seconds:
                timings["  of which the job"] = journey.seconds["train"]
            if journey.error is None:
                show_journey(journey)
                if pacs is not None:
                    print(f"--- The local PACS now holds {len(structured_reports(pacs))} DICOM SR instances "
                          "(QIDO-RS, Modality SR), each in its original study")
            else:
                print(f"the notebook stopped: {journey.error}\n(the executed notebook, up to there: "
                      f"{EXECUTED_NOTEBOOK.relative_to(ROOT)})", file=sys.stderr)
            step(f"python -m infra.teardown {' '.join(context_args(context))}   (what `make destroy` runs)")
            with timed(timings, "teardown (destroy)"):
                teardown(env, context)
            step("Stopping the emulator")
            with timed(timings, "stop emulator"):
                running.close()
    except (CdkError, RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"\ndemo failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted: the emulator and the CLI are stopped", file=sys.stderr)
        return 130
    timings["total"] = time.perf_counter() - start
    step("Timings")
    for name, seconds in timings.items():
        print(f"  {name:<20} {seconds:6.1f} s")
    left = leftover_processes()
    print("No process of the demo is left running." if not left else
          "Still running (not stopped by the demo):\n  " + "\n  ".join(left))
    return 1 if journey is None or journey.error is not None or left else 0


if __name__ == "__main__":
    sys.exit(main())

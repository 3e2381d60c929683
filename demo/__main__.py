"""`python -m demo` (what `make demo` runs): the stack's journey on a local AWS emulator, no AWS account needed.

Starts moto's server in this process, synthesizes the app, bootstraps the emulator and deploys the default stack with
the real CDK CLI, shows what was created, then runs `python -m infra.teardown` (what `make destroy` runs), which prints
what the stack kept. Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from demo.emulator import (
    CdkError,
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

DEFAULT_STACK = "MonaiDicomSageMaker"
BOOTSTRAP_STACK = "CDKToolkit"
TEARDOWN_TIMEOUT_S = 300


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Walk the journey on the emulator; print each step's duration.

    Returns:
        The exit status.
    """
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the CLI and the emulator are stopped too
    timings: dict[str, float] = {}
    context = emulator_context()
    start = time.perf_counter()
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
            show_created(env, str(context.get("stackName", DEFAULT_STACK)))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

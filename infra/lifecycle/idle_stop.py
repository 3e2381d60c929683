"""Idle auto-stop of the notebook instance: stops it once no Jupyter kernel or terminal was active for MINUTES.

on_start.sh installs a systemd timer that runs this file from the repository's clone every 5 minutes, as the notebook
user (`User=ec2-user`: never root, since the clone is the user's to edit), with the instance role's credentials from
the instance metadata:

    python infra/lifecycle/idle_stop.py MINUTES METADATA_FILE JUPYTER_URL AWS_CLI REGION

The boot counts as activity, and a busy kernel is activity now. It exits 0 once it asked SageMaker to stop the instance
named in METADATA_FILE (/opt/ml/metadata/resource-metadata.json; the region is taken from its ARN, else REGION), with
AWS_CLI when that is executable, else boto3; otherwise it exits 1 with the reason (`journalctl -u
monai-dicom-idle-stop`). Standard library only (boto3 aside): it runs on the Python of Jupyter's own conda env, which
may be older than the repository's.
"""

from __future__ import annotations

import json
import os
import pwd
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

USAGE = "usage: idle_stop.py MINUTES METADATA_FILE JUPYTER_URL AWS_CLI REGION"


def last_activity(item: dict[str, Any]) -> float:
    """The POSIX time of a kernel's or terminal's `last_activity` (Jupyter's UTC ISO 8601); 0 when it has none."""
    stamp = (item.get("last_activity") or "1970-01-01")[:19]
    return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp()  # noqa: UP017 (Python < 3.11)


def idle_minutes(sessions: list[dict[str, Any]], terminals: list[dict[str, Any]], *, now: float,
                 boot: float) -> float | None:
    """Minutes since the last activity of any kernel or terminal, or since the boot; None while a kernel is busy.

    Args:
        sessions: Jupyter's /api/sessions (each with its "kernel").
        terminals: Jupyter's /api/terminals.
        now: the current POSIX time.
        boot: the POSIX time the instance booted.
    """
    kernels = [s.get("kernel") or {} for s in sessions]
    if any(k.get("execution_state") == "busy" for k in kernels):
        return None
    return (now - max([boot] + [last_activity(i) for i in kernels + terminals])) / 60


def main(argv: Sequence[str]) -> int:
    """Check once and stop the instance when it has been idle long enough (module docstring); the exit status."""
    if len(argv) != 5:
        print(USAGE, file=sys.stderr)
        return 2
    minutes, metadata, url, cli, region = argv
    context = ssl._create_unverified_context()  # Jupyter's certificate on localhost is self-signed

    def get(path: str) -> Any:
        with urllib.request.urlopen(url + path, context=context, timeout=30) as answer:
            return json.load(answer)

    try:
        sessions, terminals = get("/api/sessions"), get("/api/terminals")
    except Exception as error:  # noqa: BLE001 (whatever fails, the instance is left running)
        print(f"Jupyter not reachable at {url} ({error})", file=sys.stderr)
        return 1
    with open("/proc/uptime") as uptime:
        boot = time.time() - float(uptime.read().split()[0])
    idle = idle_minutes(sessions, terminals, now=time.time(), boot=boot)
    if idle is None:
        print("a kernel is busy", file=sys.stderr)
        return 1
    if idle < int(minutes):
        print(f"idle for {idle:.0f} of {minutes} minutes", file=sys.stderr)
        return 1
    try:
        with open(metadata) as f:
            meta = json.load(f)
    except OSError as error:
        print(f"cannot read {metadata} as {pwd.getpwuid(os.getuid()).pw_name} ({error}): it names the instance to "
              "stop", file=sys.stderr)
        return 1
    name, arn = meta["ResourceName"], meta.get("ResourceArn", "").split(":")
    region = arn[3] if len(arn) > 3 else region
    print(f"idle for {idle:.0f} minutes: stopping {name} in {region}", flush=True)
    if os.access(cli, os.X_OK):
        subprocess.run([cli, "sagemaker", "stop-notebook-instance", "--notebook-instance-name", name,
                        "--region", region], check=True)
    else:
        import boto3  # noqa: PLC0415 (JupyterSystemEnv has it; only needed where the aws CLI is missing)

        boto3.client("sagemaker", region_name=region).stop_notebook_instance(NotebookInstanceName=name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

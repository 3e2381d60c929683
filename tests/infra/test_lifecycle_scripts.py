"""The rendered lifecycle scripts, run with the real bash and git in a sandbox.

Each test gets its own home directory under tmp_path, a bare git repository as the remote (the rendered HTTPS URL is
mapped onto it with git's `url.<base>.insteadOf`, given through GIT_CONFIG_* variables, so the scripts run unchanged),
a fake conda layout whose env holds a fake pip, and a fake systemctl. AS_USER is empty: commands run as the test's
user. Nothing outside tmp_path is written; the background kernel install each on_start starts is waited for, and
killed with its whole session, at the end of every test.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from infra.lifecycle import render
from training.container.verify import read_lock

REPO_URL = "https://git.example.invalid/org/monai-dicom-sagemaker.git"
UNREACHABLE_URL = "https://127.0.0.1:9/org/monai-dicom-sagemaker.git"  # nothing listens on port 9: refused at once
# The training image's packages come unpinned, their versions from the lock (constraints).
PACKAGES = ["sagemaker>=3.27,<4", "s3fs==2026.9.0", "monai", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
            "pylibjpeg-openjpeg", "pylibjpeg-rle"]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"
ROOT = Path(__file__).resolve().parents[2]
# Files of the repository that on_start.sh uses from the clone: the remote carries the real ones.
LOCK = "training/requirements-lock.txt"
IDLE_CHECKER = "infra/lifecycle/idle_stop.py"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
                "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}

# FAKE_PIP_WAIT: a file the fake pip waits for (at most 30 s) before it ends, so a test decides when "pip" is done.
FAKE_PIP = """#!/bin/bash
printf '%s\\n' "$@" >"$FAKE_LOG/pip.args"
if [ -n "${FAKE_PIP_WAIT:-}" ]; then
  for _ in $(seq 600); do [ -e "$FAKE_PIP_WAIT" ] && break; sleep 0.05; done
fi
exit "${FAKE_PIP_RC:-0}"
"""
FAKE_RECORDER = """#!/bin/bash
echo "$*" >>"$FAKE_LOG/{name}.calls"
"""


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the real git in `cwd` with a clean configuration; its stripped output."""
    full = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1", **GIT_IDENTITY, **(env or {})}
    return subprocess.run(["git", *args], cwd=cwd, env=full, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Remote:
    """A bare repository standing for the HTTPS remote, and the working repository that pushes to it."""

    bare: Path
    work: Path
    commits: list[str] = field(default_factory=list)

    def commit(self, name: str, *, push: bool = True) -> str:
        (self.work / name).write_text(f"{name}\n")
        git(self.work, "add", name)
        git(self.work, "commit", "-q", "-m", f"add {name}")
        sha = git(self.work, "rev-parse", "HEAD")
        if push:
            git(self.work, "push", "-q", "origin", "main", "--tags")
            self.commits.append(sha)
        return sha


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    """A remote with two commits on main and a tag v1 on the first, which has this checkout's lock and idle checker."""
    work, bare = tmp_path / "work", tmp_path / "remote.git"
    work.mkdir()
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(bare))
    (work / "notebooks").mkdir()
    for path in (LOCK, IDLE_CHECKER):
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, work / path)
        git(work, "add", path)
    result = Remote(bare, work)
    result.commit("notebooks/dicom_training.ipynb")
    git(work, "tag", "v1")
    result.commit("README.md")
    return result


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid:
                members.append(int(entry.name))
    return members


def wait_for(path: Path, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


@dataclass
class Sandbox:
    """A notebook instance's file system in miniature, and the environment that points the scripts at it."""

    root: Path
    remote: Remote
    env: dict[str, str]
    started: bool = False

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def state(self) -> Path:
        return self.home / "SageMaker" / ".monai-dicom"

    @property
    def clone(self) -> Path:
        return self.home / "SageMaker" / render.repo_dir_name(REPO_URL)

    @property
    def fake_log(self) -> Path:
        return Path(self.env["FAKE_LOG"])

    @property
    def units(self) -> Path:
        return Path(self.env["SYSTEMD_DIR"])

    def run(self, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run a rendered script with bash, as SageMaker does (from /), and time it."""
        path = self.root / "hook.sh"
        path.write_text(script)
        if "on_start" in script.splitlines()[1]:
            self.started = True
        start = time.monotonic()
        done = subprocess.run(["bash", str(path)], cwd="/", env={**self.env, **extra}, capture_output=True,
                              text=True, timeout=120)
        done.elapsed = time.monotonic() - start  # type: ignore[attr-defined]
        return done

    def finish_background(self) -> None:
        """Wait for the kernel install an on_start started, then kill whatever of its session is left."""
        deadline = time.monotonic() + 15
        while self.started and time.monotonic() < deadline and not any(
            (self.state / marker).exists() for marker in ("kernel-ready", "kernel-install-failed")
        ):
            time.sleep(0.05)
        pid_file = self.state / "kernel-install.pid"
        if pid_file.exists():
            for pid in _session_members(int(pid_file.read_text())):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def sandbox(tmp_path: Path, remote: Remote) -> Iterator[Sandbox]:
    home = tmp_path / "home"
    (home / "SageMaker").mkdir(parents=True)
    conda = home / "anaconda3"
    # The conda_pytorch kernel's env has a name the fallback would not guess; a decoy kernel sits beside it.
    env_dir = conda / "envs" / "pt210"
    _executable(env_dir / "bin" / "pip", FAKE_PIP)
    (conda / "envs" / "other" / "bin").mkdir(parents=True)
    kernels = conda / "envs" / "JupyterSystemEnv" / "share" / "jupyter" / "kernels"
    for name, display, env_name in (("python3", "Python 3", "other"), ("conda_pytorch", "conda_pytorch", "pt210")):
        (kernels / name).mkdir(parents=True)
        spec = {"argv": [str(conda / "envs" / env_name / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                         "{connection_file}"], "display_name": display, "language": "python"}
        (kernels / name / "kernel.json").write_text(json.dumps(spec))
    fake_log = tmp_path / "fake-log"
    fake_log.mkdir()
    (tmp_path / "run-systemd").mkdir()
    (tmp_path / "units").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        # The HTTPS URL the scripts are rendered with is served by the local bare repository.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"url.{remote.bare}.insteadOf",
        "GIT_CONFIG_VALUE_0": REPO_URL,
        "NB_USER": getpass.getuser(),
        "NB_HOME": str(home),
        "AS_USER": "",
        "PYTHON": sys.executable,
        "GIT_TIMEOUT": "30",
        "SYSTEMD_RUN_DIR": str(tmp_path / "run-systemd"),
        "SYSTEMD_DIR": str(tmp_path / "units"),
        "SYSTEMCTL": str(_executable(tmp_path / "bin" / "systemctl", FAKE_RECORDER.format(name="systemctl"))),
        "METADATA_FILE": str(tmp_path / "resource-metadata.json"),
        "FAKE_LOG": str(fake_log),
    }
    box = Sandbox(tmp_path, remote, env)
    yield box
    box.finish_background()


def values(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "stack_name": "MonaiDicomSageMaker",
        "region": "eu-west-1",
        "bucket": "monaidicom-databucket-1a2b3c",
        "data_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/0b1f6a52-3f5e-4a5c-9a8e-4f2c2b7c1d11",
        "training_role_arn": "arn:aws:iam::123456789012:role/MonaiDicom-TrainingRole-ABC",
        "model_role_arn": "arn:aws:iam::123456789012:role/MonaiDicom-ModelRole-ABC",
        "notebook_role_arn": "arn:aws:iam::123456789012:role/MonaiDicom-NotebookRole-DEF",
        "training_image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/monai-training:1.0",
        "training_image_variant": "",
        "subnets": ["subnet-0aaa", "subnet-0bbb"],
        "security_group_ids": ["sg-0ccc"],
        "repo_url": REPO_URL,
        "repo_ref": "main",
        "deployed_commit": "",
        "log_retention_days": "365",
    }
    return {**base, **overrides}


def on_start(ref: str, *, minutes: int = 0, **overrides: Any) -> str:
    return render.render_on_start(values=values(repo_ref=ref, deployed_commit=ref if len(ref) == 40 else "",
                                                **overrides), idle_stop_minutes=minutes)


def on_create(ref: str, url: str = REPO_URL) -> str:
    return render.render_on_create(repo_url=url, repo_ref=ref)


# --- on_create -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref_kind", ["sha", "branch", "tag"])
def test_create_clones_the_ref(sandbox: Sandbox, ref_kind: str) -> None:
    first, second = sandbox.remote.commits
    ref, expected = {"sha": (first, first), "branch": ("main", second), "tag": ("v1", first)}[ref_kind]
    done = sandbox.run(on_create(ref))
    assert done.returncode == 0, done.stdout + done.stderr
    assert git(sandbox.clone, "rev-parse", "HEAD") == expected
    assert git(sandbox.clone, "status", "--porcelain") == ""
    assert git(sandbox.clone, "remote", "get-url", "origin") == REPO_URL
    if ref_kind == "branch":
        assert git(sandbox.clone, "symbolic-ref", "--short", "HEAD") == "main"
    assert not list(sandbox.clone.parent.glob("*.partial"))
    assert f"cloned {REPO_URL} at {ref}" in (sandbox.state / "on-create.log").read_text()
    assert "cloned" in done.stdout  # CloudWatch gets the same lines


def test_create_leaves_an_existing_clone_untouched(sandbox: Sandbox) -> None:
    first = sandbox.remote.commits[0]
    assert sandbox.run(on_create(first)).returncode == 0
    (sandbox.clone / "README.md").write_text("my notes\n")
    (sandbox.clone / "scratch.py").write_text("x = 1\n")
    newer = sandbox.remote.commit("newer.txt")
    before = {p: p.read_bytes() for p in sandbox.clone.rglob("*") if p.is_file()}

    done = sandbox.run(on_create(newer))

    assert done.returncode == 0
    assert "exists: left untouched" in done.stdout
    assert git(sandbox.clone, "rev-parse", "HEAD") == first
    assert {p: p.read_bytes() for p in sandbox.clone.rglob("*") if p.is_file()} == before


def test_create_with_an_unreachable_remote_logs_and_exits_0(sandbox: Sandbox) -> None:
    done = sandbox.run(on_create("main", url=UNREACHABLE_URL))
    assert done.returncode == 0
    assert "ERROR: could not clone" in done.stdout
    assert "ERROR: could not clone" in (sandbox.state / "on-create.log").read_text()
    assert not (sandbox.home / "SageMaker" / "monai-dicom-sagemaker").exists()
    assert not list((sandbox.home / "SageMaker").glob("*.partial"))
    assert done.elapsed < 30  # type: ignore[attr-defined]


def test_create_with_a_commit_missing_from_the_remote_keeps_the_default_branch(sandbox: Sandbox) -> None:
    unpushed = sandbox.remote.commit("local-only.txt", push=False)
    done = sandbox.run(on_create(unpushed))
    assert done.returncode == 0
    assert "is not on the remote" in done.stdout
    assert git(sandbox.clone, "rev-parse", "HEAD") == sandbox.remote.commits[-1]


def test_commands_run_as_the_notebook_user_through_sudo(sandbox: Sandbox, tmp_path: Path) -> None:
    # The default AS_USER is `sudo -u ec2-user -H`: sudo resets the environment, so whatever a command needs must be
    # on its command line. This fake sudo checks its options, records the call and runs it in a bare environment.
    user = sandbox.env["NB_USER"]
    sudo = _executable(tmp_path / "sudo-bin" / "sudo", f"""#!/bin/bash
[ "$1 $2 $3" = "-u {user} -H" ] || {{ echo "unexpected: sudo $*" >&2; exit 1; }}
echo "${{*:4}}" | cut -c1-60 >>"{sandbox.fake_log}/sudo.calls"
exec env -i PATH=/usr/bin:/bin HOME="{sandbox.home}" "${{@:4}}"
""")
    git(sandbox.home, "config", "--file", str(sandbox.home / ".gitconfig"), f"url.{sandbox.remote.bare}.insteadOf",
        REPO_URL)
    env = {k: v for k, v in sandbox.env.items() if not k.startswith("GIT_CONFIG_")}
    sandbox.env = {**env, "PATH": f"{sudo.parent}:{env['PATH']}", "AS_USER": f"sudo -u {user} -H"}
    sha = sandbox.remote.commits[-1]

    assert sandbox.run(on_create(sha)).returncode == 0
    done = sandbox.run(on_start(sha, minutes=60))

    assert done.returncode == 0, done.stdout + done.stderr
    assert git(sandbox.clone, "rev-parse", "HEAD") == sha
    assert json.loads((sandbox.state / "stack.json").read_text())["repo_ref"] == sha
    assert "UP TO DATE" in (sandbox.state / "repo-status.log").read_text()
    assert wait_for(sandbox.state / "kernel-ready")  # the worker got its settings through sudo
    calls = (sandbox.fake_log / "sudo.calls").read_text().splitlines()
    assert any(c.startswith("env GIT_TERMINAL_PROMPT=0 git clone") for c in calls)
    assert any(c.startswith("env STATE_DIR=") for c in calls)
    assert any(c.startswith("tee -a") for c in calls)


@pytest.mark.parametrize("limits", [{"GIT_TIMEOUT": "1"}, {"GIT_TIMEOUT": "100", "GIT_DEADLINE": "2"}])
def test_git_runs_with_a_timeout(sandbox: Sandbox, tmp_path: Path, limits: dict[str, str]) -> None:
    # A remote that never answers: git is stopped after GIT_TIMEOUT seconds, or once the script has run for
    # GIT_DEADLINE seconds, and the hook still succeeds.
    hang = _executable(tmp_path / "hang" / "git", "#!/bin/bash\nexec sleep 60\n")
    done = sandbox.run(on_create("main"), **limits, PATH=f"{hang.parent}:{os.environ['PATH']}")
    assert done.returncode == 0
    assert done.elapsed < 10  # type: ignore[attr-defined]
    assert "ERROR: could not clone" in done.stdout


# --- on_start: values file and repository status --------------------------------------------------------------------


def test_values_file(sandbox: Sandbox) -> None:
    sha = sandbox.remote.commits[-1]
    given = values(repo_ref=sha, deployed_commit=sha, stack_name="it's a stack")
    done = sandbox.run(render.render_on_start(values=given, idle_stop_minutes=0))
    assert done.returncode == 0, done.stdout + done.stderr

    path = sandbox.state / "stack.json"
    written = json.loads(path.read_text())
    assert list(written) == list(render.STACK_VALUE_KEYS)
    assert written == given
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    assert stat.S_IMODE(sandbox.state.stat().st_mode) == 0o700

    # Replaced on the next start, atomically: no temporary file stays behind.
    done = sandbox.run(render.render_on_start(values={**given, "bucket": "other-bucket", "subnets": []},
                                              idle_stop_minutes=0))
    written = json.loads(path.read_text())
    assert (written["bucket"], written["subnets"]) == ("other-bucket", [])
    assert sorted(p.name for p in sandbox.state.glob(".stack.json*")) == []


def test_restart_keeps_edits_and_reports_a_newer_deployed_commit(sandbox: Sandbox) -> None:
    first = sandbox.remote.commits[0]
    assert sandbox.run(on_create(first)).returncode == 0
    readme = sandbox.clone / "notebooks" / "dicom_training.ipynb"
    readme.write_text("my edit\n")
    (sandbox.clone / "untracked.py").write_text("mine\n")
    newer = sandbox.remote.commit("newer.txt")

    for _ in range(2):
        done = sandbox.run(on_start(newer))
        assert done.returncode == 0, done.stdout + done.stderr

    assert readme.read_text() == "my edit\n"
    assert (sandbox.clone / "untracked.py").read_text() == "mine\n"
    assert git(sandbox.clone, "rev-parse", "HEAD") == first
    assert git(sandbox.clone, "stash", "list") == ""
    lines = (sandbox.state / "repo-status.log").read_text().splitlines()
    assert len(lines) == 2
    assert "BEHIND" in lines[-1] and newer in lines[-1] and "lacks 2 commit(s)" in lines[-1]
    assert "2 uncommitted change(s)" in lines[-1]


@pytest.mark.parametrize("case", ["up to date", "ahead", "unknown"])
def test_repo_status_states(sandbox: Sandbox, case: str) -> None:
    first, second = sandbox.remote.commits
    assert sandbox.run(on_create(second)).returncode == 0
    deployed = {"up to date": second, "ahead": first, "unknown": "f" * 40}[case]
    done = sandbox.run(on_start(deployed))
    assert done.returncode == 0
    last = (sandbox.state / "repo-status.log").read_text().splitlines()[-1]
    assert last.split(" ", 1)[1].startswith({"up to date": "UP TO DATE", "ahead": "AHEAD", "unknown": "UNKNOWN"}[case])


def test_start_clones_when_create_could_not(sandbox: Sandbox) -> None:
    assert sandbox.run(on_create("main", url=UNREACHABLE_URL)).returncode == 0
    sha = sandbox.remote.commits[0]
    done = sandbox.run(on_start(sha))
    assert done.returncode == 0
    assert git(sandbox.clone, "rev-parse", "HEAD") == sha
    assert "UP TO DATE" in (sandbox.state / "repo-status.log").read_text()


def test_start_with_an_unreachable_remote_logs_and_exits_0(sandbox: Sandbox) -> None:
    done = sandbox.run(on_start("main", repo_url=UNREACHABLE_URL))
    assert done.returncode == 0
    assert "ERROR: could not clone" in done.stdout
    assert "NO CLONE" in (sandbox.state / "repo-status.log").read_text()
    assert json.loads((sandbox.state / "stack.json").read_text())["repo_url"] == UNREACHABLE_URL


def test_start_with_an_existing_clone_and_an_unreachable_remote(sandbox: Sandbox) -> None:
    sha = sandbox.remote.commits[-1]
    assert sandbox.run(on_create(sha)).returncode == 0
    shutil.rmtree(sandbox.remote.bare)  # the remote is gone: the fetch fails
    done = sandbox.run(on_start(sha))
    assert done.returncode == 0
    assert "git fetch failed" in done.stdout
    assert "UP TO DATE" in (sandbox.state / "repo-status.log").read_text()


# --- on_start: kernel packages in the background --------------------------------------------------------------------


def test_kernel_install_runs_in_the_background(sandbox: Sandbox) -> None:
    (sandbox.state).mkdir(parents=True)
    (sandbox.state / "kernel-ready").write_text("stale\n")
    release = sandbox.root / "pip-may-finish"
    done = sandbox.run(on_start("main"), FAKE_PIP_WAIT=str(release))
    assert done.returncode == 0, done.stdout + done.stderr
    # The hook has returned while pip cannot have finished (it waits for `release`): the install runs in the
    # background, whatever the machine's speed.
    assert not (sandbox.state / "kernel-ready").exists()  # the stale marker went first
    release.touch()
    assert wait_for(sandbox.state / "kernel-ready", 20)
    env_dir = sandbox.home / "anaconda3" / "envs" / "pt210"
    assert (sandbox.state / "kernel-ready").read_text().strip() == str(env_dir)
    args = (sandbox.fake_log / "pip.args").read_text().splitlines()
    assert args[0] == "install"
    assert set(PACKAGES) <= set(args)
    assert not any("monai-dicom-sagemaker" in a or a in (".", "-e") for a in args)  # the repo is not installed
    log = (sandbox.state / "kernel-install.log").read_text()
    assert "conda env found by kernel spec" in log and str(env_dir) in log
    # The versions of the training image's packages are the clone's lock's, the one the image installs.
    constraints = sandbox.state / "kernel-constraints.txt"
    assert args[args.index("--constraint") + 1] == str(constraints)
    assert f"versions of the training image's packages: {sandbox.clone / LOCK}" in log
    lock = read_lock(ROOT / LOCK)
    assert constraints.read_text().split() == [f"{name}=={version}" for name, (version, _) in lock.items()]
    assert {"monai", "pydicom", "pylibjpeg"} <= set(lock)


def test_kernel_install_without_a_clone_says_the_versions_are_unpinned(sandbox: Sandbox) -> None:
    done = sandbox.run(on_start("main", repo_url=UNREACHABLE_URL))
    assert done.returncode == 0
    assert wait_for(sandbox.state / "kernel-ready")
    args = (sandbox.fake_log / "pip.args").read_text().splitlines()
    assert set(PACKAGES) <= set(args) and "--constraint" not in args
    assert "WARNING: no " in (sandbox.state / "kernel-install.log").read_text()
    assert "training image's packages unpinned" in (sandbox.state / "kernel-install.log").read_text()


def test_kernel_install_failure_writes_the_reason(sandbox: Sandbox) -> None:
    done = sandbox.run(on_start("main"), FAKE_PIP_RC="3")
    assert done.returncode == 0
    assert wait_for(sandbox.state / "kernel-install-failed")
    assert "exited with 3" in (sandbox.state / "kernel-install-failed").read_text()
    assert not (sandbox.state / "kernel-ready").exists()
    # The next start clears the failure and tries again.
    done = sandbox.run(on_start("main"), FAKE_PIP_SLEEP="1")
    assert not (sandbox.state / "kernel-install-failed").exists()
    assert wait_for(sandbox.state / "kernel-ready")


@pytest.mark.parametrize("layout", ["conda env list", "fallback", "none"])
def test_kernel_env_discovery_without_a_kernel_spec(sandbox: Sandbox, layout: str, tmp_path: Path) -> None:
    conda = sandbox.home / "anaconda3"
    shutil.rmtree(conda / "envs" / "JupyterSystemEnv")
    shutil.rmtree(conda / "envs" / "pt210")
    expected = None
    if layout == "conda env list":
        expected = conda / "envs" / "pytorch_p310"
        envs = [str(conda), str(conda / "envs" / "JupyterSystemEnv"), str(expected)]
        _executable(conda / "bin" / "conda", f"#!/bin/bash\necho '{json.dumps({'envs': envs})}'\n")
    elif layout == "fallback":
        expected = conda / "envs" / "pytorch"
    if expected:
        _executable(expected / "bin" / "pip", FAKE_PIP)
    done = sandbox.run(on_start("main"))
    assert done.returncode == 0
    if expected:
        assert wait_for(sandbox.state / "kernel-ready")
        assert (sandbox.state / "kernel-ready").read_text().strip() == str(expected)
        assert f"conda env found by {layout}" in (sandbox.state / "kernel-install.log").read_text()
    else:
        assert wait_for(sandbox.state / "kernel-install-failed")
        assert "no conda env" in (sandbox.state / "kernel-install-failed").read_text()


def test_pip_can_be_substituted(sandbox: Sandbox, tmp_path: Path) -> None:
    pip = _executable(tmp_path / "other-pip", FAKE_PIP.replace("pip.args", "other-pip.args"))
    assert sandbox.run(on_start("main"), PIP=str(pip)).returncode == 0
    assert wait_for(sandbox.state / "kernel-ready")
    assert (sandbox.fake_log / "other-pip.args").exists()
    assert not (sandbox.fake_log / "pip.args").exists()


# --- on_start: idle auto-stop ---------------------------------------------------------------------------------------


def test_idle_stop_off_installs_nothing(sandbox: Sandbox) -> None:
    done = sandbox.run(on_start("main", minutes=0))
    assert done.returncode == 0
    assert "idle auto-stop: off" in done.stdout
    assert list(sandbox.units.iterdir()) == []
    assert not (sandbox.fake_log / "systemctl.calls").exists()


def test_idle_stop_without_the_clone_warns_and_installs_nothing(sandbox: Sandbox) -> None:
    done = sandbox.run(on_start("main", minutes=60, repo_url=UNREACHABLE_URL))
    assert done.returncode == 0
    assert f"WARNING: no {sandbox.clone / IDLE_CHECKER} (no clone?): no idle auto-stop" in done.stdout
    assert list(sandbox.units.iterdir()) == []
    assert not (sandbox.fake_log / "systemctl.calls").exists()


def test_idle_stop_installs_one_timer_however_often_it_starts(sandbox: Sandbox) -> None:
    for _ in range(2):
        assert sandbox.run(on_start("main", minutes=60)).returncode == 0
    assert sorted(p.name for p in sandbox.units.iterdir()) == ["monai-dicom-idle-stop.service",
                                                               "monai-dicom-idle-stop.timer"]
    service = (sandbox.units / "monai-dicom-idle-stop.service").read_text().splitlines()
    exec_start = [line for line in service if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    # The checker is the clone's file, run as the notebook user, never as root.
    assert f" {sandbox.clone / IDLE_CHECKER} 60 {sandbox.env['METADATA_FILE']} https://localhost:8443 " in exec_start[0]
    assert exec_start[0].endswith(" eu-west-1")
    assert [line for line in service if line.startswith("User=")] == [f"User={sandbox.env['NB_USER']}"]
    assert "NoNewPrivileges=yes" in service
    assert "OnUnitActiveSec=5min" in (sandbox.units / "monai-dicom-idle-stop.timer").read_text()
    calls = (sandbox.fake_log / "systemctl.calls").read_text().splitlines()
    assert calls == ["daemon-reload", "enable --now monai-dicom-idle-stop.timer"] * 2

    # Turned off on a later deployment: the timer goes.
    assert sandbox.run(on_start("main", minutes=0)).returncode == 0
    assert list(sandbox.units.iterdir()) == []
    assert (sandbox.fake_log / "systemctl.calls").read_text().splitlines()[-1] == \
        "disable --now monai-dicom-idle-stop.timer"


def test_idle_stop_without_systemd_warns(sandbox: Sandbox, tmp_path: Path) -> None:
    done = sandbox.run(on_start("main", minutes=60), SYSTEMD_RUN_DIR=str(tmp_path / "absent"))
    assert done.returncode == 0
    assert "systemd is not running" in done.stdout
    assert list(sandbox.units.iterdir()) == []


class _FakeJupyter(BaseHTTPRequestHandler):
    answers: dict[str, Any] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps(self.answers[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jupyter() -> Iterator[tuple[str, dict[str, Any]]]:
    answers: dict[str, Any] = {"/api/sessions": [], "/api/terminals": []}
    handler = type("Handler", (_FakeJupyter,), {"answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize("case", ["busy kernel", "recent activity", "idle", "jupyter down", "no metadata"])
def test_idle_checker(sandbox: Sandbox, jupyter: tuple[str, dict[str, Any]], tmp_path: Path, case: str) -> None:
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    if case in ("idle", "no metadata") and uptime < 120:
        pytest.skip("the boot counts as activity: this machine started less than 2 minutes ago")
    url, answers = jupyter
    old, recent = _iso(timedelta(hours=2)), _iso(timedelta(minutes=1))
    kernel = {"id": "k", "name": "conda_pytorch", "execution_state": "idle", "connections": 1, "last_activity": old}
    answers["/api/sessions"] = [{"id": "s", "kernel": kernel}]
    answers["/api/terminals"] = [{"name": "1", "last_activity": old}]
    if case == "busy kernel":
        kernel["execution_state"] = "busy"
    elif case == "recent activity":
        answers["/api/terminals"][0]["last_activity"] = recent
    elif case == "jupyter down":
        url = "http://127.0.0.1:9"
    metadata = Path(sandbox.env["METADATA_FILE"])
    if case != "no metadata":
        metadata.write_text(json.dumps({
            "ResourceArn": "arn:aws:sagemaker:eu-central-1:123456789012:notebook-instance/monaidicom-notebook",
            "ResourceName": "MonaiDicom-notebook"}))
    aws = _executable(tmp_path / "aws-cli" / "aws", FAKE_RECORDER.format(name="aws"))
    minutes = 60 if case == "recent activity" else 1
    started = sandbox.run(on_start("main", minutes=minutes), JUPYTER_URL=url,
                          PATH=f"{aws.parent}:{sandbox.env['PATH']}")
    assert started.returncode == 0, started.stdout + started.stderr

    # What the timer runs: the unit's command line, the clone's checker with the unit's arguments.
    service = (sandbox.units / "monai-dicom-idle-stop.service").read_text()
    [command] = [line.removeprefix("ExecStart=").split() for line in service.splitlines()
                 if line.startswith("ExecStart=")]
    assert command[1:] == [str(sandbox.clone / IDLE_CHECKER), str(minutes), str(metadata), url, str(aws), "eu-west-1"]
    done = subprocess.run(command, env={**sandbox.env}, capture_output=True, text=True, timeout=60)

    calls = sandbox.fake_log / "aws.calls"
    if case == "idle":
        assert done.returncode == 0, done.stderr
        assert calls.read_text().split() == ["sagemaker", "stop-notebook-instance", "--notebook-instance-name",
                                             "MonaiDicom-notebook", "--region", "eu-central-1"]
    else:
        assert done.returncode != 0
        assert not calls.exists()
        assert {"busy kernel": "busy", "recent activity": "idle for", "jupyter down": "not reachable",
                "no metadata": f"cannot read {metadata}"}[case] in done.stderr


# --- the scripts themselves -----------------------------------------------------------------------------------------


def test_shellcheck_finds_nothing(tmp_path: Path) -> None:
    sources = sorted(render.LIFECYCLE_DIR.glob("*.sh"))
    assert [p.name for p in sources] == ["common.sh", "on_create.sh", "on_start.sh"]
    rendered = [tmp_path / "on_create.sh", tmp_path / "on_start.sh"]
    rendered[0].write_text(on_create("main"))
    rendered[1].write_text(on_start("a" * 40, minutes=60))
    for paths, extra in ((sources, []), (rendered, ["--exclude=SC2329"])):
        # Rendering drops the comment lines, and with them the directives about functions run through declare -f.
        done = subprocess.run([str(SHELLCHECK), *extra, *map(str, paths)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == ""


def test_scripts_have_lf_line_endings_and_are_bash() -> None:
    for path in render.LIFECYCLE_DIR.glob("*.sh"):
        data = path.read_bytes()
        assert b"\r" not in data, path
        assert data.startswith(b"#!/bin/bash\n"), path
    assert re.search(r"^\*\.sh text eol=lf$", (ROOT / ".gitattributes").read_text(), re.MULTILINE)


def test_both_scripts_take_their_shared_shell_from_common_sh() -> None:
    common = (render.LIFECYCLE_DIR / "common.sh").read_text()
    assert "clone_repo() {" in common
    for name, text in (("on_create.sh", on_create("main")), ("on_start.sh", on_start("a" * 40, minutes=60))):
        source = (render.LIFECYCLE_DIR / name).read_text()
        assert source.count(render.SOURCE_COMMON) == 1 and "clone_repo() {" not in source, name
        assert text.count("clone_repo() {") == 1 and render.SOURCE_COMMON not in text, name  # spliced, once
    with pytest.raises(render.RenderError, match="must source common.sh once"):
        render.spliced("#!/bin/bash\necho no common part\n")


def test_rendered_scripts_fit_sagemakers_limit(record_property: Any) -> None:
    # At synth the stack's values are tokens; counted at TOKEN_ALLOWANCE characters each, and with real values.
    tokens: dict[str, Any] = {k: f"${{Token[TOKEN.{100 + i}]}}" for i, k in enumerate(render.STACK_VALUE_KEYS)}
    tokens.update(subnets=["${Token[TOKEN.201]}", "${Token[TOKEN.202]}"], repo_url=REPO_URL, repo_ref="a" * 40,
                  deployed_commit="a" * 40)
    scripts = {
        "on_create.sh": on_create("a" * 40),
        "on_start.sh (tokens)": render.render_on_start(values=tokens, idle_stop_minutes=60),
        "on_start.sh (values)": on_start("a" * 40, minutes=60),
    }
    for name, text in scripts.items():
        size = render.estimated_base64_length(text)
        assert size == len(base64.b64encode(text.encode())) or "tokens" in name
        assert size < render.MAX_BASE64_CHARS, name
        record_property(name, f"{len(text)} characters, {render.base64_length(text)} base64, {size} estimated")
        print(f"{name}: {len(text)} characters, {render.base64_length(text)} base64, {size} estimated")


def test_kernel_packages_match_the_pins_elsewhere() -> None:
    """The training image's packages take their versions from its lock alone; the others match requirements.txt."""
    from packaging.requirements import Requirement

    source = (render.LIFECYCLE_DIR / "on_start.sh").read_text()
    default = re.search(r"^KERNEL_PACKAGES=\$\{KERNEL_PACKAGES:-(.*)\}$", source, re.MULTILINE)
    assert default
    assert set(PACKAGES) <= set(default.group(1).split())
    kernel = {Requirement(spec).name: Requirement(spec).specifier for spec in default.group(1).split()}
    lock = read_lock(ROOT / LOCK)
    image = {name for name in kernel if name in lock}
    assert {"monai", "pydicom", "pylibjpeg"} <= image
    assert {name: str(kernel[name]) for name in image} == dict.fromkeys(image, "")  # no second copy of a version
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            pinned[requirement.name] = str(requirement.specifier).removeprefix("==")
    shared = set(kernel) & set(pinned)
    pacs = {"dicognito", "dicomweb-client", "pynetdicom", "highdicom"}  # the notebook's "From your PACS"
    assert shared == set(kernel) - image == {"sagemaker", "s3fs"} | pacs
    for name in shared:
        assert kernel[name].contains(pinned[name]), f"{name}: kernel {kernel[name]}, elsewhere =={pinned[name]}"

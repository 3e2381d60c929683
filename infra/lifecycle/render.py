"""Renders the notebook instance's lifecycle scripts, `on_create.sh` and `on_start.sh`, at synth.

The scripts are real bash files beside this module (shellcheck-clean, tested in a sandbox). The values the stack
provides appear in them as placeholders `@@NAME@@` (capitals, digits and underscores between two `@@`), each inside
single quotes; rendering replaces every placeholder in one pass and fails when one has no value or a value has no
placeholder. It also drops the comment lines (here-documents excepted) and checks SageMaker's limit: each hook's
content is at most 16,384 characters of base64.

CloudFormation tokens: at synth, stack values such as the bucket name are strings like `${Token[TOKEN.123]}`. They
pass through unchanged as plain text inside single quotes, so the stack wraps the rendered text with `Fn.base64`
alone and CDK turns it into `Fn::Base64` of an `Fn::Join`. Never use `Fn.sub` on it: the scripts use bash's `${...}`.
The size check counts each unresolved token as `TOKEN_ALLOWANCE` characters, about the length of the ARNs, names
and image URIs it stands for.

What the notebook finds in `STATE_DIR` (`/home/ec2-user/SageMaker/.monai-dicom/`, kept across restarts):

- `stack.json` (`VALUES_FILE`): the stack's values, written by on_start.sh on every start, owned by `ec2-user`, mode
  0600, replaced atomically (temporary file, then rename). One JSON object with every key of STACK_VALUES
  (launcher/stack_values.py, which says what each value is), in that order: `subnets` and `security_group_ids` are
  lists of IDs (empty when the stack has no VPC), the others strings (`training_image_variant` is "" for an image given
  by URI, `deployed_commit` "" when unknown).
- `repo-status.log`: one line per start: whether the clone's HEAD is UP TO DATE with, AHEAD of or BEHIND the
  deployed commit (UNKNOWN when that commit is not on the remote, NO CLONE when there is no clone), and how many
  uncommitted changes it has. The scripts never merge, reset or stash.
- `kernel-install.log`, then `kernel-ready` (holding the conda env's path) or `kernel-install-failed` (holding the
  reason): the background pip install of `KERNEL_PACKAGES` into the conda env of the `conda_pytorch` kernel, with
  `kernel-constraints.txt` (the pins of the clone's `training/requirements-lock.txt`, the training image's lock) as
  constraints.
- `on-create.log`, `on-start.log`: what the scripts printed (also in CloudWatch, log group
  `/aws/sagemaker/NotebookInstances`).

The repository is cloned into `/home/ec2-user/SageMaker/<repo_dir_name(repo_url)>`.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from launcher.stack_values import STACK_VALUES

LIFECYCLE_DIR = Path(__file__).resolve().parent
SAGEMAKER_DIR = "/home/ec2-user/SageMaker"
STATE_DIR = f"{SAGEMAKER_DIR}/.monai-dicom"
VALUES_FILE = f"{STATE_DIR}/stack.json"
KERNEL_INSTALL_LOG = f"{STATE_DIR}/kernel-install.log"
KERNEL_READY_MARKER = f"{STATE_DIR}/kernel-ready"
KERNEL_FAILED_MARKER = f"{STATE_DIR}/kernel-install-failed"

# The keys of stack.json, in its order; the ones with a default may be left out of render_on_start's values.
STACK_VALUE_KEYS: tuple[str, ...] = tuple(value.key for value in STACK_VALUES)
LIST_KEYS = frozenset(value.key for value in STACK_VALUES if value.listed)
OPTIONAL_KEYS: Mapping[str, str] = {value.key: value.default for value in STACK_VALUES if value.default is not None}

MAX_BASE64_CHARS = 16384  # SageMaker's limit on each hook's Content (base64 text)
TOKEN_ALLOWANCE = 128  # characters counted for each unresolved CloudFormation token in the size check
MAX_IDLE_STOP_MINUTES = 7 * 24 * 60

PLACEHOLDER = re.compile(r"@@([A-Z][A-Z0-9_]*)@@")
_TOKEN = re.compile(r"\$\{Token\[[^\]]*\]\}")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_REPO_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


class RenderError(ValueError):
    """A lifecycle script cannot be rendered: a placeholder or value is missing or wrong, or it is too long."""


def validate_repo_url(url: str) -> str:
    """Check that the notebook can clone `url`: an HTTPS URL without credentials.

    Args:
        url: the repository URL, e.g. https://github.com/ORG/REPO.git.

    Returns:
        The URL, unchanged.

    Raises:
        ValueError: an SSH, git://, plain-HTTP or local URL, or one the scripts cannot name a directory after; the
            message says why and what to use instead.
    """
    hint = "use an HTTPS URL, e.g. https://github.com/ORG/REPO.git"
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"the repository URL is empty: {hint}")
    if _TOKEN.search(url):
        raise ValueError(f"the repository URL {url!r} is an unresolved CloudFormation token: give a plain string")
    if any(c.isspace() or c in "'\"\\`$" for c in url):
        raise ValueError(f"the repository URL {url!r} contains spaces, quotes or shell characters: {hint}")
    lower = url.lower()
    scp = _SCP_LIKE.match(url)
    if lower.startswith(("ssh://", "git+ssh://", "ssh+git://")) or (scp and "://" not in url):
        suggestion = hint
        if scp:
            host, _, path = url.partition("@")[2].partition(":")
            suggestion = f"use an HTTPS URL, e.g. https://{host}/{path.lstrip('/')}"
        raise ValueError(f"the repository URL {url!r} is an SSH URL: the notebook instance clones without "
                         f"credentials (no SSH key), so {suggestion}")
    if lower.startswith("file:") or "://" not in url:
        raise ValueError(f"the repository URL {url!r} is a local path (or lacks https://): the notebook instance "
                         f"cannot reach this machine's files, so {hint}")
    if lower.startswith("git://"):
        raise ValueError(f"the repository URL {url!r} uses the unencrypted git:// protocol: {hint}")
    if lower.startswith("http://"):
        raise ValueError(f"the repository URL {url!r} is plain HTTP: {hint}")
    if not lower.startswith("https://"):
        raise ValueError(f"the repository URL {url!r} is not HTTPS: {hint}")
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError(f"the repository URL {url!r} embeds credentials, which would end up in the CloudFormation "
                         f"template: the notebook clones without credentials, so use a public HTTPS URL")
    if not parts.hostname or not parts.path.strip("/"):
        raise ValueError(f"the repository URL {url!r} names no host or no repository: {hint}")
    if parts.query or parts.fragment:
        raise ValueError(f"the repository URL {url!r} has a query or fragment: {hint}")
    repo_dir_name(url)
    return url


def repo_dir_name(url: str) -> str:
    """The directory under /home/ec2-user/SageMaker that the scripts clone `url` into (as bash computes it there).

    Args:
        url: the repository URL.

    Raises:
        ValueError: the URL's last path segment is not a plain directory name.
    """
    name = url[:-1] if url.endswith("/") else url
    name = name.rsplit("/", 1)[-1]
    name = name[: -len(".git")] if name.endswith(".git") else name
    if not _REPO_NAME.match(name):
        raise ValueError(f"the repository URL {url!r} does not end in a repository name (letters, digits, '.', '_', "
                         f"'-'), e.g. https://github.com/ORG/REPO.git")
    return name


def validate_repo_ref(ref: str) -> str:
    """Check a commit SHA, branch or tag name that the clone checks out.

    Args:
        ref: e.g. a 40-character commit SHA, `main` or `v1.0`.

    Returns:
        The ref, unchanged.

    Raises:
        ValueError: empty, or not a plain git ref name (it must not start with '-' or contain '..').
    """
    if not isinstance(ref, str) or not _REF.match(ref) or ".." in ref or ref.endswith((".lock", "/", ".")):
        raise ValueError(f"repository ref {ref!r} is not a commit SHA, branch or tag name")
    return ref


def placeholders(text: str) -> set[str]:
    """The names of the placeholders in `text` (`@@REPO_URL@@` -> `REPO_URL`).

    Args:
        text: script text.
    """
    return set(PLACEHOLDER.findall(text))


def strip_comments(script: str) -> str:
    """Drop comment lines and blank lines, keeping the shebang and every line of a here-document.

    A comment line is one whose first non-blank character is `#`. The scripts must not have such lines inside a
    multi-line quoted string (they have none).

    Args:
        script: bash source.
    """
    lines = script.splitlines(keepends=True)
    kept, terminator = lines[:1], None
    for line in lines[1:]:
        if terminator is not None:
            kept.append(line)
            if line.strip() == terminator:
                terminator = None
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        kept.append(line)
        heredoc = _HEREDOC.search(line)
        if heredoc:
            terminator = heredoc.group(2)
    return "".join(kept)


def base64_length(text: str) -> int:
    """Length of the base64 encoding of `text` (UTF-8), as SageMaker counts a hook's Content.

    Args:
        text: script text.
    """
    return len(base64.b64encode(text.encode()))


def estimated_base64_length(text: str) -> int:
    """`base64_length` once deployed: each unresolved token counted as `TOKEN_ALLOWANCE` characters.

    Args:
        text: rendered script text, possibly holding `${Token[...]}` strings.
    """
    return base64_length(_TOKEN.sub("x" * TOKEN_ALLOWANCE, text))


# How a hook sources the shell it shares with the other (common.sh); render.py puts the file's text there instead.
SOURCE_COMMON = '. "$(dirname "${BASH_SOURCE[0]}")/common.sh"'


def spliced(template: str, script_dir: Path = LIFECYCLE_DIR) -> str:
    """The hook's text with common.sh in place of the one line that sources it (SageMaker runs one script per hook:
    nothing beside it to source).

    Raises:
        RenderError: the hook does not source common.sh exactly once.
    """
    lines = template.split("\n")
    if lines.count(SOURCE_COMMON) != 1:
        raise RenderError(f"a lifecycle hook must source common.sh once, with the line {SOURCE_COMMON}")
    common = (script_dir / "common.sh").read_text().split("\n", 1)[1].rstrip("\n")  # without its shebang
    return "\n".join(common if line == SOURCE_COMMON else line for line in lines)


def render(template: str, replacements: Mapping[str, str], *, name: str) -> str:
    """Render one script: drop comments, replace every placeholder, check the size.

    Args:
        template: the script's source.
        replacements: placeholder name -> text to put in its place (already escaped for its context).
        name: the script's file name, for messages.

    Returns:
        The script to give SageMaker (through `Fn.base64`).

    Raises:
        RenderError: a placeholder without a value, a value without a placeholder, or a script too long.
    """
    body = strip_comments(template)
    wanted = placeholders(body)
    unknown = sorted(wanted - set(replacements))
    if unknown:
        raise RenderError(f"{name}: no value for placeholder(s) {', '.join(f'@@{n}@@' for n in unknown)}")
    unused = sorted(set(replacements) - wanted)
    if unused:
        raise RenderError(f"{name}: no placeholder for value(s) {', '.join(unused)} (renamed in the script?)")
    lines = body.split("\n", 1)
    body = f"{lines[0]}\n# Rendered from infra/lifecycle/{name} by render.py (comment lines dropped).\n{lines[1]}"
    text = PLACEHOLDER.sub(lambda m: replacements[m.group(1)], body)
    size = estimated_base64_length(text)
    if size >= MAX_BASE64_CHARS:
        raise RenderError(
            f"{name}: the rendered script is {size} characters in base64 (tokens counted as {TOKEN_ALLOWANCE} "
            f"characters each); SageMaker allows at most {MAX_BASE64_CHARS - 1} for a lifecycle hook: shorten "
            f"infra/lifecycle/{name}"
        )
    return text


def _single_quoted(key: str, value: object) -> str:
    """`value` escaped for the inside of a bash single-quoted string; tokens pass through as they are."""
    if not isinstance(value, str):
        raise RenderError(f"stack value {key} must be a string, not {type(value).__name__}")
    if any(ord(c) < 32 for c in value):
        raise RenderError(f"stack value {key}={value!r} contains a control character")
    return value.replace("'", "'\\''")


def _joined(key: str, value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise RenderError(f"stack value {key} must be a list of strings, not hold {type(item).__name__}")
        if "#{Token[" in item:
            raise RenderError(f"stack value {key} is a CDK list token: pass Fn.join(',', ...) of it instead")
        if "," in item or not item:
            raise RenderError(f"stack value {key} holds {item!r}: items must be non-empty and without commas")
    return ",".join(items)


def render_on_create(*, repo_url: str, repo_ref: str, script_dir: Path = LIFECYCLE_DIR) -> str:
    """Render on_create.sh: clone `repo_url` at `repo_ref` into /home/ec2-user/SageMaker once.

    Args:
        repo_url: HTTPS URL of this repository (see `validate_repo_url`).
        repo_ref: commit SHA (by default the commit being deployed), branch or tag to check out.
        script_dir: where the scripts are (tests may render a copy).

    Returns:
        The script text; wrap it with `Fn.base64` (never `Fn.sub`).

    Raises:
        ValueError: the URL or ref is not usable (RenderError for script problems).
    """
    validate_repo_url(repo_url)
    validate_repo_ref(repo_ref)
    template = spliced((script_dir / "on_create.sh").read_text(), script_dir)
    return render(template, {"REPO_URL": repo_url, "REPO_REF": repo_ref}, name="on_create.sh")


def render_on_start(
    *,
    values: Mapping[str, str | Sequence[str]],
    idle_stop_minutes: int,
    script_dir: Path = LIFECYCLE_DIR,
) -> str:
    """Render on_start.sh: values file, clone status, background kernel install and idle auto-stop on each start.

    Args:
        values: the stack's values by `STACK_VALUE_KEYS` (plain strings or CloudFormation token strings; lists of
            them, or one comma-separated string, for `subnets` and `security_group_ids`); those with a default
            (`deployed_commit`, `log_retention_days`) may be left out. `repo_url` and `repo_ref` must be the ones
            given to `render_on_create`.
        idle_stop_minutes: stop the instance after this many idle minutes; 0 turns the auto-stop off.
        script_dir: where the scripts are (tests may render a copy).

    Returns:
        The script text; wrap it with `Fn.base64` (never `Fn.sub`).

    Raises:
        ValueError: a missing, unknown or unusable value (RenderError for script problems).
    """
    given = {**OPTIONAL_KEYS, **values}
    missing = [k for k in STACK_VALUE_KEYS if k not in given]
    unknown = sorted(set(given) - set(STACK_VALUE_KEYS))
    if missing or unknown:
        raise RenderError(f"stack values: missing {missing}, unknown {unknown}; expected {list(STACK_VALUE_KEYS)}")
    if isinstance(idle_stop_minutes, bool) or not isinstance(idle_stop_minutes, int) or not (
        0 <= idle_stop_minutes <= MAX_IDLE_STOP_MINUTES
    ):
        raise RenderError(f"idle_stop_minutes={idle_stop_minutes!r}: use a whole number from 0 (off) to "
                          f"{MAX_IDLE_STOP_MINUTES}")
    validate_repo_url(str(given["repo_url"]))
    validate_repo_ref(str(given["repo_ref"]))
    commit = given["deployed_commit"]
    if commit and not (isinstance(commit, str) and _COMMIT.match(commit)):
        raise RenderError(f"stack value deployed_commit={commit!r} is not a commit SHA (or empty)")
    replacements = {
        key.upper(): _single_quoted(key, _joined(key, given[key]) if key in LIST_KEYS else given[key])
        for key in STACK_VALUE_KEYS
    }
    replacements["IDLE_STOP_MINUTES"] = str(idle_stop_minutes)
    template = spliced((script_dir / "on_start.sh").read_text(), script_dir)
    return render(template, replacements, name="on_start.sh")


def _git(repo_root: Path | str, *args: str) -> str | None:
    """Run git in `repo_root`; its stripped output, or None when git is missing or fails."""
    try:
        done = subprocess.run(["git", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=30,
                              check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def current_commit(repo_root: Path | str) -> str | None:
    """The commit checked out in `repo_root` (`git rev-parse HEAD`): the default of what the notebook clones.

    Args:
        repo_root: a directory of a git checkout.

    Returns:
        The full SHA, or None when `repo_root` is not a git checkout, has no commit yet or git is missing.
    """
    sha = _git(repo_root, "rev-parse", "-q", "--verify", "HEAD^{commit}")
    return sha if sha and _COMMIT.match(sha) else None


def origin_url(repo_root: Path | str, remote: str = "origin") -> str | None:
    """The URL of `remote` in the checkout at `repo_root` (`git remote get-url`), or None when it has none.

    Args:
        repo_root: a directory of a git checkout.
        remote: the remote's name.
    """
    return _git(repo_root, "remote", "get-url", remote) or None


def commit_on_remote(repo_root: Path | str, commit: str, remote: str = "origin") -> bool | None:
    """Whether a branch of `remote` contains `commit`, as far as this checkout knows (offline: no fetch).

    It reads the remote-tracking branches (`git branch -r --contains`), so the answer is as of the last fetch: synth
    warns on False, since the notebook could not check that commit out.

    Args:
        repo_root: a directory of a git checkout.
        commit: the commit (SHA) to look for.
        remote: the remote's name.

    Returns:
        True or False; None when unknown: no remote-tracking branch of `remote`, an unknown commit, or no git.
    """
    if not _git(repo_root, "for-each-ref", "--count=1", f"refs/remotes/{remote}/"):
        return None
    if _git(repo_root, "rev-parse", "-q", "--verify", f"{commit}^{{commit}}") is None:
        return None
    branches = _git(repo_root, "branch", "-r", "--contains", commit)
    if branches is None:
        return None
    return any(line.strip().startswith(f"{remote}/") for line in branches.splitlines())

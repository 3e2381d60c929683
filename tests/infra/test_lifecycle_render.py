"""Rendering the lifecycle scripts: placeholders, values, repository URLs, CloudFormation tokens, git helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.lifecycle import render
from infra.lifecycle.render import RenderError

SHA = "0123456789abcdef0123456789abcdef01234567"
URL = "https://github.com/example-org/monai-dicom-sagemaker.git"


def values(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "stack_name": "MonaiDicomSageMaker",
        "region": "eu-west-1",
        "bucket": "monaidicom-databucket-1a2b3c",
        "data_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/0b1f6a52-3f5e-4a5c-9a8e-4f2c2b7c1d11",
        "training_role_arn": "arn:aws:iam::123456789012:role/TrainingRole",
        "model_role_arn": "arn:aws:iam::123456789012:role/ModelRole",
        "notebook_role_arn": "arn:aws:iam::123456789012:role/NotebookRole",
        "training_image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/monai-training:1.0",
        "training_image_variant": "",
        "subnets": ["subnet-0aaa", "subnet-0bbb"],
        "security_group_ids": ["sg-0ccc"],
        "repo_url": URL,
        "repo_ref": SHA,
        "deployed_commit": SHA,
    }
    return {**base, **overrides}


def bash_value(script: str, variable: str) -> str:
    """The value bash gives `variable` from its assignment line in `script`."""
    line = next(x for x in script.splitlines() if x.startswith(f"{variable}="))
    return subprocess.run(["bash", "-c", f'{line}\nprintf %s "${variable}"'], capture_output=True, text=True,
                          check=True).stdout


def copy_scripts(tmp_path: Path) -> Path:
    for path in render.LIFECYCLE_DIR.glob("*.sh"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


# --- placeholders ---------------------------------------------------------------------------------------------------


def test_on_create_placeholders_all_replaced() -> None:
    text = render.render_on_create(repo_url=URL, repo_ref=SHA)
    assert render.placeholders(text) == set()
    assert "@@" not in text
    assert bash_value(text, "REPO_URL") == URL
    assert bash_value(text, "REPO_REF") == SHA
    assert text.startswith("#!/bin/bash\n# Rendered from infra/lifecycle/on_create.sh")
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_on_start_placeholders_all_replaced() -> None:
    text = render.render_on_start(values=values(), idle_stop_minutes=45)
    assert render.placeholders(text) == set()
    assert "@@" not in text
    assert bash_value(text, "BUCKET") == "monaidicom-databucket-1a2b3c"
    assert bash_value(text, "SUBNETS") == "subnet-0aaa,subnet-0bbb"
    assert bash_value(text, "IDLE_STOP_MINUTES") == "45"
    assert bash_value(text, "DEPLOYED_COMMIT") == SHA
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_the_sources_hold_exactly_the_known_placeholders() -> None:
    on_create = render.placeholders(render.strip_comments((render.LIFECYCLE_DIR / "on_create.sh").read_text()))
    on_start = render.placeholders(render.strip_comments((render.LIFECYCLE_DIR / "on_start.sh").read_text()))
    assert on_create == {"REPO_URL", "REPO_REF"}
    assert on_start == {k.upper() for k in render.STACK_VALUE_KEYS} | {"IDLE_STOP_MINUTES"}


def test_unknown_placeholder_fails(tmp_path: Path) -> None:
    scripts = copy_scripts(tmp_path)
    source = scripts / "on_start.sh"
    source.write_text(source.read_text().replace("set -uo pipefail\n", "set -uo pipefail\nX='@@NOT_A_VALUE@@'\n"))
    with pytest.raises(RenderError, match="no value for placeholder.*@@NOT_A_VALUE@@"):
        render.render_on_start(values=values(), idle_stop_minutes=0, script_dir=scripts)


def test_value_without_placeholder_fails(tmp_path: Path) -> None:
    scripts = copy_scripts(tmp_path)
    source = scripts / "on_create.sh"
    source.write_text(source.read_text().replace("REPO_REF='@@REPO_REF@@'", "REPO_REF=main"))
    with pytest.raises(RenderError, match="no placeholder for value.*REPO_REF"):
        render.render_on_create(repo_url=URL, repo_ref=SHA, script_dir=scripts)


def test_placeholders_in_comments_are_ignored_and_comments_dropped() -> None:
    source = (render.LIFECYCLE_DIR / "on_start.sh").read_text()
    assert "@@NAME@@" in source  # the header comment names the syntax
    text = render.render_on_start(values=values(), idle_stop_minutes=0)
    assert "stack.json (/home/ec2-user" not in text  # the header comment is gone


def test_strip_comments_keeps_the_shebang_and_here_documents() -> None:
    script = "#!/bin/bash\n# comment\n\necho hi  # kept\n  # indented comment\ncat <<'PY'\n# kept in heredoc\nPY\n"
    assert render.strip_comments(script) == "#!/bin/bash\necho hi  # kept\ncat <<'PY'\n# kept in heredoc\nPY\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bucket": None}, "missing \\['bucket'\\]"),
        ({"extra": "x"}, "unknown \\['extra'\\]"),
        ({"bucket": 3}, "bucket must be a string"),
        ({"bucket": "a\nb"}, "control character"),
        ({"subnets": ["subnet-a,subnet-b"]}, "without commas"),
        ({"subnets": ["#{Token[TOKEN.7]}"]}, "Fn.join"),
        ({"deployed_commit": "not-a-sha"}, "not a commit SHA"),
        ({"repo_url": "git@github.com:o/r.git"}, "SSH"),
        ({"repo_ref": "--upload-pack=x"}, "not a commit SHA, branch or tag"),
    ],
)
def test_bad_values_fail(change: dict[str, Any], message: str) -> None:
    given = values(**change)
    for key, value in change.items():
        if value is None:
            del given[key]
    with pytest.raises(ValueError, match=message):
        render.render_on_start(values=given, idle_stop_minutes=0)


def test_deployed_commit_may_be_left_out() -> None:
    given = values()
    del given["deployed_commit"]
    assert bash_value(render.render_on_start(values=given, idle_stop_minutes=0), "DEPLOYED_COMMIT") == ""


@pytest.mark.parametrize("minutes", [-1, 10081, True, "60", 1.5])
def test_bad_idle_stop_minutes_fail(minutes: Any) -> None:
    with pytest.raises(RenderError, match="idle_stop_minutes"):
        render.render_on_start(values=values(), idle_stop_minutes=minutes)


def test_values_are_quoted_for_bash() -> None:
    tricky = "it's $(rm -rf /) `x` \"q\" \\ $HOME"
    text = render.render_on_start(values=values(stack_name=tricky), idle_stop_minutes=0)
    assert bash_value(text, "STACK_NAME") == tricky


def test_list_values_may_be_one_comma_separated_string() -> None:
    text = render.render_on_start(values=values(subnets="${Token[TOKEN.55]}", security_group_ids=[]),
                                  idle_stop_minutes=0)
    assert "SUBNETS='${Token[TOKEN.55]}'" in text
    assert "SECURITY_GROUP_IDS=''" in text


# --- CloudFormation tokens ------------------------------------------------------------------------------------------


def test_token_strings_pass_through_unchanged() -> None:
    tokens: dict[str, Any] = {k: f"${{Token[TOKEN.{10 + i}]}}" for i, k in enumerate(render.STACK_VALUE_KEYS)}
    tokens.update(subnets=["${Token[TOKEN.91]}", "${Token[TOKEN.92]}"], repo_url=URL, repo_ref="main",
                  deployed_commit=SHA)
    text = render.render_on_start(values=tokens, idle_stop_minutes=60)
    for key in ("stack_name", "region", "bucket", "data_key_arn", "training_role_arn", "model_role_arn",
                "notebook_role_arn",
                "training_image_uri", "security_group_ids"):
        assert f"{key.upper()}='{tokens[key]}'\n" in text
    assert "SUBNETS='${Token[TOKEN.91]},${Token[TOKEN.92]}'\n" in text


def test_cdk_resolves_the_rendered_script() -> None:
    # The stack wraps the text with Fn.base64: CDK must turn the embedded tokens into references.
    from aws_cdk import App, Aws, Fn, Stack
    from aws_cdk import aws_s3 as s3

    stack = Stack(App(), "RenderTokens")
    bucket = s3.Bucket(stack, "Data")
    given = values(stack_name=Aws.STACK_NAME, region=Aws.REGION, bucket=bucket.bucket_name,
                   subnets=[Fn.select(0, Fn.get_azs()), "subnet-0bbb"])
    text = render.render_on_start(values=given, idle_stop_minutes=60)
    resolved = stack.resolve(Fn.base64(text))
    parts = resolved["Fn::Base64"]["Fn::Join"][1]
    assert resolved["Fn::Base64"]["Fn::Join"][0] == ""
    assert {"Ref": "AWS::StackName"} in parts and {"Ref": "AWS::Region"} in parts
    assert {"Ref": stack.get_logical_id(bucket.node.default_child)} in parts  # type: ignore[arg-type]
    literal = "".join(p for p in parts if isinstance(p, str))
    assert "${Token[" not in literal
    assert "NB_USER=${NB_USER:-ec2-user}" in literal  # bash's own ${...} stays as it is

    # What CloudFormation makes of it, with the references replaced by values, is the script we tested.
    fake = {"AWS::StackName": "Stack", "AWS::Region": "eu-west-1"}
    deployed = "".join(p if isinstance(p, str) else fake.get(p.get("Ref"), "resolved") for p in parts)
    assert bash_value(deployed, "REGION") == "eu-west-1"
    assert bash_value(deployed, "STACK_NAME") == "Stack"
    assert bash_value(deployed, "SUBNETS") == "resolved,subnet-0bbb"


# --- repository URL and ref -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://github.com/ORG/REPO.git", "REPO"),
        ("https://github.com/example-org/monai-dicom-sagemaker", "monai-dicom-sagemaker"),
        ("https://gitlab.example.com:8443/group/sub/my_repo.git/", "my_repo"),
        ("https://codecommit.eu-west-1.amazonaws.com/v1/repos/monai.dicom", "monai.dicom"),
    ],
)
def test_https_urls_are_accepted(url: str, name: str) -> None:
    assert render.validate_repo_url(url) == url
    assert render.repo_dir_name(url) == name
    # The scripts compute the same directory name in bash.
    script = render.render_on_create(repo_url=url, repo_ref="main")
    lines = [x for x in script.splitlines() if x.startswith(("REPO_URL=", "REPO_NAME=", "SAGEMAKER_DIR=", "REPO_DIR="))]
    done = subprocess.run(["bash", "-c", "\n".join(lines) + '\nprintf %s "$REPO_DIR"'], capture_output=True,
                          text=True, check=True, env={**os.environ, "SAGEMAKER_DIR": "/sm"})
    assert done.stdout == f"/sm/{name}"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("git@github.com:ORG/REPO.git", "SSH URL.*credentials.*https://github.com/ORG/REPO.git"),
        ("ssh://git@github.com/ORG/REPO.git", "SSH URL"),
        ("git+ssh://git@github.com/ORG/REPO.git", "SSH URL"),
        ("file:///srv/git/repo.git", "local path"),
        ("/srv/git/repo.git", "local path"),
        ("../repo", "local path"),
        ("repo", "local path"),
        ("git://github.com/ORG/REPO.git", "git://"),
        ("http://github.com/ORG/REPO.git", "plain HTTP"),
        ("ftp://example.com/repo.git", "not HTTPS"),
        ("https://user:secret@github.com/ORG/REPO.git", "credentials"),
        ("https://ghp_token@github.com/ORG/REPO.git", "credentials"),
        ("https://github.com", "no host or no repository"),
        ("https://github.com/ORG/REPO.git?ref=main", "query"),
        ("https://github.com/ORG/my repo.git", "spaces"),
        ("https://github.com/ORG/it's.git", "quotes"),
        ("https://github.com/ORG/.git", "repository name"),
        ("${Token[TOKEN.12]}", "token"),
        ("", "empty"),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        render.validate_repo_url(url)
    assert "https://" in str(error.value) or "token" in message  # says what to use instead
    with pytest.raises(ValueError, match=message):
        render.render_on_create(repo_url=url, repo_ref="main")


@pytest.mark.parametrize("ref", [SHA, "main", "v1.0", "release/2026-11", "abc1234"])
def test_refs_are_accepted(ref: str) -> None:
    assert render.validate_repo_ref(ref) == ref


@pytest.mark.parametrize("ref", ["", "-b", "--upload-pack=touch x", "a..b", "main.lock", "x y", "v1/", "a;b", "$(x)"])
def test_bad_refs_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="not a commit SHA, branch or tag"):
        render.render_on_create(repo_url=URL, repo_ref=ref)


# --- size ---------------------------------------------------------------------------------------------------------


def test_a_script_over_the_limit_fails(tmp_path: Path) -> None:
    scripts = copy_scripts(tmp_path)
    source = scripts / "on_create.sh"
    source.write_text(source.read_text() + "echo '" + "x" * 12_300 + "'\n")
    with pytest.raises(RenderError, match="16383"):
        render.render_on_create(repo_url=URL, repo_ref=SHA, script_dir=scripts)


def test_tokens_are_counted_at_their_allowance() -> None:
    assert render.estimated_base64_length("${Token[TOKEN.1]}") == render.base64_length("x" * render.TOKEN_ALLOWANCE)
    assert render.estimated_base64_length("abc") == render.base64_length("abc") == 4


# --- git helpers ----------------------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never the repository around tmp_path
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")


def test_current_commit(tmp_path: Path, git_env: None) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    assert render.current_commit(repo) is None  # not a checkout
    _git(repo, "init", "-q", "-b", "main")
    assert render.current_commit(repo) is None  # no commit yet
    _git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    assert render.current_commit(repo) == _git(repo, "rev-parse", "HEAD")
    assert render.origin_url(repo) is None


def test_commit_on_remote(tmp_path: Path, git_env: None) -> None:
    bare, repo = tmp_path / "remote.git", tmp_path / "repo"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    _git(tmp_path, "clone", "-q", str(bare), str(repo))
    _git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    first = _git(repo, "rev-parse", "HEAD")
    assert render.commit_on_remote(repo, first) is None  # no remote-tracking branch yet
    _git(repo, "push", "-q", "origin", "HEAD:main")
    assert render.commit_on_remote(repo, first) is True
    _git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    second = _git(repo, "rev-parse", "HEAD")
    assert render.commit_on_remote(repo, second) is False  # not pushed
    assert render.commit_on_remote(repo, "f" * 40) is None  # unknown here
    assert render.commit_on_remote(tmp_path / "nowhere", first) is None
    assert render.origin_url(repo) == str(bare)

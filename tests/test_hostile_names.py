"""Hostile names and secrets (issue 8 §4): the real `make dagshub` and `make remote` in a copy of the project.

A value smuggled into OWNER, REPO or S3 must never run (each payload would create a file), and must stop with one
clean `error:` line. No secret from the environment may reach a tracked file, the output or a log; the only place a
token may land is the git-ignored `.dvc/config.local`. Nothing here touches the network. Part of the optional remote
tracking (copier's `remote_tracking`): a project generated without it has no such file
(its `make dagshub` says how to add the part).
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from pipeline_helpers import BIN, copy_project, project_env, run
from segmentation.errors import UserError
from segmentation.tracking.remote import apply_dagshub_credentials, bound_http_requests
from segmentation.tracking.remote.__main__ import SHOWN_CHARS, check_name

NAME_RULE = "(letters, digits, '-', '_' and '.', starting with a letter or a digit, no '..')"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("hostile") / "project")


def make(root: Path, target: str, *assignments: str, **env: str) -> subprocess.CompletedProcess:
    """``make -f <copy>/Makefile <target> BIN=<this venv> ...`` with the test's own environment."""
    cmd = ["make", "-f", str(root / "Makefile"), target, f"BIN={BIN}", *assignments]
    return run(cmd, root, project_env(root.parent, **env), check=False, timeout=120)


def payloads(canary: Path) -> dict[str, tuple[str, str]]:
    """(variable, value) pairs, each of which creates ``canary/<name>`` if a shell or make evaluates it."""
    return {
        "backtick": ("OWNER", f"`touch {canary}/backtick`"),
        "dollar_paren": ("OWNER", f"$(touch {canary}/dollar_paren)"),
        "make_shell_function": ("OWNER", f"$(shell touch {canary}/make_shell_function)"),
        "double_quote": ("OWNER", f'acme"; touch {canary}/double_quote; echo "'),
        "single_quote": ("OWNER", f"acme'; touch {canary}/single_quote; echo '"),
        "semicolon": ("REPO", f"segments; touch {canary}/semicolon"),
        "newline": ("REPO", f"segments\ntouch {canary}/newline"),
        "dollar_dollar": ("REPO", f"$$(touch {canary}/dollar_dollar)"),
    }


@pytest.mark.parametrize("case", list(payloads(Path("/x"))))
def test_make_dagshub_never_runs_a_smuggled_command(project, tmp_path, case):
    canary = tmp_path / "canary"
    canary.mkdir()
    variable, value = payloads(canary)[case]
    values = {"OWNER": "acme", "REPO": "segments", variable: value}
    proc = make(project, "dagshub", *(f"{k}={v}" for k, v in values.items()))
    assert list(canary.iterdir()) == []  # the payload did not run
    assert proc.returncode == 2
    assert str(canary) not in proc.stdout  # make echoes the recipe: no value is spliced into it
    errors = [line for line in proc.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    kind = "user or organisation" if variable == "OWNER" else "repository"
    shown = value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "..."  # long values are cut
    assert errors == [f"error: {variable} {shown!r}: not a DagsHub {kind} name {NAME_RULE}"]
    # Nothing written: the copy's tracked files are untouched and no file appeared.
    assert run(["git", "status", "--porcelain"], project, project_env(project.parent)).stdout == ""


def test_make_dagshub_without_names_prints_the_usage(project):
    proc = make(project, "dagshub", "OWNER=acme")
    assert proc.returncode == 2
    assert "error: usage: make dagshub OWNER=<user or org> REPO=<repo> [S3=1]" in proc.stderr.splitlines()


@pytest.mark.parametrize("name", ["acme", "Acme-Lab_2", "seg.ments", "a", "9lives", "x.y.z"])
def test_valid_dagshub_names(name):
    assert check_name(name, "OWNER", "user or organisation") == name


@pytest.mark.parametrize(
    "name", ["", "..", "a..b", "a b", " acme", "acme ", "a/b", "a?b", "a#b", "-acme", ".acme", "_acme", "a\nb",
             "a\tb", "ac$me", "a`b`", "a'b", 'a"b', "ü", "a\x1b[31m"],
)  # fmt: skip
def test_invalid_dagshub_names_are_one_line_errors(name):
    with pytest.raises(UserError) as err:
        check_name(name, "REPO", "repository")
    message = str(err.value)
    assert message == f"REPO {name!r}: not a DagsHub repository name {NAME_RULE}"
    assert "\n" not in message and "\x1b" not in message


def test_no_secret_reaches_a_tracked_file_the_output_or_a_log(project, tmp_path):
    marker = f"secret-{uuid.uuid4().hex}"
    canary = tmp_path / "canary"
    canary.mkdir()
    secrets = {
        "DAGSHUB_USER_TOKEN": marker,
        "MLFLOW_TRACKING_PASSWORD": marker,
        "MLFLOW_TRACKING_TOKEN": marker,
        "AWS_SECRET_ACCESS_KEY": marker,
    }
    outputs = []
    # A real set-up with the token in the environment, S3 holding a payload (any non-empty value means "yes").
    proc = make(project, "dagshub", "OWNER=acme", "REPO=seg.ments", f"S3=$(shell touch {canary}/s3)", **secrets)
    outputs.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert list(canary.iterdir()) == []
    assert "url s3://seg.ments" in proc.stdout
    local = project / ".dvc" / "config.local"
    assert marker in local.read_text()  # the token went where it belongs (so the scan below can see a leak)...
    assert run(["git", "check-ignore", "-q", ".dvc/config.local"], project, project_env(project.parent)).returncode == 0
    # ...and remotes whose URLs hold credentials (a user's own config.local), one with a port that does not parse.
    with local.open("a", encoding="utf-8") as fh:
        fh.write(
            f"['remote \"creds\"']\n    url = https://alice:{marker}@store.example/x.dvc\n"
            f"['remote \"s3creds\"']\n    url = s3://bucket\n    endpointurl = https://key:{marker}@s3.example\n"
            f"['remote \"odd\"']\n    url = https://bob:{marker}@host:notaport/x\n"
        )
    shown = make(project, "remote", **secrets, MLFLOW_TRACKING_URI=f"https://carol:{marker}@tracker.example/")
    outputs.append(shown.stdout + shown.stderr)
    assert shown.returncode == 0, shown.stderr
    assert "MLflow tracking: https://tracker.example/  [environment (MLFLOW_TRACKING_URI)]" in shown.stdout
    assert "DVC remote creds: https://store.example/x.dvc [credentials in the URL, not shown]" in shown.stdout
    assert "DVC remote s3creds: s3://bucket endpoint https://s3.example [credentials" in shown.stdout
    assert "DVC remote odd: https://host:notaport/x [credentials in the URL, not shown]" in shown.stdout
    # DagsHub's host itself with credentials (DAGSHUB_CLIENT_HOST): the tracking URI and the repo line.
    host = make(project, "remote", **secrets, DAGSHUB_CLIENT_HOST=f"https://dave:{marker}@dh.example")
    outputs.append(host.stdout + host.stderr)
    assert host.returncode == 0, host.stderr
    assert "MLflow tracking: https://dh.example/acme/seg.ments.mlflow" in host.stdout
    assert "DagsHub repo: https://dh.example/acme/seg.ments" in host.stdout
    # A remote without a URL in config.local: DVC refuses the config; one line, still no secret.
    with local.open("a", encoding="utf-8") as fh:
        fh.write(f"['remote \"broken\"']\n    password = {marker}\n")
    broken = make(project, "remote", **secrets)
    outputs.append(broken.stdout + broken.stderr)
    assert broken.returncode == 2
    assert [line for line in broken.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)] == [
        "error: .dvc/config or .dvc/config.local: config file error: expected 'url' for dictionary value "
        "@ data['remote']['broken']; fix it with dvc remote modify"
    ]

    assert all(marker not in out for out in outputs)
    # Every file of the copy and of its HOME / DVC site cache (logs included), except the one meant for the token.
    leaked = [
        path
        for path in project.parent.rglob("*")
        if path.is_file() and path != local and marker.encode() in path.read_bytes()
    ]
    assert leaked == []


def test_dagshub_token_becomes_mlflow_credentials_only_in_the_environment(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.segmentation]\ndagshub_owner = "acme"\ndagshub_repo = "s"\n')
    env = {"DAGSHUB_USER_TOKEN": "t0ken"}
    apply_dagshub_credentials(tmp_path, env)
    assert env == {
        "DAGSHUB_USER_TOKEN": "t0ken",
        "MLFLOW_TRACKING_USERNAME": "acme",
        "MLFLOW_TRACKING_PASSWORD": "t0ken",
    }
    explicit = {"DAGSHUB_USER_TOKEN": "t0ken", "MLFLOW_TRACKING_PASSWORD": "other"}
    apply_dagshub_credentials(tmp_path, explicit)
    assert explicit["MLFLOW_TRACKING_PASSWORD"] == "other"  # explicit MLflow credentials win


def test_http_bounds_respect_user_values():
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    bound_http_requests(env)
    assert env == {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }

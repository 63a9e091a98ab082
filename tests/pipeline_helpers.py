"""Helpers for tests that run the real pipeline in a copy of the project."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The tests' own params and data (relative to the project): the project's params.yaml and data are the user's.
FIXTURE_PARAMS = Path("tests") / "fixtures" / "params.yaml"
FIXTURE_DATA = Path("tests") / "fixtures" / "marketing_sample.csv"
DAGSHUB_SINK = "http://127.0.0.1:9"  # the discard port: nothing listens there
HELD_BACK = 40  # complete rows of the sample left out of training (trained_project), scored as new customers


@dataclass(frozen=True)
class StageDef:
    """One stage of ``dvc.yaml`` as DVC reads it (``${...}`` resolved)."""

    name: str
    cmd: str
    deps: tuple[str, ...]  # files and folders (not params)
    outs: tuple[str, ...]  # every output, metric and plot file or folder, in dvc.yaml's order


@functools.cache
def stages(root: Path = REPO) -> dict[str, StageDef]:
    """The pipeline's stages in ``dvc.yaml``'s order, resolved by DVC itself (not by the code under test): tests
    take stage names and output paths from here instead of writing them again."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        found = {s.name: s for s in repo.index.stages if getattr(s, "name", None)}
    order = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {
        name: StageDef(
            name,
            found[name].cmd,
            tuple(str(d.def_path) for d in found[name].deps if not isinstance(d, ParamsDependency)),
            tuple(str(o.def_path) for o in found[name].outs),
        )
        for name in order
    }


def stage_names(root: Path = REPO) -> list[str]:
    """The stages, in the order ``dvc repro`` runs them here (dvc.yaml's)."""
    return list(stages(root))


def outputs(root: Path = REPO) -> list[str]:
    """Every output, metric and plot of every stage (files or folders), as dvc.yaml declares them."""
    return [out for stage in stages(root).values() for out in stage.outs]


def paths(root: Path = REPO) -> dict[str, str]:
    """The named paths of ``dvc.yaml`` (``vars: paths``), e.g. ``paths()["model"]``."""
    from segmentation.pipeline import paths as declared

    return declared(root)


def stage_runs(client, experiment_ids: list[str], **kwargs) -> list:
    """The stages' MLflow runs in ``experiment_ids``, without the pipeline runs that are their parents."""
    return [r for r in client.search_runs(experiment_ids, **kwargs) if "stage" in r.data.tags]


def project_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for DVC/stage subprocesses: the project's venv first, no telemetry, nothing global."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DAGSHUB_", "AWS_", "SEGMENTATION_"))}
    # Under `make test`, make's own variables would turn a test's `make ...` into a sub-make ("make[1]: ..." lines).
    for var in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"):
        env.pop(var, None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        DVC_NO_ANALYTICS="1",
        AWS_EC2_METADATA_DISABLED="true",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site-cache"),
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
        HOME=str(tmp / "home"),
        # A safety net: a project configured for DagsHub (dagshub_owner/repo) reaches a closed loopback port here,
        # never dagshub.com. Tests of the DagsHub path point it at their own servers.
        DAGSHUB_CLIENT_HOST=DAGSHUB_SINK,
    )
    env.update(extra)
    return env


def copy_project(dest: Path) -> Path:
    """Copy the project's files (tracked and new, not ignored) into ``dest`` as a fresh git repo with one commit."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "home").mkdir(exist_ok=True)
    env = project_env(dest.parent)
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-q", "-m", "copy of the template"], dest, env)
    return dest


def use_fixture_data(root: Path, env: dict[str, str]) -> None:
    """Point a project copy at the tests' own params and sample data, the way a user brings their own data.

    The user's DVC-tracked data (``*.dvc`` files) leaves the copy; the sample goes to ``data/raw/`` and is tracked
    with ``dvc add``; ``params.yaml`` becomes the fixture's. The change is committed, so that what a test sees in
    ``git status`` afterwards is the pipeline's doing.
    """
    user_data = run(["git", "ls-files", "*.dvc"], root, env).stdout.split()
    if user_data:
        run(["git", "rm", "-q", *user_data], root, env)
    params = yaml.safe_load((root / FIXTURE_PARAMS).read_text())
    data = root / params["preprocess"]["data"]["path"]
    data.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / FIXTURE_DATA, data)
    shutil.copyfile(root / FIXTURE_PARAMS, root / "params.yaml")
    run(["dvc", "add", "--quiet", str(data.relative_to(root))], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "tests: fixture params and data"], root, env)


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600):
    """Run a command, returning the CompletedProcess; on an unexpected failure show its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_stage_cli(tmp_path: Path, module: str, args: list[str], **sections) -> subprocess.CompletedProcess:
    """Run a stage's CLI (``python -m segmentation.<module> ARGS``) in ``tmp_path`` with a params.yaml of
    ``sections``."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(sections))
    env = project_env(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", f"segmentation.stages.{module}", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def the_error(proc: subprocess.CompletedProcess, tmp_path: Path) -> str:
    """Exactly one ``error:`` line, no traceback, exit 2, nothing written (no out/, no MLflow store)."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
    return lines[0]


def sample_lines() -> tuple[str, list[str]]:
    """The sample's header and data lines, exactly as in the file (line ends included)."""
    lines = (REPO / FIXTURE_DATA).read_bytes().decode("utf-8").splitlines(keepends=True)
    return lines[0], lines[1:]


def held_back_ids() -> list[int]:
    """IDs of the last HELD_BACK complete, in-bounds rows of the sample."""
    import pandas as pd

    raw = pd.read_csv(REPO / FIXTURE_DATA, sep="\t")
    complete = raw[raw["Income"].notna() & (raw["Year_Birth"] > 1925) & (raw["Income"] <= 600000)]
    return complete["ID"].tail(HELD_BACK).tolist()

"""What produced a run: the lineage a stage's MLflow run carries (upstream params and raw data from ``dvc.lock``,
the git commit) and which pipeline execution it belongs to."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segmentation import pipeline
from segmentation.errors import UserError
from segmentation.pipeline import PARAMS_FILE

LOCK_FILE = "dvc.lock"
DATA_PATH_PARAM = "preprocess.data.path"  # the raw data file, whose md5 every run is tagged with
ENV_PIPELINE_RUN = "SEGMENTATION_PIPELINE_RUN_ID"
ENV_EXP_NAME = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
GIT_TIMEOUT_S = 60


def git(*args: str, cwd: Path | None = None) -> bytes:
    """git's output; empty when git fails or is missing (outside a repository, before the first commit), or after
    ``GIT_TIMEOUT_S`` (one line says so: a hung git never holds a stage)."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=GIT_TIMEOUT_S, check=True).stdout
    except subprocess.TimeoutExpired:
        command = next((a for a in args if not a.startswith("-")), "")  # `git ls-files`, not `git --literal-pathspecs`
        print(f"warning: `git {command}` gave no answer in {GIT_TIMEOUT_S} s; went on without it", file=sys.stderr)
    except (OSError, subprocess.SubprocessError):
        pass
    return b""


def git_commit(root: Path) -> str | None:
    """HEAD's commit hash, or None outside git / before the first commit."""
    return git("rev-parse", "HEAD", cwd=root).decode().strip() or None


def pipeline_run_name(root: Path) -> str:
    """What a pipeline run is called in MLflow: its DVC experiment, else the commit (``-dirty`` when a tracked file
    other than dvc.lock and the pipeline's ``outputs`` differs from it), else "pipeline"."""
    if os.environ.get(ENV_EXP_NAME):
        return os.environ[ENV_EXP_NAME]
    commit = git_commit(root)
    if not commit:
        return "pipeline"
    outputs = pipeline_graph(root / "dvc.yaml")[1]
    spec = ["--", ".", ":(exclude)dvc.lock", *(f":(exclude){path}" for path in outputs)]
    return commit[:7] + ("-dirty" if git("status", "--porcelain", "-uno", *spec, cwd=root).strip() else "")


def file_md5(path: str | Path) -> str:
    """MD5 of a file's bytes: what DVC records for a file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


@dataclass(frozen=True)
class Lineage:
    """What produced a stage's inputs, as ``dvc.lock`` records it: the upstream stages' params and the raw data."""

    params: dict[str, Any] = field(default_factory=dict)  # flat, with section prefixes: {"train.k_max": 10}
    data_path: str | None = None
    data_md5: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # upstream stage -> md5 of its smallest cached output
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # their outputs: path -> entry (md5, size)


def upstream_lineage(stage: str, lock_path: str | Path = LOCK_FILE) -> Lineage:
    """The params of every stage upstream of ``stage`` and the raw data's path and md5, from ``dvc.lock`` (DVC
    writes a stage's entry as soon as it has run); which stages are upstream comes from ``dvc.yaml`` and the lock.
    No lock: an empty lineage."""
    from segmentation.config import flatten, parse_section, section_model

    lock_path = Path(lock_path)
    try:
        stages = pipeline.load_yaml(lock_path.read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return Lineage()
    deps_of, producer, cached = pipeline_graph(lock_path.with_name("dvc.yaml"))
    for name, entry in stages.items():
        deps_of.setdefault(name, set()).update(d["path"] for d in entry.get("deps") or [])
        producer.update({out["path"]: name for out in entry.get("outs") or []})
    upstream, todo = [], [stage]
    while todo:
        for name in [producer.get(dep) for dep in sorted(deps_of.get(todo.pop(), ()))]:
            if name and name != stage and name not in upstream:
                upstream.append(name)
                todo.append(name)
    params, deps, outputs, files = {}, {}, {}, {}
    for name in upstream:
        entry = stages.get(name) or {}
        deps.update({d["path"]: d.get("md5") for d in entry.get("deps") or []})
        for key, value in ((entry.get("params") or {}).get(PARAMS_FILE) or {}).items():
            if not isinstance(value, dict):
                params[key] = value
                continue
            with suppress(UserError):  # as its stage logged it, defaults filled in; from an older model: as recorded
                value = parse_section(key, value) if section_model(key) is not None else value
            params.update(flatten(value, f"{key}."))
        files.update({out["path"]: out for out in entry.get("outs") or []})
        outs = [out for out in entry.get("outs") or [] if out["path"] in cached.get(name, ()) and "md5" in out]
        if outs:
            outputs[name] = min(outs, key=lambda out: out.get("size", 0))["md5"]
    data_path = params.get(DATA_PATH_PARAM)
    return Lineage(params, data_path, deps.get(data_path) if data_path else None, outputs, files)


def pipeline_graph(dvc_yaml: Path) -> tuple[dict[str, set[str]], dict[str, str], dict[str, list[str]]]:
    """(stage -> its deps, output path -> its stage, stage -> its cached outputs) as ``dvc.yaml`` declares them."""
    stages, deps_of, producer, cached = {}, {}, {}, {}
    with suppress(UserError):
        stages = pipeline.stages(dvc_yaml.parent)
    for name, stage in stages.items():
        deps_of[name] = {d for d in stage.get("deps") or [] if isinstance(d, str)}
        cached[name] = [out if isinstance(out, str) else next(iter(out)) for out in stage.get("outs") or []]
        for out in [out for kind in ("outs", "metrics", "plots") for out in stage.get(kind) or []]:
            path = out if isinstance(out, str) else next(iter(out), None) if isinstance(out, dict) else None
            if path:
                producer[path] = name
    return deps_of, producer, cached


def pipeline_run_id(environ: dict[str, str] | None = None) -> str:
    """An ID shared by the stages of one pipeline execution: its DVC process's PID and start time (outside DVC,
    this process's); ``SEGMENTATION_PIPELINE_RUN_ID`` overrides it."""
    env = os.environ if environ is None else environ
    if env.get(ENV_PIPELINE_RUN):
        return env[ENV_PIPELINE_RUN]

    import psutil

    anchor = psutil.Process()
    with suppress(psutil.Error):  # the DVC process (dvc repro, dvc exp run, a queue worker) this stage runs under
        for proc in anchor.parents():
            with suppress(psutil.Error):
                if any(Path(arg).name == "dvc" for arg in proc.cmdline()[:3]):
                    anchor = proc
                    break
    seed = f"{socket.gethostname()}:{anchor.pid}:{anchor.create_time()}"
    return hashlib.sha1(seed.encode()).hexdigest()[:16]

"""Recording runs in an MLflow store: each stage's run is a child of its pipeline run (one parent per `dvc repro` or
`dvc exp run`); runs the local store cannot take wait in ``mlruns-pending/``; a deleted experiment is restored, a
moved project's artifact paths follow it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segmentation.tracking.registry import SEGMENTER, register_segmenter
from segmentation.tracking.settings import TrackingSettings, redact_uri

PENDING_DIR = "mlruns-pending"
LOCK_NAME = ".mlflow.lock"
LOCK_WAIT_S = 120
DIRS_NAME = "artifact_dirs"  # a kept run's directory artifacts, beside its "artifacts" folder
# How the train stage saves its MLflow model: MLflow 3's default (skops) would not load the segmenter's own feature
# step without a list of trusted types.
MLFLOW_SERIALIZATION = "cloudpickle"
PIPELINE_TAG = "pipeline_run_id"  # on a pipeline run and on each of its stages' runs
PARENT_TAG = "mlflow.parentRunId"  # what makes MLflow's runs list nest a stage's run under its pipeline run
OUTPUTS_TAG = "outputs_md5"  # a stage run's cached outputs (md5s): how a later pipeline run finds what made them
SKIPPED_PREFIX = "skipped."  # on a pipeline run: skipped.<stage> = the run that made the outputs DVC kept
KIND_TAG, TRAINING = "mlflow.experimentKind", "custom_model_development"  # the UI's model-training view


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow logs a store error with its traceback before raising it; the one warning line says it instead."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # above every logger's own level: mlflow sets its loggers' on import
    try:
        yield
    finally:
        logging.disable(previous)


def MlflowClientFor(uri: str):
    """An MLflow client for ``uri`` (imported here: mlflow costs ~1.3 s to import)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@dataclass
class PendingRun:
    """One stage's run as MLflow gets it; saved as JSON (with copies of its artifacts) when the store fails."""

    stage: str
    params: dict[str, Any]
    metrics: dict[str, float | int]
    tags: dict[str, str]  # PIPELINE_TAG among them
    artifacts: list[str]
    start_time: int
    end_time: int
    # Directories logged under a name (an MLflow model: ``{"segmenter": "/tmp/.../segmenter"}``).
    artifact_dirs: dict[str, str] = field(default_factory=dict)
    inputs: list[dict[str, str]] = field(default_factory=list)  # the tables read: name, digest, source (a path)
    parent_name: str = "pipeline"  # the pipeline run's name, if this run starts it
    upstream: dict[str, str] = field(default_factory=dict)  # upstream stage -> md5 of one of its outputs now

    def save(self, root: Path, artifacts: list[Path]) -> Path:
        """Write ``mlruns-pending/<start>-<stage>-<pid>/run.json`` and copies of the artifacts as they are now."""
        folder = root / PENDING_DIR / f"{self.start_time}-{self.stage}-{os.getpid()}"
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        for path in (files := [path for path in artifacts if path.is_file()]):
            shutil.copy2(path, folder / "artifacts" / path.name)
        for name, path in self.artifact_dirs.items():
            if Path(path).is_dir():
                shutil.copytree(path, folder / DIRS_NAME / name, dirs_exist_ok=True)
        record = {**self.__dict__, "artifacts": [p.name for p in files]}
        record["artifact_dirs"] = {name: name for name in self.artifact_dirs}
        (folder / "run.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        return folder


def record_run(client, settings: TrackingSettings, run: PendingRun, artifact_dir: Path | None = None) -> str:
    """Create a finished run under its pipeline run in the store behind ``client``; returns its ID. Artifacts are
    read from ``artifact_dir`` when given (a kept run, a run copied from the local store)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    local = settings.local_uri == client.tracking_uri
    experiment_id = ensure_experiment(client, settings.experiment_name, settings.artifact_location if local else None)
    parent, new_parent = pipeline_run(client, experiment_id, run)
    run_id = None
    try:
        tags = {**run.tags, PARENT_TAG: parent.info.run_id}
        run_id = client.create_run(experiment_id, start_time=run.start_time, run_name=run.stage, tags=tags).info.run_id
        log_batches(client, run_id, run.params, run.metrics, run.end_time)
        if run.inputs:
            context = [InputTag("mlflow.data.context", run.stage)]
            datasets = [DatasetInput(Dataset(source_type="local", **d), context) for d in run.inputs]
            client.log_inputs(run_id, datasets=datasets)
            client.log_inputs(parent.info.run_id, datasets=datasets)  # the pipeline run's Dataset column too
        for name in run.artifacts:
            client.log_artifact(run_id, str(artifact_dir / name if artifact_dir else name))
        for name, path in run.artifact_dirs.items():
            source = artifact_dir.parent / DIRS_NAME / name if artifact_dir and name else (artifact_dir or Path(path))
            client.log_artifacts(run_id, str(source), artifact_path=name or None)
        client.set_terminated(run_id, "FINISHED", end_time=run.end_time)
    except Exception:  # e.g. mlruns/ not writable: no run left RUNNING beside the copy the caller keeps
        for ghost in filter(None, (run_id, parent.info.run_id if new_parent else None)):
            with suppress(Exception):
                client.delete_run(ghost)
        raise
    add_to_pipeline_run(client, experiment_id, parent, run)
    dirs = run.artifact_dirs  # a run copied from the local store has its artifacts as one directory, named ""
    if SEGMENTER in dirs or ("" in dirs and Path(dirs[""], SEGMENTER).is_dir()):
        try:  # train's model: a new version in the registry, the champion unless in a DVC experiment
            register_segmenter(client, run_id, settings.model_name, champion="dvc_exp_name" not in run.tags)
        except Exception as exc:  # the run and the stage's outputs are what matter
            why = describe_failure(exc)
            print(f"warning: MLflow model registry: segmenter of run {run_id} not registered: {why}", file=sys.stderr)
    return run_id


def pipeline_run(client, experiment_id: str, run: PendingRun):
    """The run of ``run``'s pipeline (its ``PIPELINE_TAG``), created by its first stage, and whether it is new."""
    key = run.tags.setdefault(PIPELINE_TAG, f"{run.start_time}-{run.stage}")  # none: kept by an older version
    for found in client.search_runs([experiment_id], f"tags.{PIPELINE_TAG} = '{key}'"):
        if PARENT_TAG not in found.data.tags:
            return found, False
    shared = {k: v for k, v in run.tags.items() if k.startswith(("mlflow.source", "dvc_exp_name", "raw_data"))}
    tags = {**shared, PIPELINE_TAG: key, "mlflow.source.name": "dvc pipeline"}
    return client.create_run(experiment_id, start_time=run.start_time, run_name=run.parent_name, tags=tags), True


def add_to_pipeline_run(client, experiment_id: str, parent, run: PendingRun) -> None:
    """Give the pipeline run the stage's params (every upstream stage's among them) and metrics, link the upstream
    stages DVC skipped to the runs that made their outputs, and mark it finished as of this stage."""
    parent_id, tags = parent.info.run_id, dict(parent.data.tags)
    ran = {r.data.tags.get("stage") for r in client.search_runs([experiment_id], f"tags.{PARENT_TAG} = '{parent_id}'")}
    metrics = dict(run.metrics)
    for stage, md5 in run.upstream.items():
        if stage in ran or SKIPPED_PREFIX + stage in tags:
            continue
        query = f"tags.stage = '{stage}' and tags.{OUTPUTS_TAG} LIKE '%{md5}%'"
        for earlier in client.search_runs(
            [experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"]
        ):
            client.set_tag(parent_id, SKIPPED_PREFIX + stage, earlier.info.run_id)
            metrics = {**earlier.data.metrics, **metrics}
    params = {k: v for k, v in run.params.items() if k not in parent.data.params}
    log_batches(client, parent_id, params, metrics, run.end_time)
    client.set_terminated(parent_id, "FINISHED", end_time=run.end_time)


def log_batches(client, run_id: str, params: dict[str, Any], metrics: dict[str, float], time_ms: int) -> None:
    """Log ``params`` and ``metrics`` in batches of MLflow's limit (100 params)."""
    from mlflow.entities import Metric, Param

    params = [Param(k, str(v)) for k, v in params.items()]
    metrics = [Metric(k, float(v), time_ms, 0) for k, v in metrics.items()]
    for i in range(0, max(len(params), len(metrics), 1), 100):
        client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])


def replay_pending(client, settings: TrackingSettings, root: Path) -> int:
    """Record the runs kept in ``mlruns-pending/`` (oldest first) and remove them; returns how many."""
    folder = root / PENDING_DIR
    kept = [entry for entry in sorted(folder.iterdir()) if (entry / "run.json").is_file()] if folder.is_dir() else []
    for entry in kept:
        run = PendingRun(**json.loads((entry / "run.json").read_text(encoding="utf-8")))
        record_run(client, settings, run, artifact_dir=entry / "artifacts")
        shutil.rmtree(entry)
    with suppress(OSError):  # removed once empty
        folder.rmdir()
    return len(kept)


@contextmanager
def local_store_lock(root: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One writer at a time on the local store: parallel stages (``dvc queue start -j 2``) would otherwise meet
    SQLite's "database is locked". Bounded: past ``wait_s`` it gives up with :class:`TimeoutError`."""
    import fcntl

    with open(root / LOCK_NAME, "a+") as fh:  # closing it releases the lock
        deadline = time.monotonic() + wait_s
        while True:
            with suppress(BlockingIOError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the store was locked by another stage for over {wait_s:.0f} s")
            time.sleep(0.1)
        yield


def describe_failure(exc: BaseException) -> str:
    """One short line, without credentials, for a store or a tracking server that failed."""
    text = " ".join(str(exc).split())
    if "401" in text or "Unauthorized" in text or "403" in text:
        return "credentials refused (check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or DAGSHUB_USER_TOKEN)"
    unreachable = ("Connection refused", "Max retries exceeded", "timed out", "Read timed out", "Name or service")
    meanings = {marker: f"unreachable ({marker.lower()})" for marker in unreachable} | {
        "readonly database": "read-only",
        "file is not a database": "not an MLflow database (corrupt?)",
        "database disk image is malformed": "corrupt",
        "unable to open database": "cannot be opened",
        "database is locked": "locked by another process",
    }
    found = [meaning for marker, meaning in meanings.items() if marker in text]
    return found[0] if found else redact_uri(text)[:160] or type(exc).__name__


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's ID; created when missing (a model-training experiment), restored when deleted (one line says
    so); in the local store (``artifact_location`` given), pointed back inside a copied or moved project."""
    import sqlite3

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location, tags={KIND_TAG: TRAINING})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
        print(f"note: MLflow experiment {name!r} had been deleted; restored it, with its runs", file=sys.stderr)
    if KIND_TAG not in experiment.tags:  # made before it was said, or by hand: the UI opens on its runs all the same
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, TRAINING)
    old, new, store = experiment.artifact_location, artifact_location, client.tracking_uri
    if new and old != new and store.startswith("sqlite:///"):
        # MLflow records absolute paths and its API cannot change them: after `cp -a` or `mv`, runs would write into
        # the old folder.
        with sqlite3.connect(store.removeprefix("sqlite:///")) as db:
            experiment_id = int(experiment.experiment_id)
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, experiment_id))
            db.execute(
                "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?)"
                " WHERE experiment_id = ? AND artifact_uri LIKE ?",
                (new, len(old) + 1, experiment_id, f"{old}%"),
            )
        print(f"note: the project has moved: MLflow artifacts now go to {new} (were {old})", file=sys.stderr)
    return experiment.experiment_id

"""Remote tracking, an optional part of the project (copier's ``remote_tracking``): delivery of runs to a remote
MLflow tracker (DagsHub's endpoint, or any server). A run the remote could not take stays tagged pending in the local
store, and :func:`sync` (``make sync``) delivers it later, exactly once. The CLI is ``__main__.py``."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from segmentation.errors import UserError
from segmentation.tracking.settings import TrackingSettings, project_config, redact_uri
from segmentation.tracking.store import (
    OUTPUTS_TAG,
    PARENT_TAG,
    PENDING_DIR,
    SKIPPED_PREFIX,
    MlflowClientFor,
    PendingRun,
    describe_failure,
    ensure_experiment,
    local_store_lock,
    record_run,
    replay_pending,
)

PENDING_TAG = "segmentation_pending"  # + "_<key>": value = the remote URI (redacted) still to receive the run
DELIVERED_TAG = "segmentation_delivered"  # + "_<key>": value = the run's ID on that remote
SOURCE_TAG = "segmentation_source_run"  # on the remote run: the local run's ID (what makes delivery idempotent)
# Tags that stay in the local store: delivery marks, and what MLflow sets itself on the copy.
LOCAL_ONLY = (PENDING_TAG, DELIVERED_TAG, "mlflow.runName", PARENT_TAG)
ENV_TIMEOUT = "SEGMENTATION_TRACKING_TIMEOUT"
DEFAULT_TIMEOUT_S = 5


def apply_dagshub_credentials(root: Path, environ: MutableMapping[str, str] | None = None) -> None:
    """Let MLflow authenticate with the DagsHub token when no MLflow credentials are set (in this process's
    environment only: never in a file, a param or a tag)."""
    env = os.environ if environ is None else environ
    token = env.get("DAGSHUB_USER_TOKEN")
    if not token or env.get("MLFLOW_TRACKING_PASSWORD") or env.get("MLFLOW_TRACKING_TOKEN"):
        return
    user = (
        env.get("MLFLOW_TRACKING_USERNAME") or env.get("DAGSHUB_USERNAME") or project_config(root).get("dagshub_owner")
    )
    if user:
        env["MLFLOW_TRACKING_USERNAME"] = user
        env["MLFLOW_TRACKING_PASSWORD"] = token


def remote_key(uri: str) -> str:
    """A short stable key for a remote tracking URI (credentials ignored), usable in a tag name."""
    return hashlib.sha1(redact_uri(uri).encode()).hexdigest()[:10]


def bound_http_requests(environ: MutableMapping[str, str] | None = None) -> None:
    """Bound MLflow's HTTP calls: its defaults (7 retries with backoff, 120 s timeout) stall a stage ~4 minutes
    on a dead server. User-set ``MLFLOW_HTTP_REQUEST_*`` values win."""
    env = os.environ if environ is None else environ
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", env.get(ENV_TIMEOUT, str(DEFAULT_TIMEOUT_S)))
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def mark_pending(local, run_id: str, settings: TrackingSettings) -> None:
    """Tag a run just recorded locally as pending for the remote: a stage stopped while delivering leaves it to sync."""
    local.set_tag(run_id, f"{PENDING_TAG}_{remote_key(settings.tracking_uri)}", settings.display_uri)


def deliver_or_keep(local, run_id: str, settings: TrackingSettings, root: Path) -> bool:
    """Copy a finished local run (tagged pending when recorded) to the remote tracker; on failure warn in one line."""
    from mlflow.tracking import MlflowClient

    apply_dagshub_credentials(root)
    bound_http_requests()
    try:
        deliver_run(local, run_id, MlflowClient(tracking_uri=settings.tracking_uri), settings)
        return True
    except Exception as exc:  # any failure of the remote must leave the stage's results intact
        print(
            f"warning: MLflow tracking server {settings.display_uri}: {describe_failure(exc)}; "
            "the run is kept in the local store (mlflow.db) and `make sync` delivers it later",
            file=sys.stderr,
        )
        return False


def deliver_run(local, run_id: str, remote, settings: TrackingSettings) -> str:
    """Copy local run ``run_id`` (params, metrics, tags, datasets, artifacts) under its pipeline run on ``remote``,
    exactly once (it is tagged with the local ID; one left unfinished by an interrupted delivery is sent again).
    Returns its remote ID."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    key = remote_key(settings.tracking_uri)
    run = local.get_run(run_id)
    experiment_id = ensure_experiment(remote, settings.experiment_name)
    for previous in remote.search_runs([experiment_id], filter_string=f"tags.{SOURCE_TAG} = '{run_id}'"):
        if previous.info.status == "FINISHED":
            _mark_delivered(local, run, key, previous.info.run_id)
            return previous.info.run_id
        remote.delete_run(previous.info.run_id)

    tags = run.data.tags
    parent = local.get_run(tags[PARENT_TAG]) if PARENT_TAG in tags else None  # None: recorded before nesting
    # The stages DVC skipped, linked on the remote as locally: by the outputs of the run that made them.
    links = {k.removeprefix(SKIPPED_PREFIX): v for k, v in (parent.data.tags if parent else {}).items()
             if k.startswith(SKIPPED_PREFIX)}  # fmt: skip
    artifact_dir = Path(local_file_uri_to_path(run.info.artifact_uri))  # the local store's are files
    record = PendingRun(
        stage=run.info.run_name,
        params=run.data.params,
        metrics=run.data.metrics,
        tags={k: v for k, v in tags.items() if not k.startswith(LOCAL_ONLY)} | {SOURCE_TAG: run_id},
        artifacts=[],
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        artifact_dirs={"": str(artifact_dir)} if artifact_dir.is_dir() and any(artifact_dir.iterdir()) else {},
        inputs=[{k: getattr(d.dataset, k) for k in ("name", "digest", "source")} for d in run.inputs.dataset_inputs],
        parent_name=parent.info.run_name if parent else "pipeline",
        upstream={
            stage: local.get_run(other).data.tags.get(OUTPUTS_TAG, " ").split(" ")[0] for stage, other in links.items()
        },
    )
    new_id = record_run(remote, settings, record)
    _mark_delivered(local, run, key, new_id)
    return new_id


def _mark_delivered(local, run, key: str, remote_run_id: str) -> None:
    local.set_tag(run.info.run_id, f"{DELIVERED_TAG}_{key}", remote_run_id)
    pending = f"{PENDING_TAG}_{key}"
    if pending in run.data.tags:
        local.delete_tag(run.info.run_id, pending)


@dataclass
class SyncReport:
    """What a sync did."""

    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    considered: int = 0


def sync(settings: TrackingSettings, root: Path, include_all: bool = False) -> SyncReport:
    """Deliver the local runs pending for ``settings.tracking_uri`` (or, with ``include_all``, every local run not
    yet there). Idempotent: a second sync delivers nothing."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    from mlflow.utils import get_results_from_paginated_fn

    report = SyncReport()
    if not settings.is_remote:
        return report
    apply_dagshub_credentials(root)
    bound_http_requests()
    local = MlflowClient(tracking_uri=settings.local_uri)
    experiment = local.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return report
    key = remote_key(settings.tracking_uri)
    query = "" if include_all else f"tags.{PENDING_TAG}_{key} = '{settings.display_uri}'"
    runs = get_results_from_paginated_fn(
        lambda max_results, token: local.search_runs(
            [experiment.experiment_id], query, ViewType.ACTIVE_ONLY, max_results, ["attributes.start_time ASC"], token
        ),
        1000,
    )
    remote = MlflowClient(tracking_uri=settings.tracking_uri)
    for run in runs:
        if f"{DELIVERED_TAG}_{key}" in run.data.tags or run.info.status != "FINISHED" or "stage" not in run.data.tags:
            continue
        report.considered += 1
        try:
            deliver_run(local, run.info.run_id, remote, settings)
            report.delivered.append(run.info.run_id)
        except Exception as exc:
            report.failed[run.info.run_id] = describe_failure(exc)
            break  # the remote is down or refusing: the rest would fail the same way
    return report


def record_kept_runs(settings: TrackingSettings, root: Path) -> int:
    """Record the runs waiting in ``mlruns-pending/`` in the local store (``make sync``); a store that still fails
    is a :class:`~segmentation.errors.UserError` naming it."""
    if not (root / PENDING_DIR).is_dir():
        return 0
    try:
        with local_store_lock(root):
            return replay_pending(MlflowClientFor(settings.local_uri), settings, root)
    except Exception as exc:
        raise UserError(
            f"MLflow store {redact_uri(settings.local_uri)}: {describe_failure(exc)}; runs stay in {PENDING_DIR}/"
        ) from None

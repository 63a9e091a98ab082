"""The dual logger: every stage's params and metrics go to MLflow and to DagsHub's open-format files.

MLflow holds the browsable history (local SQLite store by default); the ``DAGsHubLogger`` files under
``metrics/dagshub/<stage>/`` are committed with the code, so each commit carries its own results. Here: where runs
go (settings) and the logger the stages use. What produced a run is in :mod:`segmentation.tracking.lineage`,
the local store
in :mod:`segmentation.tracking.store`, delivery to a remote tracker (and its credentials) and ``make sync`` in
:mod:`segmentation.tracking.delivery`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from segmentation.tracking.delivery import PENDING_TAG, deliver_or_keep, remote_key
from segmentation.tracking.lineage import LOCK_FILE, Lineage, git_commit, pipeline_run_id, upstream_lineage
from segmentation.tracking.settings import TrackingSettings, project_root, redact_uri
from segmentation.tracking.store import (
    MlflowClientFor,
    PendingRun,
    describe_store_failure,
    local_store_lock,
    quiet_mlflow,
    record_run,
    replay_pending,
)

DAGSHUB_DIR = Path("metrics") / "dagshub"
ENV_EXP_NAME = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
ENV_SOURCE_DATE = "SOURCE_DATE_EPOCH"  # reproducible-builds convention: a fixed time for files that record one


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so that files and MLflow keep real types (not ``'np.float64(0.5)'``)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


@dataclass
class StageRecord:
    """Everything one stage logs: kept in memory, written once the stage has succeeded."""

    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | int] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    artifact_dirs: dict[str, Path] = field(default_factory=dict)  # name -> directory (an MLflow model)
    started_ms: int = field(default_factory=lambda: process_start_ms())
    data_path: str | None = None  # the raw data the stage read itself (preprocess); else taken from dvc.lock
    data_md5: str | None = None


def process_start_ms() -> int:
    """When this process started: a run's duration is the stage's, imports and data loading included."""
    import psutil

    return int(psutil.Process().create_time() * 1000)


def now_ms() -> int:
    """The current time in milliseconds since the epoch."""
    return int(time.time() * 1000)


class DualLogger:
    """Log a stage's params, metrics and artifacts to MLflow and to DagsHub's ``DAGsHubLogger`` files.

    Use as a context manager: nothing is written unless the block succeeds, so a failed stage
    neither wipes the previous results of its DagsHub files nor leaves a half-logged MLflow run.
    Each stage has its own DagsHub files (the logger's constructor truncates its files).

    The MLflow run also carries the lineage of the stage's inputs (upstream params and the raw data's md5, from
    ``dvc.lock``), so runs of any stage can be compared on what produced them; the DagsHub files hold the stage's
    own params only, like every other output of a DVC stage.
    """

    def __init__(
        self,
        stage: str,
        dagshub_dir: str | Path | None = None,
        root: Path | None = None,
        settings: TrackingSettings | None = None,
        lock_path: str | Path = LOCK_FILE,
    ) -> None:
        self.root = root or project_root()
        self.settings = settings or TrackingSettings.resolve(self.root)
        self.record = StageRecord(stage=stage)
        self.dagshub_dir = Path(dagshub_dir) if dagshub_dir is not None else DAGSHUB_DIR / stage
        # Relative to the working directory: a `dvc exp run --temp` copy has its own dvc.lock.
        self.lock_path = Path(lock_path)
        self.dagshub_timestamp_ms = dagshub_timestamp()  # a bad SOURCE_DATE_EPOCH fails before anything is written
        self.run_id: str | None = None
        self._replayed = 0

    # -- collecting ---------------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Record params (flat ``{"train.k_max": 10}``); values keep their types in the DagsHub YAML."""
        self.record.params.update({k: plain(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Record numeric metrics."""
        for key, value in metrics.items():
            value = plain(value)
            if not isinstance(value, (int, float)):
                raise TypeError(f"metric {key} must be a number, got {type(value).__name__}")
            self.record.metrics[key] = value

    def log_artifact(self, path: str | Path) -> None:
        """Record a file (plot, model) to upload to MLflow."""
        self.record.artifacts.append(Path(path))

    def log_artifact_dir(self, path: str | Path, name: str) -> None:
        """Record a directory to upload to MLflow under ``name`` (an MLflow model); it must exist until the run is
        logged (the end of :func:`segmentation.stages.runner.run`)."""
        self.record.artifact_dirs[name] = Path(path)

    def log_data(self, path: str | Path, md5: str) -> None:
        """Record the raw data file the stage read and its md5 (the other stages take it from ``dvc.lock``)."""
        self.record.data_path, self.record.data_md5 = str(path), md5

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Record extra run tags."""
        self.record.tags.update({k: str(v) for k, v in tags.items()})

    # -- writing ------------------------------------------------------------------------------------------
    def __enter__(self) -> DualLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def close(self) -> None:
        """Write the DagsHub files (on their own) and the MLflow run. Stages use :func:`segmentation.stages.runner.run`,
        which commits the DagsHub files together with the stage's other outputs."""
        from segmentation.files import StageOutputs

        with StageOutputs() as outputs:
            self.stage_dagshub_files(outputs)
            self.log_run(outputs)
            outputs.commit()
        self.deliver()

    def _standard_tags(self, lineage: Lineage) -> dict[str, str]:
        tags = {
            "stage": self.record.stage,
            "pipeline_run_id": pipeline_run_id(),
            "mlflow.source.name": f"dvc stage {self.record.stage}",
        }
        commit = git_commit(self.root)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        data_path = self.record.data_path or lineage.data_path
        data_md5 = self.record.data_md5 or lineage.data_md5
        if data_path and data_md5:
            tags["raw_data_path"], tags["raw_data_md5"] = data_path, data_md5
        if os.environ.get(ENV_EXP_NAME):
            tags["dvc_exp_name"] = os.environ[ENV_EXP_NAME]
        return {**tags, **self.record.tags}

    def stage_dagshub_files(self, outputs) -> None:
        """Write ``params.yml`` and ``metrics.csv`` with the DagsHub client's logger, as part of ``outputs``
        (a :class:`segmentation.files.StageOutputs`).

        The logger stamps each metric row with a time. For byte-stable, meaningful files: a ``metrics.csv`` whose
        names, values and steps are unchanged is kept as it was (with the time its values were first logged);
        otherwise rows get the time of ``SOURCE_DATE_EPOCH`` when set, else the time of logging.
        """
        from dagshub.logger import DAGsHubLogger

        stamp = self.dagshub_timestamp_ms

        class StampedLogger(DAGsHubLogger):
            def epoch_milisec(self) -> int:
                return stamp

        out = self.dagshub_dir  # relative to the working directory, like every other stage output
        metrics_path = out / "metrics.csv"
        metrics_tmp, params_tmp = outputs.path(metrics_path), outputs.path(out / "params.yml")
        logger = StampedLogger(metrics_path=str(metrics_tmp), hparams_path=str(params_tmp), eager_logging=False)
        logger.log_hyperparams(self.record.params)
        if self.record.metrics:
            logger.log_metrics(self.record.metrics, step_num=1)
        logger.save()
        logger.close()
        if metrics_path.is_file() and _metric_rows(metrics_path) == _metric_rows(metrics_tmp):
            shutil.copyfile(metrics_path, metrics_tmp)  # same values: keep the file, and its times, as it was

    def log_run(self, outputs) -> None:
        """Log the run to the local MLflow store, with its artifacts read from ``outputs`` (a
        :class:`segmentation.files.StageOutputs`) before they are committed: a stage stopped while logging (killed,
        Ctrl-C) has replaced none of its outputs, so they stay in step with ``dvc.lock``.

        Tracking is a record of the results, never a reason to lose them: when the local store cannot take the run
        (corrupt or read-only ``mlflow.db``, an unknown URI scheme, a store locked for too long) the stage goes on,
        prints one ``warning:`` line, and the run waits in ``mlruns-pending/`` until the store works again (the next
        stage's logging or ``make sync`` records it).
        """
        s = self.settings
        lineage = upstream_lineage(self.record.stage, self.lock_path)
        artifacts = [(outputs.staged(p) if outputs is not None else None) or p for p in self.record.artifacts]
        self._pending = PendingRun(
            stage=self.record.stage,
            # Upstream params first: a stage's own values win where a key appears in both.
            params={**lineage.params, **self.record.params},
            metrics=dict(self.record.metrics),
            tags=self._standard_tags(lineage),
            artifacts=[str(p) for p in artifacts],
            artifact_dirs={name: str(p) for name, p in self.record.artifact_dirs.items()},
            start_time=self.record.started_ms,
            end_time=now_ms(),
        )
        try:
            self.run_id, self._replayed = store_run(s, self._pending, self.root)
        except Exception as exc:  # any store failure: keep the record, never the stage's results at stake
            folder = self._pending.save(self.root, artifacts)
            print(
                f"warning: MLflow store {redact_uri(s.local_uri)}: {describe_store_failure(exc)}; the run is kept in "
                f"{folder.relative_to(self.root)}/ and recorded by the next stage or `make sync` once the store "
                "works (move a broken mlflow.db aside, or fix its permissions)",
                file=sys.stderr,
            )
            self.run_id = None

    def withdraw_run(self) -> None:
        """Delete the run just logged locally (the stage stopped before its commit): the store keeps no record of
        outputs that were never committed. Best effort: a store that fails here leaves the run, with a warning."""
        if self.run_id is None:
            return
        from urllib.request import url2pathname

        try:
            with local_store_lock(self.root), quiet_mlflow():
                client = MlflowClientFor(self.settings.local_uri)
                artifacts = urlsplit(client.get_run(self.run_id).info.artifact_uri)
                store = client._tracking_client.store
                if hasattr(store, "_hard_delete_run"):
                    # For good, as `mlflow gc` does: restoring a deleted experiment would bring back a soft-deleted run.
                    store._hard_delete_run(self.run_id)
                    if artifacts.scheme in ("", "file"):
                        shutil.rmtree(url2pathname(artifacts.path), ignore_errors=True)
                else:
                    client.delete_run(self.run_id)
        except Exception as exc:
            print(
                f"warning: MLflow store {redact_uri(self.settings.local_uri)}: could not withdraw run {self.run_id} "
                f"of a stage that stopped before its commit ({describe_store_failure(exc)})",
                file=sys.stderr,
            )
        self.run_id = None

    def deliver(self) -> None:
        """After the commit: copy the run to the remote tracker, if one is configured, and say where it went."""
        s = self.settings
        if self.run_id is None:
            return
        where = f"{redact_uri(s.local_uri)}, experiment {s.experiment_name!r}"
        if s.is_remote and deliver_or_keep(MlflowClientFor(s.local_uri), self.run_id, s, self.root):
            where = f"{s.display_uri} and the local store, experiment {s.experiment_name!r}"
        extra = f" (and {self._replayed} run(s) kept from earlier)" if self._replayed else ""
        print(
            f"{self.record.stage}: logged run {self.run_id}{extra} to MLflow ({where}) and {self.dagshub_dir}/",
            file=sys.stderr,
        )


def store_run(settings: TrackingSettings, run: PendingRun, root: Path) -> tuple[str, int]:
    """Record ``run`` in the local store (one writer at a time), then the runs kept pending from earlier; returns
    the run's ID and how many kept runs were recorded."""
    with local_store_lock(root), quiet_mlflow():
        local = MlflowClientFor(settings.local_uri)
        run_id = record_run(local, settings, run, root)
        if settings.is_remote:  # pending until delivered: a stage stopped while delivering leaves it for sync
            local.set_tag(run_id, f"{PENDING_TAG}_{remote_key(settings.tracking_uri)}", settings.display_uri)
        return run_id, replay_pending(local, settings, root)


def dagshub_timestamp(environ: Mapping[str, str] | None = None) -> int:
    """The time stamped on new DagsHub metric rows: ``SOURCE_DATE_EPOCH`` (seconds) when set, else now (ms)."""
    env = os.environ if environ is None else environ
    epoch = env.get(ENV_SOURCE_DATE, "").strip()
    if not epoch:
        return now_ms()
    if not epoch.isdigit():
        from segmentation.errors import UserError

        raise UserError(f"{ENV_SOURCE_DATE}={epoch!r}: expected whole seconds since 1970-01-01")
    return int(epoch) * 1000


def _metric_rows(path: Path) -> list[tuple[str, str, str]]:
    """(name, value, step) of each row of a DagsHub ``metrics.csv``: its content without the logging times."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return [(row.get("Name"), row.get("Value"), row.get("Step")) for row in csv.DictReader(fh)]

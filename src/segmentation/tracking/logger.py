"""The dual logger: every stage's params and metrics go to MLflow (the browsable history, a local SQLite store by
default) and to DagsHub's ``DAGsHubLogger`` files under ``metrics/dagshub/<stage>/``, committed with the code."""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from segmentation.errors import UserError
from segmentation.files import StageOutputs, plain
from segmentation.tracking.lineage import (
    ENV_EXP_NAME,
    LOCK_FILE,
    file_md5,
    git,
    git_commit,
    pipeline_graph,
    pipeline_run_id,
    pipeline_run_name,
    upstream_lineage,
)
from segmentation.tracking.settings import TrackingSettings, project_root, redact_uri
from segmentation.tracking.store import (
    OUTPUTS_TAG,
    PIPELINE_TAG,
    MlflowClientFor,
    PendingRun,
    describe_failure,
    local_store_lock,
    quiet_mlflow,
    record_run,
    replay_pending,
)

DAGSHUB_DIR = Path("metrics") / "dagshub"
TABLES = (".csv", ".tsv", ".txt", ".parquet")  # the inputs logged as MLflow datasets
HASHED_MAX_BYTES = 64 << 20  # outputs up to this size are identified by md5 (a later pipeline run links to them)
ENV_SOURCE_DATE = "SOURCE_DATE_EPOCH"  # reproducible-builds convention: a fixed time for files that record one


class DualLogger:
    """Log a stage's params, metrics and artifacts to MLflow and to its own DagsHub files.

    As a context manager, nothing is written unless the block succeeds. The MLflow run also carries the lineage of
    the stage's inputs (upstream params, the raw data's md5, from ``dvc.lock``); the DagsHub files its own params only.
    """

    def __init__(self, stage: str, dagshub_dir: str | Path | None = None, root: Path | None = None) -> None:
        self.root = root or project_root()
        self.settings = s = TrackingSettings.resolve(self.root)
        self.remote = None  # the optional remote-tracking part, when a tracker is configured
        if s.is_remote:  # a project generated without it stops here, before the stage's work, not tracking locally only
            try:
                import segmentation.tracking.remote as remote
            except ModuleNotFoundError as exc:
                if exc.name != "segmentation.tracking.remote":  # the part is there but fails: show why
                    raise
                where = s.source.removeprefix("pyproject.toml ")
                unset = (
                    "unset MLFLOW_TRACKING_URI" if where.startswith("env") else f"remove {where} from pyproject.toml"
                )
                raise UserError(
                    f"tracking_uri {s.display_uri}: this project was generated without remote tracking; add it "
                    f"with `copier update --trust --defaults --data remote_tracking=true`, or {unset}"
                ) from None
            self.remote = remote
        # What the stage logs, kept in memory until it has succeeded. Its duration is the process's, imports included.
        self.record = PendingRun(stage, {}, {}, {}, [], int(psutil.Process().create_time() * 1000), 0)
        self.data: tuple[str, str] | None = None  # the raw data the stage read itself (preprocess), and its md5
        self.inputs: list[str] = []
        self.dagshub_dir = Path(dagshub_dir or DAGSHUB_DIR / stage)
        # The time stamped on new DagsHub metric rows: SOURCE_DATE_EPOCH (checked before anything is written), else now.
        epoch = os.environ.get(ENV_SOURCE_DATE, "").strip()
        if epoch and not epoch.isdigit():
            raise UserError(f"{ENV_SOURCE_DATE}={epoch!r}: expected whole seconds since 1970-01-01")
        self.dagshub_timestamp_ms = int(epoch) * 1000 if epoch else int(time.time() * 1000)
        self.run_id: str | None = None
        self._replayed = 0

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
        self.record.artifacts.append(str(path))

    def log_artifact_dir(self, path: str | Path, name: str) -> None:
        """Record a directory (an MLflow model) to upload under ``name``; it must exist until the run is logged."""
        self.record.artifact_dirs[name] = str(path)

    def log_data(self, path: str | Path, md5: str) -> None:
        """Record the raw data file the stage read and its md5 (the other stages take it from ``dvc.lock``)."""
        self.data = (str(path), md5)
        self.log_input(path)

    def log_input(self, path: str | Path) -> None:
        """Record a file the stage read: a table becomes one of the run's MLflow datasets."""
        if Path(path).suffix.lower() in TABLES and str(path) not in self.inputs:
            self.inputs.append(str(path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Record extra run tags."""
        self.record.tags.update({k: str(v) for k, v in tags.items()})

    def __enter__(self) -> DualLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            with StageOutputs() as outputs:
                self.finish(outputs)

    def finish(self, outputs: StageOutputs) -> None:
        """Write the DagsHub files and the MLflow run as part of ``outputs``, deliver the run, then commit them."""
        self.stage_dagshub_files(outputs)
        self.log_run(outputs)
        s = self.settings
        if self.run_id is not None:  # to the remote tracker if any: best effort, bounded, so before the outputs
            where = f"{redact_uri(s.local_uri)}, experiment {s.experiment_name!r}"
            if self.remote and self.remote.deliver_or_keep(MlflowClientFor(s.local_uri), self.run_id, s, self.root):
                where = f"{s.display_uri} and the local store, experiment {s.experiment_name!r}"
            extra = f" (and {self._replayed} run(s) kept from earlier)" if self._replayed else ""
            print(
                f"{self.record.stage}: logged run {self.run_id}{extra} to MLflow ({where}) and {self.dagshub_dir}/",
                file=sys.stderr,
            )
        outputs.commit()

    def stage_dagshub_files(self, outputs) -> None:
        """Write ``params.yml`` and ``metrics.csv`` with the DagsHub client's logger as part of ``outputs``; a
        ``metrics.csv`` whose values are those of the last one (in place, or as committed: DVC removes it before the
        stage runs) is kept as it was, with its times (byte-stable)."""
        from dagshub.logger import DAGsHubLogger

        out = self.dagshub_dir  # relative to the working directory, like every other stage output
        metrics_path = out / "metrics.csv"
        metrics_tmp, params_tmp = outputs.path(metrics_path), outputs.path(out / "params.yml")
        logger = DAGsHubLogger(metrics_path=str(metrics_tmp), hparams_path=str(params_tmp), eager_logging=False)
        logger.epoch_milisec = lambda: self.dagshub_timestamp_ms  # the time on its rows: SOURCE_DATE_EPOCH, else now
        logger.log_hyperparams(self.record.params)
        if self.record.metrics:
            logger.log_metrics(self.record.metrics, step_num=1)
        logger.save()
        logger.close()
        last = metrics_path.read_bytes() if metrics_path.is_file() else git("show", f"HEAD:./{metrics_path.as_posix()}")
        if last and _metric_rows(last) == _metric_rows(metrics_tmp.read_bytes()):
            metrics_tmp.write_bytes(last)  # same values: keep the file, and its times, as it was

    def log_run(self, outputs) -> None:
        """Log the run to the local MLflow store, its artifacts read from ``outputs`` before their commit (then the runs
        kept pending from earlier). A store that cannot take it (corrupt, read-only, locked too long) only warns: the
        run waits in ``mlruns-pending/`` for the next stage or ``make sync``."""
        s, stage, data_path, data_md5 = self.settings, self.record.stage, *(self.data or (None, None))
        # Relative to the working directory: a `dvc exp run --temp` copy has its own dvc.lock.
        lineage = upstream_lineage(stage, LOCK_FILE)
        cached = [outputs.staged(path) for path in pipeline_graph(Path("dvc.yaml"))[2].get(stage, [])]
        md5s = [file_md5(p) for p in cached if p and p.is_file() and p.stat().st_size <= HASHED_MAX_BYTES]
        data_path, data_md5 = data_path or lineage.data_path, data_md5 or lineage.data_md5
        tags = {
            "stage": stage,
            PIPELINE_TAG: pipeline_run_id(),
            "mlflow.source.name": f"dvc stage {stage}",
            OUTPUTS_TAG: " ".join(md5s),  # how a later pipeline run that skips this stage links to this run
            "mlflow.source.git.commit": git_commit(self.root),
            "raw_data_path": data_path if data_md5 else None,
            "raw_data_md5": data_md5 if data_path else None,
            "dvc_exp_name": os.environ.get(ENV_EXP_NAME),
        }
        tags = {key: value for key, value in tags.items() if value}  # an unknown one is left out, not logged empty
        inputs = []  # the tables read, as MLflow datasets: md5 as DVC has it (the raw data's, dvc.lock's) if it can
        for path in filter(os.path.isfile, self.inputs):
            known = lineage.files.get(Path(path).as_posix(), {})
            same = known.get("md5") and known.get("size") == Path(path).stat().st_size
            md5 = self.data[1] if self.data and self.data[0] == path else known["md5"] if same else file_md5(path)
            inputs.append({"name": Path(path).name, "digest": md5, "source": Path(path).as_posix()})
        artifacts = [outputs.staged(p) or Path(p) for p in self.record.artifacts]
        run = dataclasses.replace(
            self.record,
            params={**lineage.params, **self.record.params},  # the stage's own values win
            tags={**tags, **self.record.tags},
            artifacts=[str(p) for p in artifacts],
            end_time=int(time.time() * 1000),
            inputs=inputs,
            parent_name=pipeline_run_name(self.root),
            upstream=lineage.outputs,
        )
        try:
            with local_store_lock(self.root), quiet_mlflow():
                local = MlflowClientFor(s.local_uri)
                self.run_id = record_run(local, s, run)
                if self.remote:
                    self.remote.mark_pending(local, self.run_id, s)
                self._replayed = replay_pending(local, s, self.root)
        except Exception as exc:  # any store failure: keep the record, never the stage's results at stake
            folder = run.save(self.root, artifacts)
            print(
                f"warning: MLflow store {redact_uri(s.local_uri)}: {describe_failure(exc)}; the run is kept in "
                f"{folder.relative_to(self.root)}/ and recorded by the next stage or `make sync` once the store "
                "works (move a broken mlflow.db aside, or fix its permissions)",
                file=sys.stderr,
            )
            self.run_id = None


def _metric_rows(data: bytes) -> list[tuple[str, str, str]]:
    """(name, value, step) of each row of a DagsHub ``metrics.csv``: its content without the logging times."""
    return [(r.get("Name"), r.get("Value"), r.get("Step")) for r in csv.DictReader(data.decode("utf-8").splitlines())]

"""The dual logger: every stage's params and metrics go to MLflow and to DagsHub's open-format files.

MLflow holds the browsable history (local SQLite store by default); the ``DAGsHubLogger`` files under
``metrics/dagshub/<stage>/`` are committed with the code, so each commit carries its own results.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

DAGSHUB_DIR = Path("metrics") / "dagshub"
ENV_PIPELINE_RUN = "SEGMENTATION_PIPELINE_RUN_ID"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "customer-segmentation"
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlruns"
RAW_DATA_DVC = Path("data") / "raw.dvc"
# `dvc exp run --temp` and queued experiments run in a copy under .dvc/tmp/exps: track into the real repo.
_DVC_TEMP_EXPS = (".dvc", "tmp", "exps")


def project_root(cwd: Path | None = None) -> Path:
    """The project's root: the working directory, or the repo that owns a DVC temporary experiment copy."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(_DVC_TEMP_EXPS)):
        if parts[i : i + len(_DVC_TEMP_EXPS)] == _DVC_TEMP_EXPS:
            return Path(*parts[:i])
    return cwd


@dataclass(frozen=True)
class TrackingSettings:
    """Where MLflow runs go. Precedence: environment > ``[tool.segmentation]`` in pyproject.toml > local default."""

    tracking_uri: str
    experiment_name: str
    artifact_location: str | None = None  # set only for the embedded local store

    @classmethod
    def resolve(cls, root: Path, environ: dict[str, str] | None = None) -> TrackingSettings:
        """Resolve the settings for the project at ``root``."""
        env = os.environ if environ is None else environ
        project = _project_config(root)
        uri = env.get(ENV_TRACKING_URI) or project.get("tracking_uri")
        name = env.get(ENV_EXPERIMENT) or project.get("experiment_name") or DEFAULT_EXPERIMENT
        if uri:
            return cls(tracking_uri=uri, experiment_name=name)
        return cls(
            tracking_uri=f"sqlite:///{root / LOCAL_STORE}",
            experiment_name=name,
            artifact_location=(root / LOCAL_ARTIFACTS).as_uri(),
        )

    @property
    def display_uri(self) -> str:
        """The tracking URI without any credentials, safe to print."""
        return redact_uri(self.tracking_uri)


def _project_config(root: Path) -> dict[str, Any]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    with path.open("rb") as fh:
        return tomllib.load(fh).get("tool", {}).get("segmentation", {})


def redact_uri(uri: str) -> str:
    """Drop ``user:password@`` from a URI."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def git_commit(root: Path) -> str | None:
    """HEAD's commit hash, or None outside git / before the first commit."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def raw_data_md5(root: Path) -> str | None:
    """The DVC hash of the raw data, as recorded in ``data/raw.dvc``."""
    path = root / RAW_DATA_DVC
    try:
        outs = yaml.safe_load(path.read_text(encoding="utf-8")).get("outs") or []
    except (OSError, AttributeError, yaml.YAMLError):
        return None
    return outs[0].get("md5") if outs else None


def pipeline_run_id(environ: dict[str, str] | None = None) -> str:
    """An ID shared by the stages of one pipeline execution.

    ``dvc repro`` / ``dvc exp run`` start every stage as a descendant of one DVC process, so that process's
    PID and start time identify the execution. ``SEGMENTATION_PIPELINE_RUN_ID`` overrides it; a stage run by
    hand outside DVC is an execution of its own.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_PIPELINE_RUN):
        return env[ENV_PIPELINE_RUN]
    import psutil

    anchor = psutil.Process()
    for proc in anchor.parents():
        try:
            if any(Path(arg).name == "dvc" for arg in proc.cmdline()[:3]):
                anchor = proc
                break
        except psutil.Error:
            continue
    seed = f"{socket.gethostname()}:{anchor.pid}:{anchor.create_time()}"
    return hashlib.sha1(seed.encode()).hexdigest()[:16]


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
    timestamp_ms: int = field(default_factory=lambda: int(time.time() * 1000))


class DualLogger:
    """Log a stage's params, metrics and artifacts to MLflow and to DagsHub's ``DAGsHubLogger`` files.

    Use as a context manager: nothing is written unless the block succeeds, so a failed stage
    neither wipes the previous results of its DagsHub files nor leaves a half-logged MLflow run.
    Each stage has its own DagsHub files (the logger's constructor truncates its files).
    """

    def __init__(
        self,
        stage: str,
        dagshub_dir: str | Path | None = None,
        root: Path | None = None,
        settings: TrackingSettings | None = None,
    ) -> None:
        self.root = root or project_root()
        self.settings = settings or TrackingSettings.resolve(self.root)
        self.record = StageRecord(stage=stage)
        self.dagshub_dir = Path(dagshub_dir) if dagshub_dir is not None else DAGSHUB_DIR / stage
        self.run_id: str | None = None

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
        """Write the DagsHub files, then the MLflow run."""
        self._write_dagshub()
        self._write_mlflow()

    def _standard_tags(self) -> dict[str, str]:
        tags = {
            "stage": self.record.stage,
            "pipeline_run_id": pipeline_run_id(),
            "mlflow.source.name": f"dvc stage {self.record.stage}",
        }
        commit = git_commit(self.root)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        data_md5 = raw_data_md5(self.root)
        if data_md5:
            tags["raw_data_md5"] = data_md5
        return {**tags, **self.record.tags}

    def _write_dagshub(self) -> None:
        from dagshub.logger import DAGsHubLogger

        from segmentation.files import atomic_path

        out = self.dagshub_dir  # relative to the working directory, like every other stage output
        with atomic_path(out / "metrics.csv") as metrics_tmp, atomic_path(out / "params.yml") as params_tmp:
            logger = DAGsHubLogger(metrics_path=str(metrics_tmp), hparams_path=str(params_tmp), eager_logging=False)
            logger.log_hyperparams(self.record.params)
            if self.record.metrics:
                logger.log_metrics(self.record.metrics, step_num=1)
            logger.save()
            logger.close()

    def _write_mlflow(self) -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        s = self.settings
        client = MlflowClient(tracking_uri=s.tracking_uri)
        experiment = client.get_experiment_by_name(s.experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(s.experiment_name, artifact_location=s.artifact_location)
        )
        run = client.create_run(experiment_id, run_name=self.record.stage, tags=self._standard_tags())
        self.run_id = run.info.run_id
        ts = self.record.timestamp_ms
        client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in self.record.metrics.items()],
            params=[Param(k, str(v)) for k, v in self.record.params.items()],
            tags=[RunTag("dvc.stage", self.record.stage)],
        )
        for path in self.record.artifacts:
            client.log_artifact(self.run_id, str(path))
        client.set_terminated(self.run_id, "FINISHED")
        print(
            f"{self.record.stage}: logged run {self.run_id} to MLflow ({s.display_uri}, "
            f"experiment {s.experiment_name!r}) and {self.dagshub_dir}/",
            file=sys.stderr,
        )

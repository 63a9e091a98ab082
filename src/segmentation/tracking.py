"""The dual logger: every stage's params and metrics go to MLflow and to DagsHub's open-format files.

MLflow holds the browsable history (local SQLite store by default); the ``DAGsHubLogger`` files under
``metrics/dagshub/<stage>/`` are committed with the code, so each commit carries its own results.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
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
DAGSHUB_DEFAULT_HOST = "https://dagshub.com"
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlruns"
LOCK_FILE = "dvc.lock"
PARAMS_FILE = "params.yaml"
DATA_PATH_PARAM = "preprocess.data.path"  # the raw data file, whose md5 every run is tagged with
ENV_EXP_NAME = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
ENV_SOURCE_DATE = "SOURCE_DATE_EPOCH"  # reproducible-builds convention: a fixed time for files that record one
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
    """Where MLflow runs go.

    Precedence: ``MLFLOW_TRACKING_URI`` > ``tracking_uri`` in ``[tool.segmentation]`` of pyproject.toml >
    DagsHub's endpoint when ``dagshub_owner`` and ``dagshub_repo`` are set there > the embedded local store.
    Every run is first written to the local store (``local_uri``); a remote ``tracking_uri`` then receives a copy,
    and runs it could not take wait in the local store for ``sync``.
    """

    tracking_uri: str
    experiment_name: str
    local_uri: str
    artifact_location: str | None = None  # only for the embedded local store
    source: str = "local default"

    @classmethod
    def resolve(cls, root: Path, environ: Mapping[str, str] | None = None) -> TrackingSettings:
        """Resolve the settings for the project at ``root``."""
        env = os.environ if environ is None else environ
        project = project_config(root)
        name = env.get(ENV_EXPERIMENT) or project.get("experiment_name") or DEFAULT_EXPERIMENT
        local = f"sqlite:///{root / LOCAL_STORE}"
        artifacts = (root / LOCAL_ARTIFACTS).as_uri()
        if env.get(ENV_TRACKING_URI):
            uri, source = env[ENV_TRACKING_URI], "environment (MLFLOW_TRACKING_URI)"
        elif project.get("tracking_uri"):
            uri, source = project["tracking_uri"], "pyproject.toml [tool.segmentation] tracking_uri"
        elif project.get("dagshub_owner") and project.get("dagshub_repo"):
            uri = dagshub_url(project["dagshub_owner"], project["dagshub_repo"], ".mlflow", env)
            source = "pyproject.toml [tool.segmentation] dagshub_owner/dagshub_repo"
        else:
            return cls(local, name, local, artifacts)
        if not is_remote_uri(uri):
            # A store of the user's own on this machine: it is the local store, nothing to replicate.
            return cls(uri, name, uri, None, source)
        return cls(uri, name, local, artifacts, source)

    @property
    def is_remote(self) -> bool:
        """True when runs are copied to a tracking server after the local write."""
        return self.tracking_uri != self.local_uri

    @property
    def display_uri(self) -> str:
        """The tracking URI without any credentials, safe to print."""
        return redact_uri(self.tracking_uri)


def is_remote_uri(uri: str) -> bool:
    """http(s) tracking servers are remote; sqlite/file stores are local."""
    return urlsplit(uri).scheme in ("http", "https")


def dagshub_host(environ: Mapping[str, str] | None = None) -> str:
    """DagsHub's address; ``DAGSHUB_CLIENT_HOST`` (read by the DagsHub client too) points elsewhere."""
    env = os.environ if environ is None else environ
    return (env.get("DAGSHUB_CLIENT_HOST") or DAGSHUB_DEFAULT_HOST).rstrip("/")


def dagshub_url(owner: str, repo: str, suffix: str, environ: Mapping[str, str] | None = None) -> str:
    """``https://dagshub.com/<owner>/<repo><suffix>`` (suffix ``.dvc`` or ``.mlflow``)."""
    return f"{dagshub_host(environ)}/{owner}/{repo}{suffix}"


def apply_dagshub_credentials(root: Path, environ: MutableMapping[str, str] | None = None) -> None:
    """Let MLflow authenticate with the DagsHub token when no MLflow credentials are set.

    The token stays in this process's environment: it is never written to a file, a param or a tag.
    """
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


def project_config(root: Path) -> dict[str, Any]:
    """The ``[tool.segmentation]`` table of the project's pyproject.toml (empty when absent)."""
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


def file_md5(path: str | Path) -> str:
    """MD5 of a file's bytes: what DVC records for a file."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Lineage:
    """What produced a stage's inputs, as ``dvc.lock`` records it: the upstream stages' params and the raw data."""

    params: dict[str, Any] = field(default_factory=dict)  # flat, with section prefixes: {"train.k_max": 10}
    data_path: str | None = None
    data_md5: str | None = None


def _flat_section(key: str, value: Any) -> dict[str, Any]:
    """A params section as recorded in dvc.lock, flattened like the stage logged it (defaults filled in)."""
    from segmentation.config import SECTIONS, flatten, parse_section
    from segmentation.errors import UserError

    if not isinstance(value, dict):
        return {key: value}
    if key in SECTIONS:
        try:
            return flatten(parse_section(key, value), f"{key}.")
        except UserError:
            pass  # recorded by an older version of the params model: log it as recorded
    return flatten(value, f"{key}.")


def upstream_lineage(stage: str, lock_path: str | Path = LOCK_FILE) -> Lineage:
    """The params of every stage upstream of ``stage`` and the raw data's path and md5, from ``dvc.lock``.

    Which stages are upstream comes from the pipeline's definition (``dvc.yaml`` beside the lock; on a first run
    the lock has no entry for this stage yet) and from the lock. DVC writes a stage's entry as soon as it has run,
    so during ``dvc repro`` / ``dvc exp run`` the entries of the upstream stages describe exactly the inputs this
    stage reads; outside DVC (a stage run by hand), the last pipeline run. No lock: an empty lineage.
    """
    lock_path = Path(lock_path)
    try:
        stages = yaml.safe_load(lock_path.read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return Lineage()
    deps_of, producer = _pipeline_graph(lock_path.with_name("dvc.yaml"))
    for name, entry in stages.items():
        deps_of.setdefault(name, set()).update(d["path"] for d in entry.get("deps") or [])
        producer.update({out["path"]: name for out in entry.get("outs") or []})
    upstream: list[str] = []
    todo = [stage]
    while todo:
        for dep in sorted(deps_of.get(todo.pop(), ())):
            name = producer.get(dep)
            if name and name != stage and name not in upstream:
                upstream.append(name)
                todo.append(name)
    params: dict[str, Any] = {}
    deps: dict[str, str] = {}
    for name in upstream:
        entry = stages.get(name) or {}
        deps.update({d["path"]: d.get("md5") for d in entry.get("deps") or []})
        for key, value in ((entry.get("params") or {}).get(PARAMS_FILE) or {}).items():
            params.update(_flat_section(key, value))
    data_path = params.get(DATA_PATH_PARAM)
    return Lineage(params, data_path, deps.get(data_path) if data_path else None)


def _pipeline_graph(dvc_yaml: Path) -> tuple[dict[str, set[str]], dict[str, str]]:
    """(stage -> its dependency paths, output path -> its stage) as ``dvc.yaml`` declares them (literal paths)."""
    try:
        stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return {}, {}
    deps_of: dict[str, set[str]] = {}
    producer: dict[str, str] = {}
    for name, stage in stages.items():
        deps_of[name] = {d for d in stage.get("deps") or [] if isinstance(d, str)}
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind) or []:
                path = out if isinstance(out, str) else next(iter(out), None) if isinstance(out, dict) else None
                if path:
                    producer[path] = name
    return deps_of, producer


def dvc_process():
    """The DVC process (``dvc repro``, ``dvc exp run``, a queue worker) that this stage runs under, or None."""
    import psutil

    for proc in psutil.Process().parents():
        try:
            if any(Path(arg).name == "dvc" for arg in proc.cmdline()[:3]):
                return proc
        except psutil.Error:
            continue
    return None


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

    anchor = dvc_process() or psutil.Process()
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
        """Write the DagsHub files (on their own) and the MLflow run. Stages use :func:`segmentation.stage.run`,
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
            start_time=self.record.started_ms,
            end_time=now_ms(),
        )
        try:
            reply = _HELPER.record(self._pending) if _HELPER is not None else None
            if reply is None:  # no helper (or it is gone): in this process
                self.run_id, self._replayed = store_run(s, self._pending, self.root)
            elif "error" in reply:
                raise StoreFailure(reply["error"])
            else:
                self.run_id, self._replayed = reply["run_id"], reply["replayed"]
        except Exception as exc:  # any store failure: keep the record, never the stage's results at stake
            folder = self._pending.save(self.root, artifacts)
            print(
                f"warning: MLflow store {redact_uri(s.local_uri)}: {describe_store_failure(exc)}; the run is kept in "
                f"{folder.relative_to(self.root)}/ and recorded by the next stage or `make sync` once the store "
                "works (move a broken mlflow.db aside, or fix its permissions)",
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
    with local_store_lock(root), _quiet_mlflow():
        local = MlflowClientFor(settings.local_uri)
        run_id = record_run(local, settings, run, root)
        if settings.is_remote:  # pending until delivered: a stage stopped while delivering leaves it for sync
            local.set_tag(run_id, f"{PENDING_TAG}_{remote_key(settings.tracking_uri)}", settings.display_uri)
        return run_id, replay_pending(local, settings, root)


class StoreFailure(Exception):
    """The local store could not take a run (as the store helper described it)."""


class StoreHelper:
    """A helper process that imports MLflow and opens the local store while the stages work (MLflow costs ~2.5 s of
    CPU: import, store start-up), then records each stage's run when asked, before the stage commits.

    One helper serves every stage of one ``dvc repro`` (or ``dvc exp run``): the first stage starts it, the next
    ones find it by its socket. It belongs to that dvc process (to the stage itself when run by hand) and exits
    once its owner is gone. A stage sends its run only when it is about to commit, and waits for the answer: a stage
    that stops or fails before (an error, Ctrl-C, SIGKILL) sends nothing and nothing is written. Should the helper
    be unreachable or fail, the stage records the run in its own process, as without a helper.
    """

    def __init__(self) -> None:
        import psutil

        owner = dvc_process() or psutil.Process()
        key = f"{project_root()}:{owner.pid}:{owner.create_time()}"
        self.address = str(Path(tempfile.gettempdir()) / f"segmentation-{hashlib.sha1(key.encode()).hexdigest()[:16]}")
        self.proc = None
        if not self._reachable():
            # No stdio shared with the stage: dvc waits for the stage's pipes to close, not for the helper.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "segmentation.tracking", "--serve", self.address, str(owner.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def _reachable(self) -> bool:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(self.address)
            return True
        return False

    def record(self, run: PendingRun) -> dict[str, Any] | None:
        """The helper's answer (``run_id`` and ``replayed``, or ``error``); None if it cannot be reached."""
        import json

        deadline = time.monotonic() + HELPER_WAIT_S
        while True:  # a helper just started binds its socket at once: wait for it, not for its imports
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.connect(self.address)
                    conn.sendall((json.dumps(run.__dict__) + "\n").encode())
                    conn.shutdown(socket.SHUT_WR)
                    with conn.makefile(encoding="utf-8") as answer:
                        reply = json.loads(answer.readline() or "null")
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                    return None
                time.sleep(0.05)
            except (OSError, ValueError):
                return None
        if reply and reply.get("notes"):
            print(reply["notes"], end="", file=sys.stderr, flush=True)
        return reply


HELPER_WAIT_S = 30
HELPER_POLL_S = 0.25
_HELPER: StoreHelper | None = None


def start_store_helper() -> None:
    """Find or start the helper for this stage's run (see :class:`StoreHelper`); at most once per process."""
    global _HELPER
    if _HELPER is None:
        try:
            _HELPER = StoreHelper()
        except (OSError, ImportError):
            _HELPER = None


def serve(address: str, owner_pid: int) -> None:
    """The helper's side: bind the socket, warm up (import MLflow, open the store when no other stage holds it), then
    record each run a stage sends and answer, until the owner process (dvc, or the stage run by hand) is gone.
    Ctrl-C is the stages' to handle: the helper ignores it.

    A local SQLite store that does not exist yet is created aside (schema and all, ~2 s) and moved into place only
    when a stage asks for its run to be recorded: a pipeline whose stages all fail leaves no store behind.
    """
    import json
    import signal

    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for ended in (signal.SIGTERM, signal.SIGHUP):  # stopped from outside: clean up on the way out
        signal.signal(ended, lambda *_: sys.exit(0))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)  # a socket left by a helper that was killed
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(8)
    server.settimeout(HELPER_POLL_S)
    root = project_root()
    settings = TrackingSettings.resolve(root)
    db = Path(settings.local_uri.removeprefix("sqlite:///")) if settings.local_uri.startswith("sqlite:///") else None
    fresh = db.with_name(f".{db.name}.{os.getpid()}.tmp") if db is not None and not db.exists() else None
    try:
        owner = psutil.Process(owner_pid)
        try:
            with _quiet_mlflow():
                from mlflow.entities import Metric, Param  # noqa: F401 - imported now, used by record_run
                from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: F401

                with local_store_lock(root, wait_s=0):  # the store's start-up (schema, migrations) under the lock
                    uri = f"sqlite:///{fresh}" if fresh else settings.local_uri
                    MlflowClientFor(uri).search_experiments(max_results=1)
        except Exception:  # a busy or broken store: each request tries again and reports it
            pass
        while owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn, conn.makefile("rw", encoding="utf-8") as stream:
                conn.settimeout(HELPER_WAIT_S)  # a stage connects only with its run ready to send
                try:
                    request = stream.readline()
                except OSError:
                    request = ""
                if not request.endswith("\n"):
                    continue  # a probe, or a stage stopped while sending: nothing to write
                if fresh is not None and fresh.is_file():
                    with local_store_lock(root):
                        if not db.exists():
                            os.replace(fresh, db)
                notes = io.StringIO()  # the store's notes (an experiment restored, artifacts moved) go to the stage
                try:
                    with contextlib.redirect_stderr(notes):
                        run_id, replayed = store_run(settings, PendingRun(**json.loads(request)), root)
                    answer = {"run_id": run_id, "replayed": replayed}
                except Exception as exc:
                    answer = {"error": describe_store_failure(exc)}
                answer["notes"] = notes.getvalue()
                with contextlib.suppress(OSError):
                    stream.write(json.dumps(answer) + "\n")
                    stream.flush()
    except psutil.Error:
        pass
    finally:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(address)
        if fresh is not None:
            fresh.unlink(missing_ok=True)
    os._exit(0)  # all written and committed: skip tearing down MLflow's modules


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow logs a store error with its traceback before raising it; the one warning line says it instead."""
    import logging

    import mlflow  # noqa: F401 - configures its loggers on import: quiet them after that, not before

    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic", "sqlalchemy")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def MlflowClientFor(uri: str):
    """An MLflow client for ``uri`` (imported here: mlflow costs ~1.3 s to import)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


PENDING_DIR = "mlruns-pending"
LOCK_NAME = ".mlflow.lock"
LOCK_WAIT_S = 120


@dataclass
class PendingRun:
    """One stage's run as MLflow gets it; saved as JSON (with copies of its artifacts) when the store fails."""

    stage: str
    params: dict[str, Any]
    metrics: dict[str, float | int]
    tags: dict[str, str]
    artifacts: list[str]
    start_time: int
    end_time: int

    def save(self, root: Path, artifacts: list[Path]) -> Path:
        """Write ``mlruns-pending/<start>-<stage>-<pid>/run.json`` and copies of the artifacts as they are now."""
        import json

        folder = root / PENDING_DIR / f"{self.start_time}-{self.stage}-{os.getpid()}"
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        artifacts = [Path(p) for p in artifacts]
        for path in artifacts:
            if path.is_file():
                shutil.copy2(path, folder / "artifacts" / path.name)
        record = {**self.__dict__, "artifacts": [p.name for p in artifacts if p.is_file()]}
        (folder / "run.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        return folder


def record_run(client, settings: TrackingSettings, run: PendingRun, root: Path, artifact_dir: Path | None = None):
    """Create a finished run in the store behind ``client``; returns its ID."""
    from mlflow.entities import Metric, Param

    experiment_id = _experiment_id(client, settings.experiment_name, settings.artifact_location, settings.local_uri)
    created = client.create_run(experiment_id, start_time=run.start_time, run_name=run.stage, tags=run.tags)
    run_id = created.info.run_id
    metrics = [Metric(k, float(v), run.end_time, 0) for k, v in run.metrics.items()]
    params = [Param(k, str(v)) for k, v in run.params.items()]
    for i in range(0, max(len(params), len(metrics), 1), 100):  # MLflow's batch limit is 100 params
        client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])
    for name in run.artifacts:
        client.log_artifact(run_id, str(artifact_dir / name if artifact_dir else name))
    client.set_terminated(run_id, "FINISHED", end_time=run.end_time)
    return run_id


def replay_pending(client, settings: TrackingSettings, root: Path) -> int:
    """Record the runs kept in ``mlruns-pending/`` (oldest first) and remove them; returns how many."""
    import json

    folder = root / PENDING_DIR
    done = 0
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        record_file = entry / "run.json"
        if not record_file.is_file():
            continue
        run = PendingRun(**json.loads(record_file.read_text(encoding="utf-8")))
        record_run(client, settings, run, root, artifact_dir=entry / "artifacts")
        shutil.rmtree(entry)
        done += 1
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return done


def record_kept_runs(settings: TrackingSettings, root: Path) -> int:
    """Record the runs waiting in ``mlruns-pending/`` in the local store (``make sync``); a store that still fails
    is a :class:`~segmentation.errors.UserError` naming it."""
    if not (root / PENDING_DIR).is_dir():
        return 0
    try:
        with local_store_lock(root):
            return replay_pending(MlflowClientFor(settings.local_uri), settings, root)
    except Exception as exc:
        from segmentation.errors import UserError

        raise UserError(
            f"MLflow store {redact_uri(settings.local_uri)}: {describe_store_failure(exc)}; runs stay in {PENDING_DIR}/"
        ) from None


@contextmanager
def local_store_lock(root: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One writer at a time on the local store: parallel stages (``dvc queue start -j 2``) would otherwise meet
    SQLite's "database is locked". Bounded: past ``wait_s`` it gives up with :class:`TimeoutError`."""
    import fcntl

    with open(root / LOCK_NAME, "a+") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the store was locked by another stage for over {wait_s:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def describe_store_failure(exc: BaseException) -> str:
    """One short line for a local store that cannot take a run."""
    text = " ".join(str(exc).split())
    for marker, meaning in (
        ("readonly database", "read-only"),
        ("file is not a database", "not an MLflow database (corrupt?)"),
        ("database disk image is malformed", "corrupt"),
        ("unable to open database", "cannot be opened"),
        ("database is locked", "locked by another process"),
    ):
        if marker in text:
            return meaning
    return re.sub(r"(\w+://)[^/\s@]+@", r"\1", text)[:160] or type(exc).__name__


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


# -- delivery to a remote tracking server ----------------------------------------------------------------------

PENDING_TAG = "segmentation_pending"  # + "_<key>": value = the remote URI (redacted) still to receive the run
DELIVERED_TAG = "segmentation_delivered"  # + "_<key>": value = the run's ID on that remote
SOURCE_TAG = "segmentation_source_run"  # on the remote run: the local run's ID (what makes delivery idempotent)
ENV_TIMEOUT = "SEGMENTATION_TRACKING_TIMEOUT"
DEFAULT_TIMEOUT_S = 5
_warned = False


def remote_key(uri: str) -> str:
    """A short stable key for a remote tracking URI (credentials ignored), usable in a tag name."""
    return hashlib.sha1(redact_uri(uri).encode()).hexdigest()[:10]


def _experiment_id(client, name: str, artifact_location: str | None = None, store_uri: str | None = None) -> str:
    """The experiment's ID; created when missing, restored when deleted (one line says so).

    For the embedded local store (``artifact_location`` given), an experiment whose artifacts live elsewhere (the
    project was copied or moved) is pointed back inside the project.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
        print(f"note: MLflow experiment {name!r} had been deleted; restored it, with its runs", file=sys.stderr)
    if artifact_location and store_uri and experiment.artifact_location != artifact_location:
        relocate_artifacts(store_uri, experiment.experiment_id, experiment.artifact_location, artifact_location)
    return experiment.experiment_id


def relocate_artifacts(store_uri: str, experiment_id: str, old: str, new: str) -> None:
    """Point an experiment and its runs from ``old`` to ``new`` in a SQLite store.

    MLflow records absolute artifact paths; after ``cp -a proj proj2`` or ``mv``, runs would write into (or
    recreate) the old folder. MLflow's API cannot change an experiment's artifact location, so the two columns are
    updated in the store itself; the artifacts of earlier runs are where the copy put them, under ``new``.
    """
    import sqlite3

    if not store_uri.startswith("sqlite:///"):
        return
    with sqlite3.connect(store_uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, int(experiment_id)))
        db.execute(
            "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?)"
            " WHERE experiment_id = ? AND artifact_uri LIKE ?",
            (new, len(old) + 1, int(experiment_id), f"{old}%"),
        )
    print(f"note: the project has moved: MLflow artifacts now go to {new} (were {old})", file=sys.stderr)


def bound_http_requests(environ: MutableMapping[str, str] | None = None) -> None:
    """Bound MLflow's HTTP calls: its defaults (7 retries with backoff, 120 s timeout) stall a stage ~4 minutes
    on a dead server. User-set ``MLFLOW_HTTP_REQUEST_*`` values win."""
    env = os.environ if environ is None else environ
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", env.get(ENV_TIMEOUT, str(DEFAULT_TIMEOUT_S)))
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def describe_failure(exc: BaseException) -> str:
    """One short line for a failed delivery, without credentials."""
    text = " ".join(str(exc).split())
    if "401" in text or "Unauthorized" in text or "403" in text:
        return "credentials refused (check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or DAGSHUB_USER_TOKEN)"
    for marker in ("Connection refused", "Max retries exceeded", "timed out", "Read timed out", "Name or service"):
        if marker in text:
            return f"unreachable ({marker.lower()})"
    return re.sub(r"(\w+://)[^/\s@]+@", r"\1", text)[:160]  # drop user:password@ from any URL in the text


def deliver_or_keep(local, run_id: str, settings: TrackingSettings, root: Path) -> bool:
    """Copy a finished local run to the remote tracker; on failure tag it pending and warn once (one line)."""
    global _warned
    from mlflow.tracking import MlflowClient

    apply_dagshub_credentials(root)
    bound_http_requests()
    try:
        deliver_run(local, run_id, MlflowClient(tracking_uri=settings.tracking_uri), settings)
        return True
    except Exception as exc:  # any failure of the remote must leave the stage's results intact
        # Tagged pending when recorded (DualLogger.record); for other callers, tag it here.
        local.set_tag(run_id, f"{PENDING_TAG}_{remote_key(settings.tracking_uri)}", settings.display_uri)
        if not _warned:
            _warned = True
            print(
                f"warning: MLflow tracking server {settings.display_uri}: {describe_failure(exc)}; "
                "the run is kept in the local store (mlflow.db) and `make sync` delivers it later",
                file=sys.stderr,
            )
        return False


def deliver_run(local, run_id: str, remote, settings: TrackingSettings) -> str:
    """Copy local run ``run_id`` (params, metrics with history, tags, artifacts) to ``remote`` exactly once.

    The remote run carries the local run's ID as a tag: a run already there and finished is not sent again; one
    left unfinished by an interrupted delivery is deleted and sent again. Returns the remote run's ID.
    """
    from mlflow.entities import Param

    key = remote_key(settings.tracking_uri)
    run = local.get_run(run_id)
    experiment_id = _experiment_id(remote, settings.experiment_name)
    for previous in remote.search_runs([experiment_id], filter_string=f"tags.{SOURCE_TAG} = '{run_id}'"):
        if previous.info.status == "FINISHED":
            _mark_delivered(local, run, key, previous.info.run_id)
            return previous.info.run_id
        remote.delete_run(previous.info.run_id)

    tags = {
        k: v
        for k, v in run.data.tags.items()
        if not k.startswith((PENDING_TAG, DELIVERED_TAG)) and k != "mlflow.runName"
    }
    new = remote.create_run(
        experiment_id, start_time=run.info.start_time, tags={**tags, SOURCE_TAG: run_id}, run_name=run.info.run_name
    )
    new_id = new.info.run_id
    metrics = [m for key_ in run.data.metrics for m in local.get_metric_history(run_id, key_)]
    params = [Param(k, v) for k, v in run.data.params.items()]
    for i in range(0, max(len(params), len(metrics), 1), 100):  # MLflow's batch limit is 100 params
        remote.log_batch(new_id, metrics=metrics[i : i + 100], params=params[i : i + 100], tags=[])
    artifact_dir = _local_path(run.info.artifact_uri)
    if artifact_dir is not None and artifact_dir.is_dir() and any(artifact_dir.iterdir()):
        remote.log_artifacts(new_id, str(artifact_dir))
    remote.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
    _mark_delivered(local, run, key, new_id)
    return new_id


def _mark_delivered(local, run, key: str, remote_run_id: str) -> None:
    local.set_tag(run.info.run_id, f"{DELIVERED_TAG}_{key}", remote_run_id)
    pending = f"{PENDING_TAG}_{key}"
    if pending in run.data.tags:
        local.delete_tag(run.info.run_id, pending)


def _local_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        from urllib.request import url2pathname

        return Path(url2pathname(parts.path))
    if parts.scheme == "":
        return Path(uri)
    return None


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
    runs, token = [], None
    while True:
        page = local.search_runs(
            [experiment.experiment_id],
            filter_string=query,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    remote = MlflowClient(tracking_uri=settings.tracking_uri)
    for run in runs:
        if f"{DELIVERED_TAG}_{key}" in run.data.tags or run.info.status != "FINISHED":
            continue
        report.considered += 1
        try:
            deliver_run(local, run.info.run_id, remote, settings)
            report.delivered.append(run.info.run_id)
        except Exception as exc:
            report.failed[run.info.run_id] = describe_failure(exc)
            break  # the remote is down or refusing: the rest would fail the same way
    return report


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(sys.argv[2], int(sys.argv[3]))

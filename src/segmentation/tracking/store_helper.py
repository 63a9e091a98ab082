"""A helper process that has MLflow ready when a stage logs its run.

Importing MLflow and opening the local store costs ~2.5 s of CPU per stage. One helper per ``dvc repro`` does it
while the stages work, then records each stage's run when the stage asks, before the stage commits. This module is
imported before a stage's heavy imports, so it imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segmentation.tracking.logger import TrackingSettings
    from segmentation.tracking.store import PendingRun

HELPER_WAIT_S = 30
HELPER_POLL_S = 0.25
# A stage (and the helper) imports ~3,000 modules, then works on a few large arrays. Python's default collector
# (young objects every 700 allocations, and a pass over every object once they have grown by a quarter) spends ~15%
# of the imports' time walking the modules' objects. Young objects every 50,000 allocations instead: cycles are
# still freed, ~10 collections during the imports instead of ~700.
GC_THRESHOLDS = (50_000, 20, 20)


class StoreFailure(Exception):
    """The local store could not take a run (as the store helper described it)."""


def store_run(settings: TrackingSettings, run: PendingRun, root: Path) -> tuple[str, int]:
    """Record ``run`` in the local store (one writer at a time), then the runs kept pending from earlier; returns
    the run's ID and how many kept runs were recorded."""
    from segmentation.tracking.store import MlflowClientFor, local_store_lock, quiet_mlflow, record_run, replay_pending

    with local_store_lock(root), quiet_mlflow():
        local = MlflowClientFor(settings.local_uri)
        run_id = record_run(local, settings, run, root)
        if settings.is_remote:  # pending until delivered: a stage stopped while delivering leaves it for sync
            from segmentation.tracking.delivery import PENDING_TAG, remote_key

            local.set_tag(run_id, f"{PENDING_TAG}_{remote_key(settings.tracking_uri)}", settings.display_uri)
        return run_id, replay_pending(local, settings, root)


class StoreHelper:
    """Find or start the helper of this ``dvc repro`` (or ``dvc exp run``, or of the stage run by hand).

    The first stage starts it; the next ones find it by its socket. It belongs to that dvc process and exits once
    its owner is gone. A stage sends its run only when it is about to commit, and waits for the answer: a stage that
    stops or fails before (an error, Ctrl-C, SIGKILL) sends nothing and nothing is written. Should the helper be
    unreachable or fail, the stage records the run in its own process, as without a helper.
    """

    def __init__(self) -> None:
        import psutil

        from segmentation.tracking.lineage import dvc_process
        from segmentation.tracking.logger import project_root

        owner = dvc_process() or psutil.Process()
        key = f"{project_root()}:{owner.pid}:{owner.create_time()}"
        self.address = str(Path(tempfile.gettempdir()) / f"segmentation-{hashlib.sha1(key.encode()).hexdigest()[:16]}")
        self.proc = None
        if not self._reachable():
            # No stdio shared with the stage: dvc waits for the stage's pipes to close, not for the helper.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "segmentation.tracking.store_helper", "--serve", self.address, str(owner.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def _reachable(self) -> bool:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(self.address)
            return True
        return False

    def wait_warm(self) -> bool:
        """Wait while the helper loads the stages' libraries (it started before this stage, so it is further on
        than this process would be); False if it is gone, not loading them, or takes over ``HELPER_WAIT_S``."""
        deadline = time.monotonic() + HELPER_WAIT_S
        while not os.path.exists(self.address + ".warm"):
            try:
                pid = int(Path(self.address + ".loading").read_text())
                os.kill(pid, 0)  # still there?
            except (OSError, ValueError):
                return os.path.exists(self.address + ".warm")  # it may have just finished
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

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


_HELPER: StoreHelper | None = None
ENV_HELPER = "SEGMENTATION_STORE_HELPER"  # "0": no helper, every stage records its own run
ENV_WARM = "SEGMENTATION_WARM_STAGES"  # "0": every stage loads its libraries itself


def start_stage(stage: str) -> None:
    """A stage's start, before its heavy imports: Ctrl-C ends it with one line, the collector is tuned for a batch
    process, the helper of this ``dvc repro`` is found or started, and if it has the stages' libraries loaded the
    stage runs in a fork of it (then this never returns)."""
    from segmentation.errors import exit_on_interrupt

    exit_on_interrupt(stage)
    gc.set_threshold(*GC_THRESHOLDS)
    start_store_helper()
    run_warm(stage)


def start_store_helper() -> None:
    """Find or start the helper for this stage's run (see :class:`StoreHelper`); at most once per process.

    ``SEGMENTATION_STORE_HELPER=0``: none; the stage records its run itself (a stage run by hand that is expected
    to stop early, as in the bad-input tests, spares the helper's ~3 s of imports)."""
    global _HELPER
    if _HELPER is None and os.environ.get(ENV_HELPER) != "0":
        try:
            _HELPER = StoreHelper()
        except (OSError, ImportError):
            _HELPER = None


STAGES = ("preprocess", "train", "evaluate")
_IN_WARM_STAGE = False  # True in a stage forked from the helper


def run_warm(stage: str) -> None:
    """Run this stage in a fork of the helper if the helper has the libraries loaded; never returns then.

    Each stage is its own process that imports pandas, scikit-learn and matplotlib (~1.5 to 2.4 s of CPU). The
    helper of this ``dvc repro`` imports them once, while the first stage works; the later stages then run in a
    fork of it. This process (the one DVC started) stays as the stage's launcher: it hands over its arguments,
    environment, working directory and standard streams, passes Ctrl-C on, and exits with the stage's status. If
    the launcher is killed, the stage is killed. Should anything fail before the stage starts, or the helper not be
    ready yet, the stage runs here, as without a helper.
    """
    if _IN_WARM_STAGE or _HELPER is None or _HELPER.proc is not None or os.environ.get(ENV_WARM) == "0":
        return  # a helper this stage just started is still loading: not worth the wait
    if not _HELPER.wait_warm():
        return
    import json
    import signal

    from segmentation.tracking.lineage import dvc_process

    dvc = dvc_process()
    request = {"stage": stage, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    request["launcher"] = os.getpid()
    request["dvc"] = dvc.pid if dvc is not None else None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(HELPER_WAIT_S)
        conn.connect(_HELPER.address + ".stages")
        socket.send_fds(conn, [b"R"], [0, 1, 2])
        conn.sendall((json.dumps(request) + "\n").encode())
        stream = conn.makefile(encoding="utf-8")
        started = json.loads(stream.readline() or "null")
    except (OSError, ValueError):
        conn.close()
        return
    if not started or "pid" not in started:
        conn.close()
        return
    # From here the stage runs in the fork: pass Ctrl-C (and a polite stop) on, then exit as it did.
    pid = started["pid"]

    def forward(signum, frame) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    conn.settimeout(None)
    while True:
        try:
            line = stream.readline()
            break
        except InterruptedError:
            continue
    try:
        status = int(json.loads(line)["status"]) if line else 1
    except (ValueError, KeyError, TypeError):
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _run_forked_stage(conn: socket.socket, server: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """In the helper, for one stage: fork the stage, tell the launcher its PID, wait for it, send its status.

    Runs in a child of the helper (the helper goes back to serving at once); the stage is that child's own child,
    so that its status can be read and sent on, and that it can be killed should the launcher go first.
    """
    import signal

    try:  # whatever happens, this process ends here: never back into the helper's loop
        server.close()
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        pid = os.fork()
        if pid == 0:
            conn.close()
            _become_stage(fds, request)  # never returns
        for fd in fds:
            os.close(fd)
        _relay_status(conn, pid)
    finally:
        os._exit(0)


def _relay_status(conn: socket.socket, pid: int) -> None:
    """Send the launcher the stage's PID, then its exit status; kill the stage if the launcher goes first."""
    import json
    import select
    import signal

    status = 1
    try:
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
        stage = os.pidfd_open(pid)
        while True:
            ready, _, _ = select.select([conn, stage], [], [])
            if stage in ready:
                _, wait_status = os.waitpid(pid, 0)
                status = os.waitstatus_to_exitcode(wait_status)
                status = 128 - status if status < 0 else status  # killed by a signal: as a shell says it
                break
            if conn in ready and not conn.recv(1):  # the launcher is gone (killed): so goes the stage
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
        conn.sendall((json.dumps({"status": status}) + "\n").encode())
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _become_stage(fds: list[int], request: dict[str, Any]) -> None:
    """In the stage's process (a fork of the helper): take the launcher's streams, directory, environment and
    arguments, then run the stage module as ``__main__``, as ``python -m`` would."""
    import importlib
    import runpy
    import signal

    status = 1
    try:
        os.setpgid(0, 0)  # Ctrl-C reaches it once, through the launcher (the terminal signals the launcher's group)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [f"-m segmentation.stages.{request['stage']}", *request["argv"]]
        from segmentation.stages import runner as stage
        from segmentation.tracking import lineage

        lineage.launcher_pid = request["launcher"]
        stage.STARTED_BY_DVC = lineage.dvc_process() if request["dvc"] else None
        # The helper runs as __main__: the stage's code sees this module under its own name.
        helper = importlib.import_module("segmentation.tracking.store_helper")
        helper._HELPER, helper._IN_WARM_STAGE = helper.HelperClient(request["address"]), True
        # As `python -m` does: the module runs as __main__, not also under its own name (the warm-up imported it).
        sys.modules.pop(f"segmentation.stages.{request['stage']}", None)
        runpy.run_module(f"segmentation.stages.{request['stage']}", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


class HelperClient(StoreHelper):
    """The helper as seen from a stage it forked: the same socket, nothing to start."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.proc = None


class _OwnerGone(Exception):
    pass


def _warm_up_stages(owner=None) -> None:
    """Import what the stages import (and matplotlib's fonts), so that forks of the helper start ready; stop early
    if ``owner`` is gone (the first stage failed at once: no stage will ask)."""
    import importlib

    for stage in STAGES:
        if owner is not None and not _owner_alive(owner):
            raise _OwnerGone
        importlib.import_module(f"segmentation.stages.{stage}")
    # What the stages import inside functions (only when they run), and matplotlib's first drawing (fonts loaded).
    for module in (
        "dagshub.logger",
        "joblib",
        "mlflow.models",
        "mlflow.pyfunc",
        "mlflow.sklearn",
        "pyarrow.csv",
        "pyarrow.parquet",
        "scipy.signal",
        "sklearn.compose",
        "sklearn.decomposition",
        "sklearn.impute",
        "sklearn.metrics",
        "sklearn.pipeline",
        "sklearn.preprocessing",
    ):
        importlib.import_module(module)
    _warm_up_model_saving()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="warm-up")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def _warm_up_model_saving() -> None:
    """Save a tiny scikit-learn model as an MLflow model once, in the train stage's format: MLflow's first save
    reads every installed package's metadata to check the requirements (~0.4 s) and keeps what it read, so the train
    stage's own save is quick. (MLflow's default format, skops, would import skops instead: ~1 s, never used.)"""
    import tempfile

    import mlflow.sklearn
    from sklearn.dummy import DummyClassifier

    from segmentation.tracking.store import MLFLOW_SERIALIZATION, quiet_mlflow

    model = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    with tempfile.TemporaryDirectory() as folder, quiet_mlflow():
        mlflow.sklearn.save_model(
            model, f"{folder}/model", pip_requirements=["scikit-learn"], serialization_format=MLFLOW_SERIALIZATION
        )


def record_with_helper(settings: TrackingSettings, run: PendingRun, root: Path) -> tuple[str, int]:
    """Record ``run`` through the helper when there is one, else in this process; a store failure the helper
    reports is raised as :class:`StoreFailure`."""
    reply = _HELPER.record(run) if _HELPER is not None else None
    if reply is None:  # no helper (or it is gone): in this process
        return store_run(settings, run, root)
    if "error" in reply:
        raise StoreFailure(reply["error"])
    return reply["run_id"], reply["replayed"]


def serve(address: str, owner_pid: int) -> None:
    """The helper's side, until the owner process (dvc, or the stage run by hand) is gone. Ctrl-C is the stages' to
    handle: the helper ignores it.

    It splits in two at once, so that both get ready side by side (2 cores or more): this process imports MLflow,
    opens the store and records each run a stage sends (socket ``address``); its child loads the stages' libraries
    and forks the stages that ask (socket ``address.stages``, see :func:`run_warm`).

    A local SQLite store that does not exist yet is created aside (schema and all, ~2 s) and moved into place only
    when a stage asks for its run to be recorded: a pipeline whose stages all fail leaves no store behind.
    """
    import signal

    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.set_threshold(*GC_THRESHOLDS)
    for ended in (signal.SIGTERM, signal.SIGHUP):  # stopped from outside: clean up on the way out
        signal.signal(ended, lambda *_: sys.exit(0))
    stages_address = address + ".stages"
    for path in (address, stages_address, address + ".warm", address + ".loading"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a helper that was killed
    server = _listen(address)
    try:
        owner = psutil.Process(owner_pid)
    except psutil.Error:
        os._exit(0)
    if os.environ.get(ENV_WARM) != "0":
        stages = _listen(stages_address)
        Path(address + ".loading").write_text(str(os.getpid()))  # stages that start meanwhile wait (run_warm)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children (the stage server, relays) are reaped by the system
        # Both halves need MLflow (and the pandas, pyarrow and scipy it imports): imported once, before the split,
        # rather than twice side by side while the first stage loads its own libraries (`import mlflow`: ~1.5 s here).
        _import_shared()
        if os.fork() == 0:
            server.close()
            _serve_stages(stages, address, owner)  # never returns
        stages.close()
    _serve_runs(server, address, owner)


def _import_shared() -> None:
    """Import what both halves of the helper use; a failure is left to each half to meet and handle."""
    with contextlib.suppress(Exception):
        import mlflow  # noqa: F401


def _listen(address: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(8)
    server.settimeout(HELPER_POLL_S)
    return server


def _owner_alive(owner) -> bool:
    import psutil

    try:
        return owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _serve_runs(server: socket.socket, address: str, owner) -> None:
    """Import MLflow, open the store, then record each run a stage sends and answer."""
    import json

    from segmentation.tracking.logger import TrackingSettings, project_root
    from segmentation.tracking.store import (
        MlflowClientFor,
        PendingRun,
        describe_store_failure,
        local_store_lock,
        quiet_mlflow,
    )

    root = project_root()
    settings = TrackingSettings.resolve(root)
    db = Path(settings.local_uri.removeprefix("sqlite:///")) if settings.local_uri.startswith("sqlite:///") else None
    fresh = db.with_name(f".{db.name}.{os.getpid()}.tmp") if db is not None and not db.exists() else None
    try:
        try:
            with quiet_mlflow():
                from mlflow.entities import Metric, Param  # noqa: F401 - imported now, used by record_run
                from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: F401

                with local_store_lock(root, wait_s=0):  # the store's start-up (schema, migrations) under the lock
                    uri = f"sqlite:///{fresh}" if fresh else settings.local_uri
                    MlflowClientFor(uri).search_experiments(max_results=1)
        except Exception:  # a busy or broken store: each request tries again and reports it
            pass
        while _owner_alive(owner):
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
    finally:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(address)
        if fresh is not None:
            fresh.unlink(missing_ok=True)
        os._exit(0)  # all written and committed: skip tearing down MLflow's modules


def _serve_stages(server: socket.socket, address: str, owner) -> None:
    """Load the stages' libraries, then fork each stage that asks (see :func:`run_warm`)."""
    import json

    warm = False
    try:
        Path(address + ".loading").write_text(str(os.getpid()))
        try:
            _warm_up_stages(owner)
            # The forked stages' collections then skip the libraries' objects (and leave their pages shared).
            gc.freeze()
            Path(address + ".warm").touch()
            warm = True
        except Exception:  # the stages load their libraries themselves
            pass
        with contextlib.suppress(OSError):
            os.unlink(address + ".loading")
        while _owner_alive(owner):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(HELPER_WAIT_S)  # a stage connects with its request ready to send
                try:
                    first, fds, _, _ = socket.recv_fds(conn, 1, 3)
                    with conn.makefile(encoding="utf-8") as stream:
                        request = stream.readline()
                except (OSError, UnicodeDecodeError):
                    first, request, fds = b"", "", []
                if first == b"R" and warm and len(fds) == 3 and request.endswith("\n") and os.fork() == 0:
                    _run_forked_stage(conn, server, fds, {**json.loads(request), "address": address})
                for fd in fds:
                    os.close(fd)
    finally:
        server.close()
        for path in (address + ".stages", address + ".warm", address + ".loading"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        os._exit(0)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"] and len(sys.argv) == 4:
    serve(sys.argv[2], int(sys.argv[3]))

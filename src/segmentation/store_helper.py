"""A helper process that has MLflow ready when a stage logs its run.

Importing MLflow and opening the local store costs ~2.5 s of CPU per stage. One helper per ``dvc repro`` does it
while the stages work, then records each stage's run when the stage asks, before the stage commits. This module is
imported before a stage's heavy imports, so it imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
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
    from segmentation.store import PendingRun
    from segmentation.tracking import TrackingSettings

HELPER_WAIT_S = 30
HELPER_POLL_S = 0.25


class StoreFailure(Exception):
    """The local store could not take a run (as the store helper described it)."""


def store_run(settings: TrackingSettings, run: PendingRun, root: Path) -> tuple[str, int]:
    """Record ``run`` in the local store (one writer at a time), then the runs kept pending from earlier; returns
    the run's ID and how many kept runs were recorded."""
    from segmentation.store import MlflowClientFor, local_store_lock, quiet_mlflow, record_run, replay_pending

    with local_store_lock(root), quiet_mlflow():
        local = MlflowClientFor(settings.local_uri)
        run_id = record_run(local, settings, run, root)
        if settings.is_remote:  # pending until delivered: a stage stopped while delivering leaves it for sync
            from segmentation.delivery import PENDING_TAG, remote_key

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

        from segmentation.lineage import dvc_process
        from segmentation.tracking import project_root

        owner = dvc_process() or psutil.Process()
        key = f"{project_root()}:{owner.pid}:{owner.create_time()}"
        self.address = str(Path(tempfile.gettempdir()) / f"segmentation-{hashlib.sha1(key.encode()).hexdigest()[:16]}")
        self.proc = None
        if not self._reachable():
            # No stdio shared with the stage: dvc waits for the stage's pipes to close, not for the helper.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "segmentation.store_helper", "--serve", self.address, str(owner.pid)],
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


_HELPER: StoreHelper | None = None


def start_store_helper() -> None:
    """Find or start the helper for this stage's run (see :class:`StoreHelper`); at most once per process."""
    global _HELPER
    if _HELPER is None:
        try:
            _HELPER = StoreHelper()
        except (OSError, ImportError):
            _HELPER = None


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
    """The helper's side: bind the socket, warm up (import MLflow, open the store when no other stage holds it), then
    record each run a stage sends and answer, until the owner process (dvc, or the stage run by hand) is gone.
    Ctrl-C is the stages' to handle: the helper ignores it.

    A local SQLite store that does not exist yet is created aside (schema and all, ~2 s) and moved into place only
    when a stage asks for its run to be recorded: a pipeline whose stages all fail leaves no store behind.
    """
    import json
    import signal

    import psutil

    from segmentation.store import MlflowClientFor, PendingRun, describe_store_failure, local_store_lock, quiet_mlflow
    from segmentation.tracking import TrackingSettings, project_root

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
            with quiet_mlflow():
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


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"] and len(sys.argv) == 4:
    serve(sys.argv[2], int(sys.argv[3]))

"""Real servers on 127.0.0.1 for the remote and UI tests, each started and stopped by the tests that use it.

- an MLflow tracking server with username/password (``--app-name basic-auth``), artifacts served by it;
- the MLflow UI of ``make ui`` over a project's local store;
- moto's S3 server (an S3-compatible store like DagsHub's);
- a DVC HTTP remote with basic auth (GET/HEAD to read, POST/PUT to upload, as DVC's HTTP remote does);
- a routing proxy playing DagsHub's host, so that DagsHub-shaped URLs (``/<owner>/<repo>.mlflow``, ``.dvc``, the S3
  endpoint) reach those servers;
- a server that accepts connections and never answers (a hanging tracker).

Processes run in their own process group (setsid) and the whole group is stopped: MLflow's server leaves worker
processes behind otherwise. Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers any HTTP status (bounded)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            with urlopen(url, timeout=2):
                return
        except HTTPError:
            return  # it answered
        except (URLError, OSError):
            time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout} s")


@contextlib.contextmanager
def process_group(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own session; on exit stop the whole group (TERM, then KILL after 10 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        AWS_EC2_METADATA_DISABLED="true",
        # Without the job runner: 2 processes and ~0.5 GiB instead of 10 and 2.3 GiB.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def mlflow_basic_auth_server(workdir: Path, admin_password: str) -> Iterator[str]:
    """A real ``mlflow server --app-name basic-auth``; yields its URL. The admin user is ``admin``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
        "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}",
        "--artifacts-destination", str(workdir / "artifacts"),
    ]  # fmt: skip
    env = server_env(MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key", MLFLOW_AUTH_ADMIN_PASSWORD=admin_password)
    log = workdir / "server.log"
    with process_group(cmd, workdir, env, log) as proc:
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/health", timeout=90, proc=proc, log=log)
        yield url


@contextlib.contextmanager
def mlflow_ui(project: Path, makefile: Path, timeout: float = 60) -> Iterator[str]:
    """``make ui`` (the Makefile's own target and command line) over ``project``'s local store; yields its URL.

    The server's output goes to ``project/mlflow-ui.log``.
    """
    port = free_port()
    env = server_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log = project / "mlflow-ui.log"
    with process_group(["make", "-f", str(makefile), "ui", f"PORT={port}"], project, env, log) as proc:
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/health", timeout=timeout, proc=proc, log=log)
        yield url


@contextlib.contextmanager
def moto_s3_server(workdir: Path) -> Iterator[str]:
    """moto's S3-compatible server; yields its endpoint URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "moto.log"
    with process_group([str(BIN / "moto_server"), "-H", HOST, "-p", str(port)], workdir, server_env(), log) as proc:
        url = f"http://{HOST}:{port}"
        wait_http(url, timeout=30, proc=proc, log=log)
        yield url


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[str]:
    server = _ThreadingServer((HOST, port), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    return handler.rfile.read(int(handler.headers.get("Content-Length", 0)))


@contextlib.contextmanager
def dvc_http_remote(storage: Path, user: str, password: str) -> Iterator[str]:
    """An HTTP file store with basic auth, as DVC's HTTP remote expects; yields its base URL."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    storage.mkdir(parents=True, exist_ok=True)
    stats = {"uploads": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _path(self) -> Path:
            rel = self.path.split("?", 1)[0].lstrip("/")
            target = (storage / rel).resolve()
            if storage.resolve() not in target.parents:
                raise PermissionError(rel)
            return target

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == expected:
                return True
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="dvc"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False

        def do_HEAD(self):
            self._get(body=False)

        def do_GET(self):
            self._get(body=True)

        def _get(self, body: bool):
            if not self._authorised():
                return
            path = self._path()
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_POST(self):
            self._put()

        def do_PUT(self):
            self._put()

        def _put(self):
            if not self._authorised():
                _read_body(self)
                return
            data = _read_body(self)
            path = self._path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            stats["uploads"] += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with _serve(Handler) as url:
        yield url


@contextlib.contextmanager
def routing_proxy(routes: dict[str, str], port: int = 0) -> Iterator[str]:
    """Forward ``<prefix>/rest`` to ``<target>/rest`` for each ``prefix -> target`` (any method, headers, body).

    It plays DagsHub's host: ``/<owner>/<repo>.mlflow``, ``/<owner>/<repo>.dvc`` and the S3 endpoint's path each
    lead to a real server of their own. Yields the proxy's base URL.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self):
            has_body = "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
            body = _read_body(self) if has_body else None
            match = next((p for p in sorted(routes, key=len, reverse=True) if self.path.startswith(p)), None)
            if match is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = self.path[len(match) :] or "/"
            if not path.startswith("/"):
                path = "/" + path
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            target_host = routes[match].split("://", 1)[1].rstrip("/")
            conn = http.client.HTTPConnection(target_host, timeout=60)
            try:
                conn.request(self.command, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except OSError:
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            finally:
                conn.close()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    with _serve(Handler, port) as url:
        yield url


@contextlib.contextmanager
def hanging_server(port: int = 0) -> Iterator[str]:
    """Accepts TCP connections and never answers; yields its URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        sock.close()


# -- a Dask cluster started the way a real one is: `dask scheduler` and `dask worker` processes, reached by address --
DASK_START_TIMEOUT_S = 60  # the scheduler's file, then every worker registered
DASK_STOP_TIMEOUT_S = 30  # each process group after SIGTERM, before SIGKILL


class DaskCluster:
    """A running `dask scheduler` and its `dask worker` processes (each worker a nanny and its worker process, in
    their own process group)."""

    def __init__(self, address: str, workers: list[subprocess.Popen], folder: Path) -> None:
        self.address = address
        self.workers = workers  # the `dask worker` commands, in start order
        self.folder = folder  # the processes' working directory and logs (<n>.log; 0.log is the scheduler's)

    def logs(self) -> str:
        """Every process's output so far."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int = 2, memory_limit: str = "1GiB") -> Iterator[DaskCluster]:
    """`dask scheduler` and ``workers`` `dask worker` processes (1 thread and ``memory_limit`` each), every server on
    127.0.0.1, started in ``folder`` (not the stage's: a real cluster's workers have their own working directory)
    and stopped at the end (SIGTERM to each process group, SIGKILL after a bounded wait)."""
    import json

    from distributed import Client

    dask_cli = str(BIN / "dask")
    loopback = ["--host", HOST, "--dashboard-address", f"{HOST}:0"]
    procs: list[subprocess.Popen] = []
    logs = contextlib.ExitStack()

    def start(*args: str) -> subprocess.Popen:
        log = logs.enter_context((folder / f"{len(procs)}.log").open("w"))
        proc = subprocess.Popen([dask_cli, *args], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        procs.append(proc)
        return proc

    try:
        start("scheduler", "--port", "0", "--scheduler-file", str(folder / "scheduler.json"), *loopback)
        deadline = time.monotonic() + DASK_START_TIMEOUT_S
        while not (folder / "scheduler.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads((folder / "scheduler.json").read_text())["address"]
        assert address.startswith(f"tcp://{HOST}:")
        options = ["--nworkers", "1", "--nthreads", "1", "--memory-limit", memory_limit, *loopback]
        started = [start("worker", address, "--name", f"w{i + 1}", *options) for i in range(workers)]
        with Client(address, timeout=DASK_START_TIMEOUT_S, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=DASK_START_TIMEOUT_S)
            assert all(w.startswith(f"tcp://{HOST}:") for w in client.scheduler_info()["workers"])
        yield DaskCluster(address, started, folder)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=DASK_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=DASK_STOP_TIMEOUT_S)
        logs.close()

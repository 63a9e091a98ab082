"""The MLflow UI of `make ui` over a project's local store: what its pages load, and the run page in a real browser.

A lock once paired graphene 2.0 with graphql-core 3.3: the runs list still showed, but `POST /graphql` answered 500,
so the experiment page said "Experiment load error" and every run page "Can't load run details". These tests start
the UI with the Makefile's own target, call the endpoints the experiment and run pages call (the GraphQL queries are
read from the installed UI bundle, so they are the ones the pages send) and render the run page in headless Chromium.
Nothing but 127.0.0.1 is reached; the screenshots and the server's log are kept in test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import pytest

from servers import HOST, free_port, mlflow_ui

pytestmark = pytest.mark.ui

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
EXPERIMENT = "ui-check"
# What the pages show when their calls fail: the run page, the experiment page, the UI's generic messages
# ("Something went wrong", "Failed to load chart data", "Failed to load child runs", "Image failed to load", ...).
ERROR_BANNERS = ("Can't load run details", "Experiment load error", "went wrong", "Failed to load", "failed to load")


@dataclass
class Logged:
    """Runs logged with the project's DualLogger into a fresh project's local store."""

    root: Path
    runs: dict[str, str] = field(default_factory=dict)  # stage -> run ID
    params: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> params as MLflow stores them
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # the train run's files


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Logged:
    """Two stages' runs (params, metrics, tags, artifacts) logged the way the pipeline logs them."""
    from segmentation.tracking.logger import DualLogger

    root = tmp_path_factory.mktemp("ui") / "project"
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[tool.segmentation]\nexperiment_name = "{EXPERIMENT}"\n')
    out = Logged(root)
    out.artifacts = {
        "elbow_scores.csv": b"k,score\n2,10.5\n3,7.25\n4,6.0\n",
        "model.bin": bytes(range(256)) * 4,  # every byte value: compared byte for byte after the round trip
    }
    for name, data in out.artifacts.items():
        (root / name).write_bytes(data)
    stages = {
        "preprocess": ({"preprocess.scale": True, "preprocess.missing": "drop"}, {"rows_out": 2205}),
        "train": ({"train.k_max": 10, "train.metric": "distortion"}, {"k_best": 5, "score": 0.25}),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("SEGMENTATION_PIPELINE_RUN_ID", "ui-check-1")
        for stage, (params, metrics) in stages.items():
            with DualLogger(stage, root=root) as log:
                log.log_params(params)
                log.log_metrics(metrics)
                log.log_data("data/raw/x.csv", "3b624fc2bdbe29fa5fb01bdd577f78cd")  # tagged raw_data_md5
                if stage == "train":
                    for name in out.artifacts:
                        log.log_artifact(root / name)
            out.runs[stage] = log.run_id
            out.params[stage] = {k: str(v) for k, v in params.items()}
            out.metrics[stage] = {k: float(v) for k, v in metrics.items()}
    return out


@pytest.fixture(scope="module")
def ui(logged) -> str:
    """`make ui` in the project (its own process group, stopped whole); the server's log is kept as an artifact."""
    try:
        with mlflow_ui(logged.root, REPO / "Makefile") as url:
            yield url
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        log = logged.root / "mlflow-ui.log"
        if log.exists():
            shutil.copyfile(log, ARTIFACTS / "mlflow-ui.log")


# -- the calls the pages make ------------------------------------------------------------------------------------


def call(url: str, endpoint: str, body: dict | None = None, /, **query: str) -> tuple[int, bytes]:
    """GET ``endpoint`` with ``query`` (or POST a JSON body); returns the status and the raw body, whatever it is."""
    target = f"{url}{endpoint}" + (f"?{urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = Request(target, data=data, headers=headers, method="GET" if data is None else "POST")
    try:
        with urlopen(request, timeout=60) as resp:
            return resp.status, resp.read()
    except HTTPError as exc:
        return exc.code, exc.read()


def call_json(url: str, endpoint: str, body: dict | None = None, /, **query: str) -> dict:
    status, data = call(url, endpoint, body, **query)
    assert status == 200, f"{'POST' if body is not None else 'GET'} {endpoint}: {status} {data[:500]!r}"
    return json.loads(data)


@functools.cache
def ui_query(operation: str) -> str:
    """The text of the GraphQL ``operation`` as the installed MLflow UI's JavaScript sends it."""
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    pattern = re.compile(r"`(\s*query " + re.escape(operation) + r"\(.*?)`", re.S)
    for script in sorted(bundle.glob("*.js")):
        found = pattern.search(script.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found.group(1)
    raise AssertionError(f"the MLflow UI bundle ({bundle}) has no GraphQL query {operation}: update this test")


def graphql(url: str, operation: str, variables: dict) -> dict:
    """POST the UI's own ``operation`` to /graphql: it must answer 200 with data and no errors."""
    body = {"operationName": operation, "variables": variables, "query": ui_query(operation)}
    status, data = call(url, "/graphql", body)
    assert status == 200, f"POST /graphql {operation}: {status} {data[:1000]!r}"  # 500 when graphene is broken
    doc = json.loads(data)
    assert not doc.get("errors"), f"POST /graphql {operation}: {doc['errors']}"  # MLflow sends "errors": null
    (result,) = doc["data"].values()
    assert result is not None and not result.get("apiError"), f"POST /graphql {operation}: {doc}"
    return result


ACCESS_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


def server_errors(logged: Logged) -> list[str]:
    """The requests the UI server answered with a 5xx so far (from its access log)."""
    log = (logged.root / "mlflow-ui.log").read_text(errors="replace")
    return [" ".join(m.groups()) for m in ACCESS_LINE.finditer(log) if int(m[3]) >= 500]


def experiment_id(url: str) -> str:
    return call_json(url, "/ajax-api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"][
        "experiment_id"
    ]


def test_experiment_page_loads_the_experiment_and_its_runs(ui, logged):
    # The experiments list, then the experiment page: the experiment (REST and GraphQL) and its runs.
    found = call_json(ui, "/ajax-api/2.0/mlflow/experiments/search", {"max_results": 1000})
    assert EXPERIMENT in [e["name"] for e in found["experiments"]]
    exp_id = experiment_id(ui)
    assert call_json(ui, "/ajax-api/2.0/mlflow/experiments/get", experiment_id=exp_id)["experiment"]["name"] == (
        EXPERIMENT
    )
    experiment = graphql(ui, "MlflowGetExperimentQuery", {"input": {"experimentId": exp_id}})["experiment"]
    assert (experiment["experimentId"], experiment["name"]) == (exp_id, EXPERIMENT)

    runs = call_json(
        ui,
        "/ajax-api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp_id], "max_results": 100, "run_view_type": "ACTIVE_ONLY"},
    )["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    # One pipeline run (outside git: "pipeline"), the parent of the stages' runs.
    assert set(by_name) == {"pipeline", *logged.runs}
    parent = by_name.pop("pipeline")["info"]["run_id"]
    assert all({"key": "mlflow.parentRunId", "value": parent} in r["data"]["tags"] for r in by_name.values())
    for stage, run_id in logged.runs.items():
        run = by_name[stage]
        assert (run["info"]["run_id"], run["info"]["status"]) == (run_id, "FINISHED")
        assert {p["key"]: p["value"] for p in run["data"]["params"]} == logged.params[stage]
        assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == logged.metrics[stage]

    searched = graphql(ui, "SearchRuns", {"data": {"experimentIds": [exp_id]}})["runs"]
    assert {r["info"]["runUuid"] for r in searched} == {parent, *logged.runs.values()}
    assert server_errors(logged) == []


def test_run_page_loads_details_params_metrics_and_artifacts(ui, logged):
    exp_id = experiment_id(ui)
    run_id = logged.runs["train"]

    # The run page's details: one GraphQL query (this is what answered 500 with graphene 2.0).
    run = graphql(ui, "GetRun", {"data": {"runId": run_id}})["run"]
    assert run["info"]["runUuid"] == run_id
    assert (run["info"]["runName"], run["info"]["status"], run["info"]["experimentId"]) == ("train", "FINISHED", exp_id)
    assert run["experiment"]["name"] == EXPERIMENT
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == logged.params["train"]
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == logged.metrics["train"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["stage"] == "train" and tags["pipeline_run_id"] == "ui-check-1"
    assert tags["raw_data_md5"] == "3b624fc2bdbe29fa5fb01bdd577f78cd"

    # The same run over REST, its metric histories (charts), its artifacts.
    rest = call_json(ui, "/ajax-api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    assert {p["key"]: p["value"] for p in rest["data"]["params"]} == logged.params["train"]
    assert {m["key"]: m["value"] for m in rest["data"]["metrics"]} == logged.metrics["train"]
    for key, value in logged.metrics["train"].items():
        history = call_json(ui, "/ajax-api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key)
        assert [(m["value"], m["step"]) for m in history["metrics"]] == [(value, 0)]
        bulk = graphql(ui, "GetMetricHistoryBulkInterval", {"data": {"runIds": [run_id], "metricKey": key}})
        assert [(m["runId"], m["value"]) for m in bulk["metrics"]] == [(run_id, value)]

    listed = call_json(ui, "/ajax-api/2.0/mlflow/artifacts/list", run_id=run_id)
    files = {f["path"]: int(f["file_size"]) for f in listed["files"] if not f["is_dir"]}
    assert files == {name: len(data) for name, data in logged.artifacts.items()}
    for name, data in logged.artifacts.items():
        status, body = call(ui, "/get-artifact", path=name, run_uuid=run_id)
        assert status == 200 and body == data, f"GET /get-artifact {name}: {status}, {len(body)} bytes"
    assert server_errors(logged) == []


# -- the pages in a real browser -----------------------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, bounded: on timeout (or any exit) the whole group is killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers left behind (Chromium's zygote)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


CHROMIUM_MISSING = "Chromium not found (chromium or chromium-browser on PATH); install it: apt-get install chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium from PATH; the browser tests skip, saying how to install it, when there is none.

    The tests install nothing: CI (.ci/run) installs Debian's package before running them.
    """
    found = find_chromium()
    if found is None:
        pytest.skip(CHROMIUM_MISSING)
    return found


def headless(chromium: str, url: str, profile: Path, *args: str, timeout: float = 180) -> str:
    """Load ``url`` in headless Chromium that can reach 127.0.0.1 only; returns its stdout (e.g. the DOM)."""
    blackhole = free_port()  # nothing listens there: any host but 127.0.0.1 goes to a closed proxy port
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
        "--disable-features=Translate,OptimizationHints,MediaRouter", "--lang=en-US", "--window-size=1400,1000",
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {HOST}",
        f"--proxy-server=http://{HOST}:{blackhole}",  # loopback is never proxied
        "--virtual-time-budget=30000", *args, url,
    ]  # fmt: skip
    done = run_group(cmd, timeout, cwd=profile.parent)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}"
    return done.stdout.decode(errors="replace")


def visible_text(dom: str) -> str:
    """The page's text, without scripts, styles and tags."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def test_run_page_renders_in_chromium(ui, logged, chromium, tmp_path):
    exp_id = experiment_id(ui)
    run_id = logged.runs["train"]
    page = f"{ui}/#/experiments/{exp_id}/runs/{run_id}"
    text = visible_text(headless(chromium, page, tmp_path / "profile", "--dump-dom"))
    for banner in ERROR_BANNERS:
        assert banner not in text, f"the run page shows {banner!r}: {text[:2000]}"
    for expected in ("train", EXPERIMENT, "train.k_max", "distortion", "k_best", "score"):
        assert expected in text, f"{expected!r} is not on the run page: {text[:2000]}"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow-ui-run-page.png"
    shot.unlink(missing_ok=True)
    headless(chromium, page, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert server_errors(logged) == []  # every call the page made was answered


def test_experiment_page_renders_in_chromium(ui, logged, chromium, tmp_path):
    # The experiment in the UI's model-training view, as `make ui` links it: on its runs (not the GenAI overview).
    assert f"{ui}/#/experiments?workflowType=machine_learning" in (logged.root / "mlflow-ui.log").read_text()
    page = f"{ui}/#/experiments/{experiment_id(ui)}?workflowType=machine_learning"
    text = visible_text(headless(chromium, page, tmp_path / "profile", "--dump-dom"))
    for banner in ERROR_BANNERS:
        assert banner not in text, f"the experiment page shows {banner!r}: {text[:2000]}"
    for expected in (EXPERIMENT, "pipeline", "Run Name"):
        assert expected in text, f"{expected!r} is not on the experiment page: {text[:2000]}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow-ui-experiment-page.png"
    shot.unlink(missing_ok=True)
    headless(chromium, page, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert server_errors(logged) == []  # every call the page made was answered

"""DagsHub set-up against real servers on 127.0.0.1: MLflow with basic auth, DVC over HTTP and S3, dead trackers.

A routing proxy plays dagshub.com (``DAGSHUB_CLIENT_HOST``): ``/acme/segments.mlflow`` leads to a real
``mlflow server --app-name basic-auth``, ``/acme/segments.dvc`` to an HTTP store with basic auth, and DagsHub's S3
endpoint path to moto's S3 server. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline_helpers import copy_project, paths, project_env, run, stage_names, stage_runs, use_fixture_data
from segmentation.tracking.settings import TrackingSettings
from servers import (
    dvc_http_remote,
    free_port,
    hanging_server,
    mlflow_basic_auth_server,
    moto_s3_server,
    routing_proxy,
)

pytestmark = pytest.mark.remote

OWNER, REPO = "acme", "segments"
STAGES = stage_names()
P = paths()  # every path as dvc.yaml declares it
CACHED = ["data/raw/marketing_sample.csv", P["matrix"], P["model"], P["segments"]]
# Without the bound, MLflow's default retries stall a stage ~247 s per request on a dead server (NOTES.md);
# with it a stage loses seconds. The margins here only tell "seconds" from "minutes" on a loaded machine.
DEAD_TRACKER_BOUND_S = 150
HANGING_TRACKER_BOUND_S = 200


class FakeDagsHub:
    """The servers behind the proxy and the credentials they accept."""

    def __init__(self, host: str, mlflow_url: str, token: str, dvc_storage: Path, s3_url: str):
        self.host, self.mlflow_url, self.token = host, mlflow_url, token
        self.dvc_storage, self.s3_url = dvc_storage, s3_url

    def client(self, monkeypatch) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", self.token)
        return MlflowClient(self.mlflow_url)

    def runs(self, monkeypatch, experiment: str):
        client = self.client(monkeypatch)
        exp = client.get_experiment_by_name(experiment)
        return [] if exp is None else stage_runs(client, [exp.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def dagshub(tmp_path_factory):
    work = tmp_path_factory.mktemp("servers")
    # The MLflow admin password doubles as the "DagsHub token": DagsHub's MLflow takes the token as password.
    token = "tok" + secrets.token_hex(16)
    with (
        mlflow_basic_auth_server(work / "mlflow", admin_password=token) as mlflow_url,
        dvc_http_remote(work / "dvc-store", user="admin", password=token) as dvc_url,
        moto_s3_server(work / "moto") as s3_url,
        routing_proxy(
            {
                f"/{OWNER}/{REPO}.mlflow": mlflow_url,
                f"/{OWNER}/{REPO}.dvc": dvc_url,
                f"/api/v1/repo-buckets/s3/{OWNER}": s3_url,
            }
        ) as host,
    ):
        yield FakeDagsHub(host, mlflow_url, token, work / "dvc-store", s3_url)


def dagshub_env(root: Path, dagshub: FakeDagsHub, token: str | None = None, **extra: str) -> dict[str, str]:
    return project_env(
        root.parent,
        DAGSHUB_CLIENT_HOST=dagshub.host,
        DAGSHUB_USERNAME="admin",
        DAGSHUB_USER_TOKEN=token or dagshub.token,
        **extra,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, dagshub):
    """A copy of the project configured for the (fake) DagsHub repo acme/segments, after one full `dvc repro`."""
    root = copy_project(tmp_path_factory.mktemp("remote") / "project")
    env = dagshub_env(root, dagshub)
    outputs = []
    outputs.append(
        run(
            [sys.executable, "-m", "segmentation.tracking.remote", "dagshub", "--owner", OWNER, "--repo", REPO],
            root,
            env,
        )
    )
    use_fixture_data(root, env)
    outputs.append(run(["dvc", "repro"], root, env))
    return root, outputs


def tracker_warnings(stderr: str) -> list[str]:
    """The warning lines but the data's own: on the fixture data the criteria per k disagree with k_best (evaluate)."""
    return [line for line in stderr.splitlines() if line.startswith("warning:") and "k_best" not in line]


def one_pipeline_run(client, runs: list):
    """The one pipeline run (MLflow parent run) of the stages' ``runs`` on the tracker: the local store's structure."""
    everything = client.search_runs([runs[0].info.experiment_id])
    (parent,) = [r for r in everything if "stage" not in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and "train.k_max" in parent.data.params
    return parent


def test_dagshub_command_configures_without_writing_the_token(project, dagshub):
    root, outputs = project
    config = (root / ".dvc" / "config").read_text()
    assert f"url = {dagshub.host}/{OWNER}/{REPO}.dvc" in config
    assert "remote = origin" in config and "auth = basic" in config
    local = (root / ".dvc" / "config.local").read_text()
    assert "user = admin" in local and f"password = {dagshub.token}" in local
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=root)
    assert ignored.returncode == 0
    pyproject = (root / "pyproject.toml").read_text()
    assert f'dagshub_owner = "{OWNER}"' in pyproject and f'dagshub_repo = "{REPO}"' in pyproject
    assert dagshub.token not in pyproject + config
    assert "dagshub.com" not in outputs[0].stdout  # the host override reached every URL


def test_full_repro_logs_to_the_tracking_server(project, dagshub, monkeypatch):
    root, outputs = project
    repro = outputs[-1]
    assert [line for line in repro.stderr.splitlines() if "warning" in line and "k_best" not in line] == []
    experiment = TrackingSettings.resolve(root, environ={}).experiment_name  # the project's own name
    runs = dagshub.runs(monkeypatch, experiment)
    assert [r.info.run_name for r in runs] == STAGES
    assert len({r.data.tags["pipeline_run_id"] for r in runs}) == 1
    pre, train, _evaluate = runs
    assert pre.data.metrics["rows_out"] == 400
    assert train.data.params["train.k_max"] == "8"
    assert train.data.metrics["k_best"] == json.loads((root / P["train_metrics"]).read_text())["k_best"]
    client = dagshub.client(monkeypatch)
    assert {Path(P[name]).name for name in ("model", "elbow_plot", "elbow_scores")} <= {
        a.path for a in client.list_artifacts(train.info.run_id)
    }
    plot = Path(P["elbow_plot"])
    downloaded = Path(client.download_artifacts(train.info.run_id, plot.name, str(root.parent / "dl")))
    assert downloaded.read_bytes() == (root / plot).read_bytes()
    assert one_pipeline_run(client, runs).data.metrics["k_best"] == train.data.metrics["k_best"]
    # The same runs are kept in the local store, marked as delivered.
    local = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    local_runs = stage_runs(local, [local.get_experiment_by_name(experiment).experiment_id])
    assert sorted(r.info.run_id for r in local_runs) == sorted(r.data.tags["segmentation_source_run"] for r in runs)


def test_wrong_password_is_one_clear_line_and_nothing_is_lost(project, dagshub, monkeypatch):
    root, _ = project
    env = dagshub_env(root, dagshub, token="wrong-password", MLFLOW_EXPERIMENT_NAME="wrong-password")
    repro = run(["dvc", "repro", "--force"], root, env)
    warnings = tracker_warnings(repro.stderr)
    assert len(warnings) == 3  # one per stage
    assert all("credentials refused" in w and "make sync" in w for w in warnings)
    assert "Traceback" not in repro.stderr
    assert dagshub.runs(monkeypatch, "wrong-password") == []
    local = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    kept = stage_runs(local, [local.get_experiment_by_name("wrong-password").experiment_id])
    assert sorted(r.info.run_name for r in kept) == sorted(STAGES)
    for stage in STAGES:  # the DagsHub logger files were written too
        assert (root / P["dagshub"] / stage / "metrics.csv").stat().st_size > 30

    env = dagshub_env(root, dagshub, MLFLOW_EXPERIMENT_NAME="wrong-password")
    first = run([sys.executable, "-m", "segmentation.tracking.remote", "sync"], root, env)
    assert "3 run(s) delivered" in first.stdout
    second = run([sys.executable, "-m", "segmentation.tracking.remote", "sync"], root, env)
    assert "0 run(s) delivered" in second.stdout
    delivered = dagshub.runs(monkeypatch, "wrong-password")
    assert sorted(r.data.tags["segmentation_source_run"] for r in delivered) == sorted(r.info.run_id for r in kept)
    assert all(r.info.status == "FINISHED" and r.data.metrics for r in delivered)
    one_pipeline_run(dagshub.client(monkeypatch), delivered)  # delivered later, nested as if at once


@pytest.mark.parametrize("failure", ["dead", "hanging", "errors"])
def test_unreachable_tracker_is_bounded_and_sync_delivers_once(project, dagshub, monkeypatch, failure):
    """Run the pipeline while the tracker is down; bring it back at the same address; sync twice."""
    root, _ = project
    experiment = f"{failure}-tracker"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"

    def repro():
        env = project_env(root.parent, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=experiment)
        start = time.monotonic()
        proc = run(["dvc", "repro", "--force"], root, env)
        return proc, time.monotonic() - start

    if failure == "dead":
        proc, elapsed = repro()  # nothing listens on `port`: connection refused
        bound = DEAD_TRACKER_BOUND_S
    elif failure == "hanging":
        with hanging_server(port):
            proc, elapsed = repro()
        bound = HANGING_TRACKER_BOUND_S
    else:
        # A proxy in front of nothing: every request gets "502 Bad Gateway".
        with routing_proxy({"": f"http://127.0.0.1:{free_port()}"}, port=port):
            proc, elapsed = repro()
        bound = DEAD_TRACKER_BOUND_S
    assert elapsed < bound, f"dvc repro took {elapsed:.0f} s with a {failure} tracker"
    warnings = tracker_warnings(proc.stderr)
    assert len(warnings) == 3 and all(f"{uri}:" in w and "make sync" in w for w in warnings), proc.stderr

    # The tracker comes back at the same address (a proxy to the live server).
    env = dagshub_env(root, dagshub, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=experiment)
    env.pop("DAGSHUB_CLIENT_HOST")
    with routing_proxy({"": dagshub.mlflow_url}, port=port):
        first = run([sys.executable, "-m", "segmentation.tracking.remote", "sync"], root, env)
        second = run([sys.executable, "-m", "segmentation.tracking.remote", "sync"], root, env)
    assert "3 run(s) delivered" in first.stdout
    assert "0 run(s) delivered" in second.stdout
    delivered = dagshub.runs(monkeypatch, experiment)
    assert sorted(r.info.run_name for r in delivered) == sorted(STAGES)
    assert len({r.data.tags["segmentation_source_run"] for r in delivered}) == 3
    one_pipeline_run(dagshub.client(monkeypatch), delivered)


def test_push_and_pull_over_http_with_basic_auth(project, dagshub, tmp_path):
    root, _ = project
    env = dagshub_env(root, dagshub)
    run(["dvc", "push"], root, env)
    assert any((dagshub.dvc_storage / "files" / "md5").rglob("*"))
    clone = clone_and_pull(root, tmp_path / "clone", env, ["dagshub", "--owner", OWNER, "--repo", REPO])
    for rel in CACHED:
        assert (clone / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert json.loads(run(["dvc", "status", "--json"], clone, env).stdout) == {}

    # A wrong password fails the pull with DVC's own error, and the workspace is untouched.
    bad = dagshub_env(root, dagshub, token="wrong-password")
    wrong = tmp_path / "wrong"
    run(["git", "clone", "-q", str(root), str(wrong)], tmp_path, bad)
    run([sys.executable, "-m", "segmentation.tracking.remote", "dagshub", "--owner", OWNER, "--repo", REPO], wrong, bad)
    failed = run(["dvc", "pull"], wrong, bad, check=False)
    assert failed.returncode != 0
    assert "401" in failed.stderr or "Unauthorized" in failed.stderr or "failed to pull" in failed.stderr.lower()


def test_push_and_pull_over_dagshub_s3_endpoint(project, dagshub, tmp_path):
    import boto3

    root, _ = project
    boto3.client(
        "s3", endpoint_url=dagshub.s3_url, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    ).create_bucket(Bucket=REPO)  # DagsHub's bucket exists with the repo
    s3_project = tmp_path / "s3-project"
    env = dagshub_env(root, dagshub)
    run(["git", "clone", "-q", str(root), str(s3_project)], tmp_path, env)
    run(
        [sys.executable, "-m", "segmentation.tracking.remote", "dagshub", "--s3", "--owner", OWNER, "--repo", REPO],
        s3_project,
        env,
    )
    config = (s3_project / ".dvc" / "config").read_text()
    assert f"url = s3://{REPO}" in config and f"endpointurl = {dagshub.host}/api/v1/repo-buckets/s3/{OWNER}" in config
    local = (s3_project / ".dvc" / "config.local").read_text()
    assert f"access_key_id = {dagshub.token}" in local and dagshub.token not in config
    # The first project's results (its DVC cache) go to S3.
    shutil.copytree(root / ".dvc" / "cache", s3_project / ".dvc" / "cache", dirs_exist_ok=True)
    run(["dvc", "checkout"], s3_project, env)
    run(["dvc", "push"], s3_project, env)
    clone = clone_and_pull(
        s3_project, tmp_path / "s3-clone", env, ["dagshub", "--s3", "--owner", OWNER, "--repo", REPO]
    )
    for rel in CACHED:
        assert (clone / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert json.loads(run(["dvc", "status", "--json"], clone, env).stdout) == {}


def clone_and_pull(source: Path, dest: Path, env: dict[str, str], configure: list[str]) -> Path:
    """git clone ``source``, configure its credentials (config.local is not cloned) and `dvc pull`."""
    run(["git", "add", "-A"], source, env)
    run(["git", "commit", "-q", "--allow-empty", "-m", "results"], source, env)
    run(["git", "clone", "-q", str(source), str(dest)], dest.parent, env)
    run([sys.executable, "-m", "segmentation.tracking.remote", *configure], dest, env)
    # Re-running the set-up in a clone only adds the credentials (git-ignored): tracked files are unchanged.
    assert run(["git", "status", "--porcelain"], dest, env).stdout == ""
    run(["dvc", "pull"], dest, env)
    return dest


def test_the_token_is_nowhere(project, dagshub, monkeypatch):
    """After all of the above: not in git, not in any output, not in MLflow params or tags, not in any log."""
    root, outputs = project
    token = dagshub.token
    tracked = subprocess.run(["git", "grep", "-I", "-l", token], cwd=root, capture_output=True, text=True)
    assert tracked.stdout == ""
    leaked = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in (".git", ".dvc") and token.encode() in path.read_bytes():
            leaked.append(str(rel))
    assert leaked == [], f"token found in {leaked}"
    for proc in outputs:
        assert token not in proc.stdout + proc.stderr
    for client in (dagshub.client(monkeypatch), MlflowClient(f"sqlite:///{root / 'mlflow.db'}")):
        for exp in client.search_experiments():
            for r in client.search_runs([exp.experiment_id]):
                assert token not in json.dumps([r.data.params, r.data.tags])
    for stage in STAGES:
        assert token not in yaml.safe_dump(yaml.safe_load((root / P["dagshub"] / stage / "params.yml").read_text()))

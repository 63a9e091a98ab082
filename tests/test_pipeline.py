"""The real pipeline, end to end: `dvc repro` in a fresh copy of the project, on the example data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline_helpers import HAS_EXAMPLE, NO_EXAMPLE, copy_project, project_env, run
from segmentation.tracking import TrackingSettings

pytestmark = [pytest.mark.pipeline, pytest.mark.skipif(not HAS_EXAMPLE, reason=NO_EXAMPLE)]

STAGES = ("preprocess", "train", "evaluate")
OUTPUTS = [
    "data/processed/features.csv",
    "data/processed/matrix.csv",
    "data/segments.csv",
    "models/preprocessor.joblib",
    "models/kmeans.joblib",
    "metrics/preprocess.json",
    "metrics/train.json",
    "metrics/evaluate.json",
    "reports/elbow_scores.csv",
    "reports/cluster_profile.csv",
    "reports/figures/elbow.png",
    "reports/figures/evaluate/clusters_2d.png",
    "reports/figures/evaluate/silhouette.png",
    "reports/figures/evaluate/profile.png",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh copy, set up like a new clone (raw data restored offline), after one `dvc repro`."""
    root = copy_project(tmp_path_factory.mktemp("pipeline") / "project")
    env = project_env(root.parent)
    setup = run([sys.executable, "-m", "segmentation.bootstrap", "--skip-pth"], root, env)
    assert "restored from data/example/" in setup.stdout
    assert json.loads(run(["dvc", "status", "--json", "data/raw.dvc"], root, env).stdout) == {}
    repro = run(["dvc", "repro"], root, env)
    return root, env, repro


def mlflow_runs(root: Path):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    # The project's experiment name: its own in a project generated from the template.
    exp = client.get_experiment_by_name(TrackingSettings.resolve(root, environ={}).experiment_name)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def lock_outs(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o.get("md5") for s in lock["stages"].values() for o in s.get("outs", [])}


def test_repro_writes_every_output(project):
    root, _, repro = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in repro.stdout
    for rel in OUTPUTS:
        assert (root / rel).is_file() and (root / rel).stat().st_size > 0, rel
    assert (root / "reports/figures/elbow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    segments = (root / "data/segments.csv").read_text().splitlines()
    assert segments[0] == "ID,cluster" and len(segments) == 2212 + 1


def test_status_clean_and_second_repro_is_a_no_op(project):
    root, env, _ = project
    assert json.loads(run(["dvc", "status", "--json"], root, env).stdout) == {}
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout


def test_dvc_metrics_params_and_plots(project):
    root, env, _ = project
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    data = next(iter(metrics.values()))["data"]
    train = data["metrics/train.json"]["data"]
    assert train["k_best"] >= 2
    assert data["metrics/preprocess.json"]["data"]["rows_out"] == 2212
    assert data["metrics/evaluate.json"]["data"]["n_clusters"] == train["k_best"]
    assert json.loads(run(["dvc", "params", "diff", "--json"], root, env).stdout) == {}
    plots = run(["dvc", "plots", "show", "--json"], root, env)
    assert "reports/elbow_scores.csv" in plots.stdout
    # The HTML page works offline: Vega is inlined (template written by the set-up), no script from a CDN.
    run(["dvc", "plots", "show"], root, env)
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "<script src" not in page and "cdn.jsdelivr" not in page
    assert "vegaEmbed" in page and "Elbow search (score per k)" in page


def test_one_mlflow_run_per_stage_grouped_and_tagged(project):
    root, env, _ = project
    client, runs = mlflow_runs(root)
    assert [r.info.run_name for r in runs] == list(STAGES)
    commit = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    assert len({r.data.tags["pipeline_run_id"] for r in runs}) == 1
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.source.git.commit"] == commit
        assert r.data.tags["raw_data_md5"] == "3b624fc2bdbe29fa5fb01bdd577f78cd"
    pre, train, evaluate = runs
    assert pre.data.params["preprocess.pca_components"] == "3"
    assert pre.data.metrics["rows_out"] == 2212
    k_best = json.loads((root / "metrics/train.json").read_text())["k_best"]
    assert train.data.params["train.k_max"] == "10"
    assert train.data.metrics["k_best"] == k_best
    assert evaluate.data.metrics["silhouette"] == pytest.approx(
        json.loads((root / "metrics/evaluate.json").read_text())["silhouette"]
    )
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {"kmeans.joblib", "elbow.png", "elbow_scores.csv"} <= artifacts
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"clusters_2d.png", "silhouette.png", "profile.png", "cluster_profile.csv"} <= artifacts


def test_dagshub_logger_files_of_every_stage(project):
    root, _, _ = project
    for stage in STAGES:
        folder = root / "metrics" / "dagshub" / stage
        header, *rows = (folder / "metrics.csv").read_text().splitlines()
        assert header == "Name,Value,Timestamp,Step"
        assert rows, stage
        params = yaml.safe_load((folder / "params.yml").read_text())
        assert params and all(key.startswith(f"{stage}.") for key in params)
    train_params = yaml.safe_load((root / "metrics/dagshub/train/params.yml").read_text())
    assert train_params["train.k_max"] == 10  # real types, not strings


def test_forced_rerun_reproduces_every_result(project):
    root, env, _ = project
    before_lock = lock_outs(root)
    before = {name: (root / "metrics" / f"{name}.json").read_text() for name in STAGES}
    run(["dvc", "repro", "--force"], root, env)
    after = {name: (root / "metrics" / f"{name}.json").read_text() for name in STAGES}
    assert after == before
    after_lock = lock_outs(root)
    # Everything but the DagsHub logger files (their rows carry the logging time) is byte-identical.
    same = {p: m for p, m in before_lock.items() if not p.startswith("metrics/dagshub")}
    assert {p: after_lock[p] for p in same} == same


def test_bad_params_fail_cleanly_and_earlier_results_survive(project):
    root, env, _ = project
    lock_before = (root / "dvc.lock").read_text()
    model_before = (root / "models/kmeans.joblib").read_bytes()
    params_file = root / "params.yaml"
    good = params_file.read_text()
    params_file.write_text(good.replace("k_max: 10", "k_max: 1"))
    try:
        failed = run(["dvc", "repro"], root, env, check=False)
    finally:
        params_file.write_text(good)
    assert failed.returncode != 0
    assert "error: params.yaml: train: k_max (1) must be greater than k_min (2)" in failed.stderr
    assert "Traceback" not in failed.stderr + failed.stdout
    assert (root / "dvc.lock").read_text() == lock_before
    # Outputs are persistent and replaced only on success: the failed stage left them as they were.
    assert (root / "models/kmeans.joblib").read_bytes() == model_before
    assert json.loads(run(["dvc", "status", "--json"], root, env).stdout) == {}
    # And the cache holds them too.
    (root / "models/kmeans.joblib").unlink()
    run(["dvc", "checkout", "train"], root, env)
    assert (root / "models/kmeans.joblib").read_bytes() == model_before
    assert json.loads(run(["dvc", "status", "--json"], root, env).stdout) == {}


def test_experiment_with_a_param_override_is_tracked(project):
    root, env, _ = project
    _, before = mlflow_runs(root)
    run(["dvc", "exp", "run", "-S", "train.k_max=8", "-n", "kmax8"], root, env)
    table = run(["dvc", "exp", "show", "--json"], root, env).stdout
    assert "kmax8" in table
    _, after = mlflow_runs(root)
    new = after[len(before) :]
    assert [r.info.run_name for r in new] == ["train", "evaluate"]
    assert new[0].data.params["train.k_max"] == "8"
    assert len({r.data.tags["pipeline_run_id"] for r in new}) == 1
    assert new[0].data.tags["pipeline_run_id"] != before[0].data.tags["pipeline_run_id"]


def test_stage_cli_user_error_is_one_line_and_writes_nothing(tmp_path, repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preprocess"]["data"]["path"] = str(repo / "data" / "example" / "marketing_campaign.csv")
    params["preprocess"]["data"]["separator"] = ","
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "segmentation.preprocess", "--features", "f.csv", "--matrix", "m.csv",
         "--transformer", "t.joblib", "--metrics", "p.json", "--dagshub-dir", "dh"],
        cwd=tmp_path, env=project_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "marketing_campaign.csv: only one column found" in lines[0]
    assert "set preprocess.data.separator" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]

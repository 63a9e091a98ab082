"""The real pipeline, end to end: `dvc repro` in a fresh copy of the project, on the example data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline_helpers import (
    FIXTURE_DATA,
    FIXTURE_PARAMS,
    copy_project,
    paths,
    project_env,
    run,
    stage_names,
    stage_runs,
    use_fixture_data,
)
from segmentation.tracking.lineage import file_md5
from segmentation.tracking.settings import TrackingSettings

pytestmark = pytest.mark.pipeline

STAGES = stage_names()
P = paths()  # every path as dvc.yaml declares it
ROWS_OUT = 400  # the sample's complete, in-range rows


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh copy of the project on the tests' own params and sample data, after one `dvc repro`, committed."""
    root = copy_project(tmp_path_factory.mktemp("pipeline") / "project")
    env = project_env(root.parent)
    use_fixture_data(root, env)
    repro = run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "results"], root, env)
    return root, env, repro


def lock_outputs(root: Path) -> list[str]:
    """Every output, metric and plot file of the pipeline, as dvc.lock records them (directories expanded)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = [root / o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])]
    files = [f for out in outs for f in ([out] if out.is_file() else sorted(out.iterdir()))]
    return [f.relative_to(root).as_posix() for f in files]


def mlflow_runs(root: Path):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    # The project's experiment name: its own in a project generated from the template.
    exp = client.get_experiment_by_name(TrackingSettings.resolve(root, environ={}).experiment_name)
    return client, stage_runs(client, [exp.experiment_id], order_by=["attributes.start_time ASC"])


def pipeline_runs(client, runs: list) -> list:
    """The pipeline runs (the parents) of the experiment of ``runs``."""
    return [r for r in client.search_runs([runs[0].info.experiment_id]) if "stage" not in r.data.tags]


def git_status(root: Path, env) -> str:
    return run(["git", "status", "--porcelain"], root, env).stdout


def test_repro_writes_every_output(project):
    root, _, repro = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in repro.stdout
    outputs = lock_outputs(root)
    assert P["segments"] in outputs and P["model"] in outputs
    for rel in outputs:
        assert (root / rel).is_file() and (root / rel).stat().st_size > 0, rel
    assert (root / P["elbow_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    segments = (root / P["segments"]).read_text().splitlines()
    assert segments[0] == "ID,cluster" and len(segments) == ROWS_OUT + 1


def test_status_clean_and_second_repro_is_a_no_op(project):
    root, env, _ = project
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout
    assert git_status(root, env) == ""


def test_dvc_metrics_params_and_plots(project):
    root, env, _ = project
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    data = next(iter(metrics.values()))["data"]
    train = data[P["train_metrics"]]["data"]
    assert train["k_best"] >= 2
    assert data[P["preprocess_metrics"]]["data"]["rows_out"] == ROWS_OUT
    assert data[P["evaluate_metrics"]]["data"]["n_clusters"] == train["k_best"]
    assert json.loads(run(["dvc", "params", "diff", "--json"], root, env).stdout) == {}
    plots = run(["dvc", "plots", "show", "--json"], root, env)
    assert P["elbow_scores"] in plots.stdout
    # The HTML page works offline: Vega is inlined (template written by the set-up), no script from a CDN.
    run([sys.executable, "scripts/bootstrap.py", "--skip-pth", "--skip-data"], root, env)
    run(["dvc", "plots", "show"], root, env)
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "<script src" not in page and "cdn.jsdelivr" not in page
    assert "vegaEmbed" in page and "Elbow search (score per k)" in page


def test_one_mlflow_run_per_stage_with_its_lineage(project):
    root, env, _ = project
    client, runs = mlflow_runs(root)
    assert [r.info.run_name for r in runs] == list(STAGES)
    commit = run(["git", "rev-parse", "HEAD~1"], root, env).stdout.strip()  # the commit the pipeline ran on
    assert len({r.data.tags["pipeline_run_id"] for r in runs}) == 1
    sample_md5 = file_md5(root / FIXTURE_DATA)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.source.git.commit"] == commit
        # The data the pipeline read (the fixture sample), not the example's data/raw.dvc.
        assert r.data.tags["raw_data_md5"] == sample_md5
        assert r.data.tags["raw_data_path"] == "data/raw/marketing_sample.csv"
        # The run lasts as long as its stage: imports and work, not only the logging.
        assert r.info.end_time - r.info.start_time > 500
    pre, train, evaluate = runs
    assert pre.data.params["preprocess.pca_components"] == "3"
    assert pre.data.metrics["rows_out"] == ROWS_OUT
    k_best = json.loads((root / P["train_metrics"]).read_text())["k_best"]
    assert train.data.params["train.k_max"] == "8"
    assert train.data.metrics["k_best"] == k_best
    # Downstream runs carry every param that decided their results, with section prefixes.
    assert train.data.params["preprocess.pca_components"] == "3"
    assert evaluate.data.params["k_best"] == str(k_best)
    assert evaluate.data.params["train.n_init"] == "10" and evaluate.data.params["preprocess.scale"] == "True"
    assert set(pre.data.params) <= set(train.data.params) <= set(evaluate.data.params)
    assert evaluate.data.metrics["silhouette"] == pytest.approx(
        json.loads((root / P["evaluate_metrics"]).read_text())["silhouette"]
    )
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {Path(P[name]).name for name in ("model", "elbow_plot", "elbow_scores")} <= artifacts
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    report = Path(P["report"]).name
    assert {"clusters_2d.png", "silhouette.png", "profile.png", Path(P["profile"]).name, report} <= artifacts
    # The run holds the very page the pipeline committed (issue 10 §1).
    logged_page = Path(client.download_artifacts(evaluate.info.run_id, report, str(root.parent)))
    assert logged_page.read_bytes() == (root / P["report"]).read_bytes()
    # One pipeline run: the parent of the three (MLflow's runs list nests them), named after the commit it ran on,
    # with every stage's params and the key metrics (issue 19).
    parents = pipeline_runs(client, runs)
    assert [p.info.run_name for p in parents] == [commit[:7]]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    assert set(evaluate.data.params) <= set(parents[0].data.params)
    assert parents[0].data.metrics["k_best"] == k_best
    assert {"silhouette", "size_cluster_0", "rows_out"} <= set(parents[0].data.metrics)
    # The tables each stage read are its MLflow datasets, with DVC's md5.
    assert [(d.dataset.name, d.dataset.digest) for d in pre.inputs.dataset_inputs] == [
        ("marketing_sample.csv", sample_md5)
    ]
    matrix_md5 = file_md5(root / P["matrix"])
    assert [(d.dataset.source, d.dataset.digest) for d in train.inputs.dataset_inputs] == [(P["matrix"], matrix_md5)]
    assert {d.dataset.source for d in evaluate.inputs.dataset_inputs} == {
        P[n] for n in ("matrix", "features", "elbow_scores")
    }


def test_dagshub_logger_files_of_every_stage(project):
    root, _, _ = project
    for stage in STAGES:
        folder = root / P["dagshub"] / stage
        header, *rows = (folder / "metrics.csv").read_text().splitlines()
        assert header == "Name,Value,Timestamp,Step"
        assert rows, stage
        params = yaml.safe_load((folder / "params.yml").read_text())
        declared = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["params"]
        own = (*(f"{section}." for section in declared), "k_best")  # the stage's declared params only
        assert params and all(key.startswith(own) for key in params), params
    train_params = yaml.safe_load((root / P["dagshub"] / "train" / "params.yml").read_text())
    assert train_params["train.k_max"] == 8  # real types, not strings


def test_forced_rerun_reproduces_the_commit_byte_for_byte(project):
    root, env, _ = project
    run(["dvc", "repro", "--force"], root, env)
    # Outputs, metrics, plots, the DagsHub logger files and dvc.lock: all as committed.
    assert git_status(root, env) == ""
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}


def test_a_stale_lock_is_caught(project, tmp_path):
    root, env, _ = project
    stale = copy_project(tmp_path / "stale")
    (stale / "params.yaml").write_text((root / "params.yaml").read_text())
    (stale / "dvc.lock").write_text((root / "dvc.lock").read_text())
    # Results kept in git (evaluate reads train.json and the scores per k for the report).
    for name in ("preprocess_metrics", "train_metrics", "evaluate_metrics", "elbow_scores"):
        (stale / P[name]).write_text((root / P[name]).read_text())
    run(["git", "commit", "-q", "-am", "results"], stale, env)
    fresh = run(["make", "check-lock"], stale, env, check=False)  # make check's first part
    assert fresh.returncode == 0, fresh.stderr
    module = stale / "src/segmentation/stages/evaluate.py"
    module.write_text(module.read_text() + "\n# a change committed without re-running the pipeline\n")
    (stale / "params.yaml").write_text((stale / "params.yaml").read_text().replace("k_max: 8", "k_max: 9"))
    run(["git", "commit", "-q", "-am", "code change"], stale, env)
    found = run(["make", "check-lock"], stale, env, check=False)
    assert found.returncode != 0
    assert "error: evaluate: src/segmentation/stages/evaluate.py changed since dvc.lock" in found.stderr
    assert "error: train: params.yaml: train changed since dvc.lock" in found.stderr  # the section train reads
    assert "Traceback" not in found.stderr


def committed_results(root: Path) -> dict[str, bytes]:
    """Every output file of dvc.lock, and the lock, by content."""
    return {rel: (root / rel).read_bytes() for rel in [*lock_outputs(root), "dvc.lock"]}


def test_make_repro_puts_back_the_last_good_outputs_after_a_failed_stage(project):
    """DVC removes a stage's outputs before running it (no `persist`: the run-cache needs that): when the stage
    fails, `make repro` puts them back, byte for byte, and the error line says how to do it by hand."""
    root, env, _ = project
    before = committed_results(root)
    params_file = root / "params.yaml"
    good = params_file.read_text()
    params_file.write_text(good.replace("k_max: 8", "k_max: 1"))
    try:
        failed = run(["make", "repro"], root, env, check=False)
    finally:
        params_file.write_text(good)
    assert failed.returncode != 0
    (line,) = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: params.yaml: train: k_max (1) must not be below k_min (2)")
    assert line.endswith("come back with python -m segmentation.stages.runner --restore (make repro does it)")
    assert "Traceback" not in failed.stderr + failed.stdout
    assert "restored the last good outputs (dvc.lock): " in failed.stderr and P["model"] in failed.stderr
    assert committed_results(root) == before
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}
    assert git_status(root, env) == ""
    # And the cache holds them too.
    (root / P["model"]).unlink()
    run(["dvc", "checkout", "train"], root, env)
    assert (root / P["model"]).read_bytes() == before[P["model"]]


def test_params_already_run_come_back_from_the_run_cache(project):
    """k_max 8 -> 9 -> back to 8: train and evaluate are not run again but restored from DVC's run-cache, in
    `dvc repro` and in `dvc exp run`, and git sees nothing changed (issue 19)."""
    root, env, _ = project
    params_file = root / "params.yaml"
    good = params_file.read_text()
    try:
        params_file.write_text(good.replace("k_max: 8", "k_max: 9"))
        assert "Running stage 'train'" in run(["dvc", "repro"], root, env).stdout
        params_file.write_text(good)
        back = run(["dvc", "repro"], root, env).stdout
        for stage in ("train", "evaluate"):
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in back, back
        assert git_status(root, env) == ""
        again = run(["dvc", "exp", "run", "-S", "train.k_max=9"], root, env).stdout
        for stage in ("train", "evaluate"):
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in again, again
    finally:
        params_file.write_text(good)
        run(["dvc", "repro"], root, env)
    assert git_status(root, env) == ""


def test_experiment_with_a_param_override_is_tracked(project):
    root, env, _ = project
    _, before = mlflow_runs(root)
    run(["dvc", "exp", "run", "-S", "train.k_max=3", "-n", "kmax3"], root, env)
    table = run(["dvc", "exp", "show", "--json"], root, env).stdout
    assert "kmax3" in table
    client, after = mlflow_runs(root)
    new = after[len(before) :]
    assert [r.info.run_name for r in new] == ["train", "evaluate"]
    assert new[0].data.params["train.k_max"] == "3"  # below the base k_best (4): a new model
    assert new[1].data.params["train.k_max"] == "3"  # evaluate's lineage: the experiment's train params
    assert {r.data.tags["dvc_exp_name"] for r in new} == {"kmax3"}
    assert len({r.data.tags["pipeline_run_id"] for r in new}) == 1
    assert new[0].data.tags["pipeline_run_id"] != before[0].data.tags["pipeline_run_id"]
    # Its pipeline run is named after the experiment; preprocess, which DVC skipped, is linked to the run that made
    # its outputs.
    (parent,) = [
        p for p in pipeline_runs(client, new) if p.data.tags["pipeline_run_id"] == new[0].data.tags["pipeline_run_id"]
    ]
    assert parent.info.run_name == "kmax3"
    assert (
        parent.data.tags["skipped.preprocess"] == [r for r in before if r.info.run_name == "preprocess"][-1].info.run_id
    )
    assert "skipped.train" not in parent.data.tags


def test_stage_cli_user_error_is_one_line_and_writes_nothing(tmp_path, repo):
    params = yaml.safe_load((repo / FIXTURE_PARAMS).read_text())
    params["preprocess"]["data"]["path"] = FIXTURE_DATA.name  # inside the project: a path outside is refused
    params["preprocess"]["data"]["separator"] = ","
    project = tmp_path / "project"  # HOME (tmp_path/home) apart: the helper's libraries may fill their caches there
    project.mkdir()
    (project / FIXTURE_DATA.name).write_bytes((repo / FIXTURE_DATA).read_bytes())
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "segmentation.stages.preprocess", "--features", "f.csv", "--matrix", "m.csv",
         "--transformer", "t.joblib", "--metrics", "p.json", "--dagshub-dir", "dh"],
        cwd=project, env=project_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "marketing_sample.csv: only one column found" in lines[0]
    assert "set preprocess.data.separator" in lines[0]
    assert sorted(p.name for p in project.iterdir()) == [FIXTURE_DATA.name, "params.yaml"]  # no output

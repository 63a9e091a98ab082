"""`make sweep`: one experiment per combination of ARGS' values on DVC's own queue, JOBS at a time, the workspace
untouched, every stage's MLflow run in the local store and each experiment's results its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter

import pytest
import yaml

from pipeline_helpers import copy_project, paths, project_env, run, stage_names, use_fixture_data


def committed_project(tmp_path):
    """A project copy on the fixture data, its pipeline run and committed (a clean workspace)."""
    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    use_fixture_data(root, env)
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "results"], root, env)
    return root, env


def mlflow_runs(root) -> list:
    """Every run of the project's local MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]


def experiments(root, env) -> dict[str, dict]:
    """HEAD's experiments in ``dvc exp show --json``: name -> their params, metrics and commit (rev)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    revs = [rev for commit in shown for exp in commit.get("experiments") or [] for rev in exp["revs"]]
    return {rev["name"]: {**rev["data"], "rev": rev["rev"]} for rev in revs}


@pytest.mark.pipeline
def test_make_sweep_runs_one_experiment_per_value_two_at_a_time(tmp_path):
    root, env = committed_project(tmp_path)
    before = {r.info.run_id for r in mlflow_runs(root)}

    # -f: every stage of both experiments runs (none restored from DVC's run-cache), two at once on the local store.
    swept = run(["make", "sweep", "ARGS=-S train.k_max=8,9 -f", "JOBS=2"], root, env)

    assert run(["git", "status", "--porcelain"], root, env).stdout == ""
    found = experiments(root, env)
    assert len(found) == 2 and all(name in swept.stdout for name in found)
    dagshub_train = f"{paths(root)['dagshub']}/train/params.yml"
    k_max = {}
    for name, data in found.items():
        k_max[name] = data["params"]["params.yaml"]["data"]["train"]["k_max"]
        # Each experiment's DagsHub logger file holds its own params (not the other one's, written at the same time).
        logged = yaml.safe_load(run(["git", "show", f"{data['rev']}:{dagshub_train}"], root, env).stdout)
        assert logged["train.k_max"] == k_max[name], name
        assert all(not m.get("error") for m in data["metrics"].values()), name
    assert sorted(k_max.values()) == [8, 9]
    # One MLflow pipeline run per experiment, named after it, the parent of one run per stage (issue 19).
    everything = [r for r in mlflow_runs(root) if r.info.run_id not in before]
    new = [r for r in everything if "stage" in r.data.tags]
    parents = {r.info.run_id: r.info.run_name for r in everything if "stage" not in r.data.tags}
    assert sorted(parents.values()) == sorted(found)
    children = Counter(parents[r.data.tags["mlflow.parentRunId"]] for r in new)
    assert children == Counter(dict.fromkeys(found, 3))
    assert Counter(r.info.run_name for r in new) == Counter(stage_names(root) * 2)
    assert all(r.info.status == "FINISHED" for r in new)
    assert Counter(r.data.tags.get("dvc_exp_name") for r in new) == Counter(dict.fromkeys(found, 3))
    assert {
        r.data.tags["dvc_exp_name"]: int(r.data.params["train.k_max"]) for r in new if r.info.run_name == "train"
    } == k_max


@pytest.mark.pipeline
def test_make_sweep_takes_args_and_jobs_as_data_and_names_a_failed_experiment(tmp_path):
    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    hostile = [
        ["ARGS=-n '$(touch pwned)' -S train.k_max=4,5"],  # DVC refuses the name: nothing queued
        ["ARGS=-S train.k_max=4 `touch pwned`"],  # a target DVC does not know
        ["ARGS=-S train.k_max=4", "JOBS=$(touch pwned)"],  # not a number: refused before anything is queued
    ]
    for args in hostile:
        proc = run(["make", "sweep", *args], root, env, check=False)
        assert proc.returncode != 0, args
    assert not (root / "pwned").exists()
    status = run(["dvc", "queue", "status"], root, env).stdout
    assert "Queued" not in status and "Running" not in status and "Success" not in status
    assert experiments(root, env) == {}
    # An experiment that fails (this copy has no data: preprocess cannot run) is named, and make sweep fails.
    failed = run(["make", "sweep", "ARGS=-S train.k_max=4 -n nodata"], root, env, check=False)
    assert failed.returncode != 0 and re.search(r"nodata .*Failed", failed.stderr), failed.stderr


@pytest.mark.pipeline
def test_an_interrupted_sweep_leaves_its_experiments_to_the_queue(tmp_path):
    root, env = committed_project(tmp_path)
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        # Ctrl-C as a terminal sends it: SIGINT to make's process group (default action, even where CI ignores it).
        sweep = subprocess.Popen(
            ["make", "sweep", "ARGS=-S train.k_max=6,7 -f"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "Started" not in log.read_text() and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        os.killpg(sweep.pid, signal.SIGINT)
        assert sweep.wait(timeout=30) != 0
    assert "interrupted: the queue goes on (dvc queue status)" in log.read_text()
    # The queue's workers run on: dvc queue status shows the sweep's tasks; they finish (no worker left behind).
    assert re.search(r" (Queued|Running) *$", run(["dvc", "queue", "status"], root, env).stdout, flags=re.M)
    deadline = time.monotonic() + 240
    while re.search(r" (Queued|Running) *$", status := run(["dvc", "queue", "status"], root, env).stdout, re.M):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert len(re.findall(r" Success *$", status, flags=re.M)) == 2, status

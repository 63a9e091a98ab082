"""Your pipeline as you configured it: your params.yaml and your data, run for real in a temporary copy.

Every other test brings its own params and data (tests/fixtures/). This one checks only what holds for any data:
the stages succeed, every output exists, and every kept row gets a segment.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from pipeline_helpers import REPO, copy_project, paths, project_env, run


def test_the_pipeline_runs_on_your_params_and_data(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    data_path = params["preprocess"]["data"]["path"]
    if not (REPO / data_path).is_file():
        pytest.skip(f"{data_path} (preprocess.data.path) is not in the workspace: run `make setup` or `dvc pull`")
    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    if not (root / data_path).is_file():  # DVC-tracked data is git-ignored: bring it along
        (root / data_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / data_path, root / data_path)

    run(["dvc", "repro"], root, env)

    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for stage, entry in lock.items():
        for out in entry.get("outs", []):
            assert (root / out["path"]).exists(), f"stage {stage}: output {out['path']} missing"
    p = paths(root)
    kept = pd.read_parquet(root / p["features"])
    segments = pd.read_csv(root / p["segments"])
    id_column = kept.columns[0]
    assert list(segments.columns) == [id_column, "cluster"]
    assert segments[id_column].equals(kept[id_column])  # every kept row, in order, exactly once
    assert json.loads((root / p["preprocess_metrics"]).read_text())["rows_out"] == len(segments)
    k_best = json.loads((root / p["train_metrics"]).read_text())["k_best"]
    assert set(segments["cluster"]) <= set(range(k_best))
    assert json.loads((root / p["evaluate_metrics"]).read_text())["n_clusters"] == k_best

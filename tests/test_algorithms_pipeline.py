"""The real pipeline with each ``train.algorithm``: `dvc repro` in a copy of the project on the tests' 428-row sample,
then `make score`'s command on the same rows."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import yaml

from pipeline_helpers import FIXTURE_DATA, copy_project, paths, project_env, run, use_fixture_data
from segmentation import algorithms

P = paths()  # every path as dvc.yaml declares it

pytestmark = pytest.mark.pipeline

ROWS_OUT = 400  # the sample's complete, in-range rows
# HDBSCAN on 400 rows: smaller dense groups than the example's defaults (made for 2,212 rows) look for.
OVERRIDES = {"hdbscan": {"hdbscan": {"min_cluster_size": 10, "min_samples": 5}}}
RULES = {"gaussian_mixture": {"min_bic"}, "hdbscan": {"density"}}
KMEANS_FAMILY = {"kmeans", "minibatch_kmeans", "bisecting_kmeans"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One copy of the project on the tests' params and sample: each algorithm re-runs train and evaluate in it."""
    root = copy_project(tmp_path_factory.mktemp("algorithms") / "project")
    env = project_env(root.parent)
    use_fixture_data(root, env)
    return root, env


@pytest.mark.parametrize("algorithm", list(algorithms.REGISTRY))
def test_the_pipeline_and_scoring_with_each_algorithm(project, algorithm):
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"] = {**params["train"], "algorithm": algorithm, **OVERRIDES.get(algorithm, {})}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], root, env)

    train = json.loads((root / P["train_metrics"]).read_text())
    evaluate = json.loads((root / P["evaluate_metrics"]).read_text())
    k = train["k_best"]
    assert evaluate["n_clusters"] == k >= 2
    assert train["k_rule"] in RULES.get(algorithm, {"elbow", "fallback_max_curvature"})
    assert ("inertia" in train) == ("inertia" in evaluate) == (algorithm in KMEANS_FAMILY)
    segments = pd.read_csv(root / P["segments"])
    assert len(segments) == ROWS_OUT
    noise = segments["cluster"] == algorithms.NOISE
    assert set(segments.loc[~noise, "cluster"]) == set(range(k))
    if algorithm == "hdbscan":
        assert train["noise_share"] == evaluate["noise_share"] == pytest.approx(noise.mean())
        assert evaluate.get("size_noise", 0) == noise.sum()
    else:
        assert not noise.any() and "noise_share" not in evaluate
    profile = pd.read_csv(root / P["profile"])
    assert sorted(profile["cluster"]) == sorted(segments["cluster"].unique())
    assert profile["name"].is_unique
    page = (root / P["report"]).read_text()
    assert algorithms.REGISTRY[algorithm].label in page

    # New customers: the segmenter's predict (the nearest centroid for agglomerative and HDBSCAN), never noise.
    out = root / "scores" / f"{algorithm}.csv"
    cmd = [sys.executable, "-m", "segmentation.tools.score", "--input", str(FIXTURE_DATA), "--output", str(out)]
    run(cmd, root, env)
    scored = pd.read_csv(out).merge(segments, on="ID")
    assert len(scored) == ROWS_OUT
    assert scored["segment"].between(0, k - 1).all() and scored["segment_name"].notna().all()
    if algorithms.REGISTRY[algorithm].predicts:
        assert (scored["segment"] == scored["cluster"]).all()  # exactly data/segments.csv
    else:  # the rule reproduces most of the clusterer's own assignment
        clustered = scored[scored["cluster"] != algorithms.NOISE]
        assert (clustered["segment"] == clustered["cluster"]).mean() >= 0.8

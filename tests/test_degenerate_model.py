"""Degenerate matrices, parameters and intermediate files for train and evaluate (issue 8 §3).

Errors are one line naming the file or parameter and the fix; warnings are one line and are kept with the results
(metrics JSON and MLflow tags). The train and evaluate stage CLIs run for real in a temporary directory.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import joblib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from pipeline_helpers import project_env, stage_runs, the_error
from pipeline_helpers import run_stage_cli as stage
from segmentation import algorithms
from segmentation.config import EvaluateParams, TrainParams, parse_section
from segmentation.core.plotting import FONT
from segmentation.core.quality import check_model, evaluate
from segmentation.core.search import check_k_range, elbow_search, small_cluster_warning, small_sizes
from segmentation.errors import UserError
from segmentation.files import load_model
from segmentation.stages.evaluate import read_train_metrics

TRAIN = {"k_min": 2, "k_max": 4, "metric": "distortion", "selection": "elbow", "n_init": 4, "max_iter": 300,
         "random_state": 0, "n_threads": 1, "min_cluster_size": 10}  # fmt: skip
PREPROCESS = {"data": {"path": "raw.csv", "separator": ","}, "recipe": None, "features": ["x", "y"]}
EVALUATE = {"silhouette_sample_size": 5000, "random_state": 0}
TRAIN_OUT = ["--model", "out/k.joblib", "--elbow-plot", "out/e.png", "--elbow-scores", "out/s.csv",
             "--metrics", "out/t.json", "--dagshub-dir", "out/dh"]  # fmt: skip
EVALUATE_OUT = ["--segments", "out/seg.csv", "--profile", "out/p.csv", "--metrics", "out/e.json",
                "--plots-dir", "out/plots", "--dagshub-dir", "out/dh"]  # fmt: skip


def train_params(**override) -> TrainParams:
    return TrainParams(**{**TRAIN, **override})


def matrix_of(X: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"ID": np.arange(1000, 1000 + len(X)), "x": X[:, 0], "y": X[:, 1]})


def uneven_blobs() -> np.ndarray:
    """Three well separated groups of 100, 100 and 20 rows."""
    X, _ = make_blobs(n_samples=[100, 100, 20], centers=[[0, 0], [10, 0], [0, 10]], cluster_std=0.5, random_state=0)
    return X


# --- train: the rows must hold k_max clusters ------------------------------------------------------------------------


def test_identical_rows_are_an_error_not_an_arbitrary_k(tmp_path):
    # Before: an all-zero distortion curve and "k_best = 3".
    matrix_of(np.tile([[1.5, -2.0]], (60, 1))).to_csv(tmp_path / "m.csv", index=False)
    proc = stage(tmp_path, "train", ["--matrix", "m.csv", *TRAIN_OUT], train=TRAIN)
    assert the_error(proc, tmp_path) == (
        "error: m.csv: only 1 distinct row(s) among 60 (identical customers?), fewer than train.k_max (4); "
        "nothing to cluster: check the data"
    )


def test_blank_in_the_matrix_names_the_file_the_line_and_the_fix(tmp_path):
    matrix = matrix_of(uneven_blobs())
    matrix.loc[3, "y"] = np.nan
    matrix.to_csv(tmp_path / "m.csv", index=False)
    proc = stage(tmp_path, "train", ["--matrix", "m.csv", *TRAIN_OUT], train=TRAIN)
    assert the_error(proc, tmp_path) == (
        "error: m.csv: column y has a blank on line 5 (the model matrix must be finite numbers); "
        "rebuild it: dvc repro -f -s preprocess"
    )


def test_train_prints_progress_per_k_and_keeps_a_small_cluster_warning(tmp_path):
    matrix_of(uneven_blobs()).to_csv(tmp_path / "m.csv", index=False)
    proc = stage(tmp_path, "train", ["--matrix", "m.csv", *TRAIN_OUT], train={**TRAIN, "min_cluster_size": 30})
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.strip().splitlines()
    progress = [line for line in err if line.startswith("train: k=")]
    assert [re.fullmatch(r"train: k=(\d+)/4 fitted \(\d+\.\d s\)", line)[1] for line in progress] == ["2", "3", "4"]
    warning = "k=3 has 1 cluster(s) below train.min_cluster_size (30): cluster 2: 20 rows; check the data or lower"
    assert f"warning: train: {warning} train.k_max" in err
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr  # no Python warning or traceback
    metrics = json.loads((tmp_path / "out/t.json").read_text())
    assert metrics["k_best"] == 3
    assert (metrics["clusters_below_min_size"], metrics["smallest_cluster_size"]) == (1, 20)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = stage_runs(client, [e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["warning_small_clusters"] == f"{warning} train.k_max"
    assert run.data.metrics["clusters_below_min_size"] == 1


def test_k_range_rules():
    rows = np.tile(np.arange(4.0).reshape(-1, 1), (1, 2))  # 4 distinct rows...
    X = np.repeat(rows, 15, axis=0)  # ...60 rows in all
    with pytest.raises(UserError) as err:
        check_k_range(X, train_params(k_max=5), "m.csv")
    assert str(err.value) == (
        "m.csv: only 4 distinct row(s) among 60 (identical customers?), fewer than train.k_max (5); "
        "lower train.k_max to at most 4 or check the data"
    )
    check_k_range(X, train_params(k_max=4), "m.csv")  # as many distinct rows as k_max: fine
    # k_max <= rows / min_cluster_size: 60 / 10 = 6.
    check_k_range(np.random.default_rng(0).normal(size=(60, 2)), train_params(k_max=6), "m.csv")
    with pytest.raises(UserError) as err:
        check_k_range(np.random.default_rng(0).normal(size=(60, 2)), train_params(k_max=7), "m.csv")
    assert str(err.value) == (
        "params.yaml: train.k_max (7) is more than 60 rows allow: at most rows / train.min_cluster_size (10) = 6; "
        "lower k_max (or min_cluster_size)"
    )


def kelbow_visualizer_class():
    """yellowbrick's ``KElbowVisualizer`` (a dev dependency: the stages do not use it), imported quietly, the bundled
    font kept afterwards."""
    import warnings

    with warnings.catch_warnings():
        # yellowbrick 1.5 imports distutils and passes ListedColormap(N=...): deprecations that are not ours.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        from yellowbrick.cluster import KElbowVisualizer
    plt.rcParams["font.sans-serif"] = [FONT]  # yellowbrick's style import resets the font list
    return KElbowVisualizer


@pytest.mark.parametrize("metric", ["distortion", "silhouette", "calinski_harabasz"])
def test_the_search_gives_yellowbricks_scores_and_knee_with_a_line_per_k(capsys, metric):
    """The stage no longer imports yellowbrick (~2 s): its scores and knee must still be KElbowVisualizer's."""
    X, _ = make_blobs(n_samples=300, centers=4, cluster_std=0.8, random_state=5)
    params = train_params(k_max=7, metric=metric)
    viz = kelbow_visualizer_class()(
        algorithms.make(params, 8), k=(2, 8), metric=metric, timings=False, force_model=True
    )
    viz.fit(X)
    result = elbow_search(X, params)
    assert result.scores == [float(s) for s in viz.k_scores_] and result.k_best == viz.elbow_value_
    err = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in err if line.startswith("train: k=")] == [f"k={k}/7" for k in range(2, 8)]


def test_small_cluster_rule_names_singletons():
    labels = np.array([0] * 40 + [1] * 3 + [2])
    small = small_sizes(np.bincount(labels, minlength=4), min_size=5)  # cluster 3 is empty (size 0)
    assert small == {1: 3, 2: 1, 3: 0}
    text = small_cluster_warning({2: 1}, 3, 5)
    assert "cluster 2: 1 row (singletons are usually outliers: see preprocess.outliers)" in text
    assert small_sizes(np.bincount(labels, minlength=3), min_size=1) == {}


# --- params that pass validation never crash later ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "override", "expected"),
    [
        ("train", {"random_state": -1}, "train.random_state: Input should be greater than or equal to 0 (got -1)"),
        ("train", {"random_state": 2**32}, "train.random_state: Input should be less than or equal to 4294967295"),
        ("train", {"min_cluster_size": 1}, "train.min_cluster_size: Input should be greater than or equal to 2"),
        ("evaluate", {"random_state": -3}, "evaluate.random_state: Input should be greater than or equal to 0"),
    ],
)
def test_seeds_and_cluster_size_are_validated(section, override, expected):
    base = TRAIN if section == "train" else EVALUATE
    with pytest.raises(UserError, match=re.escape(expected)):
        parse_section(section, {**base, **override})


def test_silhouette_sample_size_must_exceed_the_number_of_clusters():
    X = uneven_blobs()
    model = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)
    matrix = matrix_of(X)
    features = matrix.rename(columns={"x": "a", "y": "b"})
    with pytest.raises(UserError) as err:
        evaluate(matrix, features, model, "ID", EvaluateParams(silhouette_sample_size=3, random_state=0))
    assert str(err.value) == (
        "params.yaml: evaluate.silhouette_sample_size (3) must be greater than the number of clusters (3); raise it"
    )
    result = evaluate(matrix, features, model, "ID", EvaluateParams(silhouette_sample_size=50, random_state=1))
    assert result.metrics["silhouette_sample_rows"] == 50


# --- evaluate: a bad model file is one line with the fix ------------------------------------------------------------


@pytest.fixture
def evaluate_dir(tmp_path):
    """matrix, features and train metrics as the earlier stages write them; the model is up to each test."""
    X = uneven_blobs()
    matrix = matrix_of(X)
    matrix.to_csv(tmp_path / "m.csv", index=False)
    matrix.rename(columns={"x": "a", "y": "b"}).to_csv(tmp_path / "f.csv", index=False)
    good = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)
    (tmp_path / "t.json").write_text(json.dumps({"k_best": 3, "inertia": float(good.inertia_)}))
    return tmp_path, X, good


def run_evaluate(tmp_path: Path) -> subprocess.CompletedProcess:
    args = ["--matrix", "m.csv", "--features", "f.csv", "--model", "k.joblib", "--train-metrics", "t.json"]
    return stage(tmp_path, "evaluate", [*args, *EVALUATE_OUT], preprocess=PREPROCESS, evaluate=EVALUATE)


def test_corrupt_model_file(evaluate_dir):
    tmp_path, _, _ = evaluate_dir
    (tmp_path / "k.joblib").write_bytes(np.random.default_rng(3).bytes(4096))
    error = the_error(run_evaluate(tmp_path), tmp_path)
    expected = r"error: k.joblib: cannot be read as a model file \(\w+\); rebuild it: dvc repro -f -s train"
    assert re.fullmatch(expected, error)


def test_foreign_pickle(evaluate_dir):
    tmp_path, _, _ = evaluate_dir
    joblib.dump({"n_clusters": 3}, tmp_path / "k.joblib")
    assert the_error(run_evaluate(tmp_path), tmp_path) == (
        "error: k.joblib: holds a dict, not a fitted clustering model; rebuild it: dvc repro -f -s train"
    )


def test_model_with_another_k_than_train_metrics(evaluate_dir):
    tmp_path, X, _ = evaluate_dir
    joblib.dump(KMeans(n_clusters=4, n_init=2, random_state=0).fit(X), tmp_path / "k.joblib")
    assert the_error(run_evaluate(tmp_path), tmp_path) == (
        "error: k.joblib: has 4 clusters, but t.json says k_best = 3; rebuild it: dvc repro -f -s train"
    )


def test_model_fitted_on_other_features_of_the_same_width(evaluate_dir):
    tmp_path, X, _ = evaluate_dir
    other = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X[:, ::-1] * 3)  # same shape, other columns
    joblib.dump(other, tmp_path / "k.joblib")
    (tmp_path / "t.json").write_text(json.dumps({"k_best": 3, "inertia": float(other.inertia_)}))  # consistent
    error = the_error(run_evaluate(tmp_path), tmp_path)
    assert re.fullmatch(
        r"error: k.joblib: was not fitted on m.csv \(inertia [\d.e+]+ on it, [\d.e+]+ when fitted\); "
        r"rebuild it: dvc repro -f -s train",
        error,
    )


def test_check_model_rules(evaluate_dir, tmp_path_factory):
    tmp_path, X, good = evaluate_dir
    metrics = read_train_metrics(tmp_path / "t.json")
    check_model(good, X, "k.joblib", "m.csv", metrics, "t.json")  # the right model passes
    wide = KMeans(n_clusters=3, n_init=1, random_state=0).fit(np.column_stack([X, X[:, 0]]))
    with pytest.raises(UserError, match=r"^k.joblib: fitted on 3 column\(s\), but m.csv has 2; rebuild it: dvc"):
        check_model(wide, X, "k.joblib", "m.csv", metrics, "t.json")
    with pytest.raises(UserError, match=r"^k.joblib: holds an unfitted KMeans, not a fitted clustering model"):
        check_model(KMeans(3), X, "k.joblib", "m.csv", metrics, "t.json")
    with pytest.raises(UserError, match=r"its inertia \([\d.]+\) is not the one t.json records \(1.0\)"):
        check_model(good, X, "k.joblib", "m.csv", {"k_best": 3, "inertia": 1.0}, "t.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match=r"bad.json: not the JSON the train stage writes; rebuild it: dvc repro"):
        read_train_metrics(tmp_path / "bad.json")
    assert read_train_metrics(tmp_path / "absent.json") is None
    (tmp_path / "dir.joblib").mkdir()
    with pytest.raises(UserError) as err:
        load_model(tmp_path / "dir.joblib", stage="train")
    assert str(err.value) == (
        f"{tmp_path / 'dir.joblib'}: is a directory, not a file written by the pipeline; "
        "remove it, then: dvc repro -f -s train"
    )


# --- train: a fit whose memory grows with rows² is checked against what the process may use --------------------------


def train_under_limit(tmp_path: Path, rows: int, limit: int) -> subprocess.CompletedProcess:
    """The train stage CLI on ``rows`` rows of agglomerative (all fitted), address space capped at ``limit``."""
    X, _ = make_blobs(n_samples=rows, centers=3, n_features=2, random_state=0)
    matrix_of(X).to_csv(tmp_path / "m.csv", index=False)
    train = {**TRAIN, "algorithm": "agglomerative", "agglomerative": {"fit_sample_size": rows}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    return subprocess.run(
        [sys.executable, "-m", "segmentation.stages.train", "--matrix", "m.csv", *TRAIN_OUT],
        cwd=tmp_path, env=project_env(tmp_path), capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )  # fmt: skip


def test_quadratic_fit_beyond_the_memory_limit_is_refused_before_it_starts(tmp_path):
    # Before: numpy's MemoryError traceback from inside scikit-learn. 30,000 rows need ~8 x 30,000² bytes = 6.7 GiB.
    error = the_error(train_under_limit(tmp_path, 30_000, 3 << 30), tmp_path)
    assert re.fullmatch(
        r"error: train: agglomerative on 30,000 rows needs ~6\.7 GiB \(1 fit\(s\) at a time; it grows with rows²\) "
        r"but [0-2]\.\d GiB is free; lower train\.agglomerative\.fit_sample_size",
        error,
    ), error
    assert train_under_limit(tmp_path, 600, 3 << 30).returncode == 0  # 3 MB: fits under the same limit

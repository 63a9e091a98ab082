from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from pipeline_helpers import run_stage_cli
from segmentation.config import EvaluateParams
from segmentation.core.figures import profile_plot, projection_plot, silhouette_plot
from segmentation.core.quality import evaluate
from segmentation.errors import UserError


@pytest.fixture(scope="module")
def fitted():
    X, _ = make_blobs(n_samples=300, centers=3, cluster_std=0.5, random_state=1)
    ids = np.arange(1000, 1300)
    matrix = pd.DataFrame({"ID": ids, "a": X[:, 0], "b": X[:, 1]})
    features = pd.DataFrame({"ID": ids, "Income": X[:, 0] * 1000 + 50000, "Age": X[:, 1] + 40})
    model = KMeans(n_clusters=3, n_init=4, random_state=0).fit(X)
    return matrix, features, model


def test_metrics_profile_and_segments(fitted):
    matrix, features, model = fitted
    result = evaluate(matrix, features, model, "ID", EvaluateParams(silhouette_sample_size=5000, random_state=0))
    m = result.metrics
    assert m["n_clusters"] == 3
    assert m["silhouette"] > 0.7  # well separated blobs
    assert m["silhouette_sample_rows"] == 300
    assert m["davies_bouldin"] < 0.5
    assert sum(m[f"size_cluster_{i}"] for i in range(3)) == 300
    assert result.segments.columns.tolist() == ["ID", "cluster"]
    assert result.segments["ID"].tolist() == matrix["ID"].tolist()
    profile = result.profile
    assert profile.columns.tolist() == ["cluster", "size", "share", "Income", "Age"]
    assert profile["size"].sum() == 300
    assert profile["share"].sum() == pytest.approx(1.0)
    # Profiles are of the unscaled features.
    assert profile["Income"].between(30000, 70000).all()


def test_silhouette_is_sampled_above_the_size(fitted):
    matrix, features, model = fitted
    params = EvaluateParams(silhouette_sample_size=100, random_state=7)
    a = evaluate(matrix, features, model, "ID", params)
    b = evaluate(matrix, features, model, "ID", params)
    assert a.metrics["silhouette_sample_rows"] == 100
    assert a.metrics["silhouette"] == b.metrics["silhouette"]  # seeded sample


def test_mismatched_inputs_are_an_error(fitted):
    matrix, features, model = fitted
    with pytest.raises(UserError, match="different customers"):
        evaluate(
            matrix,
            features.iloc[::-1].reset_index(drop=True),
            model,
            "ID",
            EvaluateParams(silhouette_sample_size=5000, random_state=0),
        )


def test_plots_have_titles_and_labels(fitted):
    matrix, features, model = fitted
    result = evaluate(matrix, features, model, "ID", EvaluateParams(silhouette_sample_size=5000, random_state=0))
    labels = result.segments["cluster"].to_numpy()
    for fig in (
        projection_plot(matrix, labels, "ID", sample_size=20000, random_state=0),
        silhouette_plot(result.silhouette_values, result.silhouette_labels),
        profile_plot(result.profile),
    ):
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_the_projection_plot_draws_a_seeded_sample_and_keeps_the_full_sizes(fitted):
    matrix, _, model = fitted
    labels = model.predict(matrix[["a", "b"]].to_numpy())
    fig = projection_plot(matrix, labels, "ID", sample_size=100, random_state=0)
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 100
    assert "a sample of 100 of 300" in ax.get_title()
    sizes = np.bincount(labels)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"cluster {k} ({n})" for k, n in enumerate(sizes)]
    again = projection_plot(matrix, labels, "ID", sample_size=100, random_state=0).axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), again.collections[0].get_offsets())


def test_saved_figures_are_the_bytes_of_a_tight_savefig(fitted, tmp_path):
    """StageOutputs.save_figure measures the tight box without drawing the figure first: the PNG must be the one
    matplotlib's own bbox_inches="tight" writes, for every figure the pipeline saves."""
    from segmentation.config import TrainParams
    from segmentation.core.plotting import FIGURE_DPI
    from segmentation.core.search import elbow_search
    from segmentation.files import StageOutputs

    matrix, features, model = fitted
    result = evaluate(matrix, features, model, "ID", EvaluateParams(silhouette_sample_size=5000, random_state=0))
    labels = result.segments["cluster"].to_numpy()
    X = matrix[["a", "b"]].to_numpy()
    search = TrainParams(k_min=2, k_max=6, n_init=2, random_state=0, n_threads=1, min_cluster_size=2)
    figures = {
        "projection": lambda: projection_plot(matrix, labels, "ID", sample_size=20000, random_state=0),
        "silhouette": lambda: silhouette_plot(result.silhouette_values, result.silhouette_labels),
        "profile": lambda: profile_plot(result.profile),
        "elbow": lambda: elbow_search(X, search).figure,
    }
    with StageOutputs() as out:
        for name, make in figures.items():
            out.save_figure(tmp_path / f"{name}.png", make(), dpi=FIGURE_DPI)
        out.commit()
    for name, make in figures.items():
        tight = tmp_path / f"{name}-tight.png"
        make().savefig(tight, format="png", dpi=FIGURE_DPI, bbox_inches="tight", metadata={"Software": None})
        assert (tmp_path / f"{name}.png").read_bytes() == tight.read_bytes(), name


def test_the_stage_reports_each_segment_s_stability_and_warns_below_0_6(tmp_path):
    """Uniform noise in 5 dimensions at k = 6: segments that are not real (NOTES.md "Cluster stability")."""
    X = np.random.default_rng(0).uniform(size=(2000, 5))
    columns = list("abcde")
    matrix = pd.DataFrame({"ID": np.arange(len(X)), **dict(zip(columns, X.T, strict=True))})
    matrix.to_csv(tmp_path / "m.csv", index=False)
    matrix.to_csv(tmp_path / "f.csv", index=False)
    model = KMeans(n_clusters=6, n_init=4, random_state=0).fit(X)
    joblib.dump(model, tmp_path / "k.joblib")
    (tmp_path / "t.json").write_text(json.dumps({"k_best": 6, "inertia": float(model.inertia_)}))
    train = {"k_min": 2, "k_max": 8, "n_init": 4, "random_state": 0, "n_threads": 1}
    args = ["--matrix", "m.csv", "--features", "f.csv", "--model", "k.joblib", "--train-metrics", "t.json",
            "--segments", "out/seg.csv", "--profile", "out/p.csv", "--metrics", "out/e.json", "--plots-dir", "out/p",
            "--dagshub-dir", "out/dh", "--report", "out/r.html"]  # fmt: skip
    preprocess = {"data": {"path": "raw.csv", "separator": ","}, "recipe": None, "features": columns}
    labels = {"a": "Spend (€)", "Gone (€)": "a column not in the data: ignored"}  # keys MLflow refuses as params
    for resamples in (5, 0):
        evaluate_params = {"silhouette_sample_size": 500, "random_state": 0, "stability_resamples": resamples,
                           "labels": labels}  # fmt: skip
        proc = run_stage_cli(tmp_path, "evaluate", args, preprocess=preprocess, train=train, evaluate=evaluate_params)
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads((tmp_path / "out" / "e.json").read_text())
        stability = [metrics[f"stability_cluster_{c}"] for c in range(6) if f"stability_cluster_{c}" in metrics]
        warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: evaluate: segment")]
        if resamples:
            assert len(stability) == 6 and min(stability) < 0.6
            assert len(warnings) == sum(v < 0.6 for v in stability)
            assert all("not a real segment" in line for line in warnings)
        else:  # off: no stability, no warning
            assert stability == [] and warnings == []
    assert "<th>Spend (€)</th>" in (tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert "labels" not in (tmp_path / "out" / "dh" / "params.yml").read_text() and "warning: MLflow" not in proc.stderr


def test_the_stage_warns_when_k_best_is_the_largest_k_searched(tmp_path):
    """Four blobs searched up to k = 3: the model's k is the edge; the report shows the warning and the stability."""
    X, _ = make_blobs(n_samples=400, centers=4, cluster_std=0.5, random_state=3)
    matrix = pd.DataFrame({"ID": np.arange(len(X)), "a": X[:, 0], "b": X[:, 1]})
    matrix.to_csv(tmp_path / "m.csv", index=False)
    matrix.to_csv(tmp_path / "f.csv", index=False)
    model = KMeans(n_clusters=3, n_init=4, random_state=0).fit(X)
    joblib.dump(model, tmp_path / "k.joblib")
    (tmp_path / "t.json").write_text(json.dumps({"k_best": 3, "inertia": float(model.inertia_), "k_rule": "elbow"}))
    pd.DataFrame({"k": [2, 3], "score": [900.0, 400.0], "metric": "distortion"}).to_csv(tmp_path / "e.csv")
    args = ["--matrix", "m.csv", "--features", "f.csv", "--model", "k.joblib", "--train-metrics", "t.json",
            "--segments", "out/seg.csv", "--profile", "out/p.csv", "--metrics", "out/e.json", "--plots-dir", "out/p",
            "--dagshub-dir", "out/dh", "--elbow-scores", "e.csv", "--report", "out/r.html"]  # fmt: skip
    preprocess = {"data": {"path": "raw.csv", "separator": ","}, "recipe": None, "features": ["a", "b"]}
    evaluate_params = {"silhouette_sample_size": 300, "random_state": 0, "stability_resamples": 0}
    train = {"k_min": 2, "k_max": 3, "n_init": 4, "random_state": 0, "n_threads": 1}
    proc = run_stage_cli(tmp_path, "evaluate", args, preprocess=preprocess, train=train, evaluate=evaluate_params)
    assert proc.returncode == 0, proc.stderr
    warning = "k_best = 3 is the largest k searched (train.k_max): the best k may lie beyond it; widen train.k_max"
    assert f"warning: evaluate: {warning} (see out/r.html)" in proc.stderr.splitlines()
    page = (tmp_path / "out" / "r.html").read_text()
    assert f"<b>Warning:</b> {warning}." in page and "<th>mean stability</th>" in page
    assert not any("stability" in key for key in json.loads((tmp_path / "out" / "e.json").read_text()))  # report only

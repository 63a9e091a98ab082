"""The clustering algorithms of ``train.algorithm``: the registry, the k each search finds on data of known
structure, HDBSCAN's clusters and noise, and the nearest-centroid rule for the algorithms without ``predict``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from segmentation import algorithms
from segmentation.algorithms import NOISE, CentroidAssigner
from segmentation.config import EvaluateParams, TrainParams, parse_section
from segmentation.core import report
from segmentation.core.quality import check_model, evaluate
from segmentation.core.search import search_sample, train
from segmentation.errors import UserError
from segmentation.tools.score import segment_names

TRUE_K = 5
K_SEARCHING = [name for name in algorithms.REGISTRY if name != "hdbscan"]


def params(algorithm: str, **override) -> TrainParams:
    base = {"algorithm": algorithm, "k_min": 2, "k_max": 8, "n_init": 4, "random_state": 0, "n_threads": 1}
    return TrainParams(**{**base, **override})


@pytest.fixture(scope="module")
def blobs() -> tuple[pd.DataFrame, np.ndarray]:
    """Five well-separated blobs in 3 dimensions (centres 12 apart, spread 1): the true k is 5."""
    centres = np.array([[0, 0, 0], [12, 0, 0], [0, 12, 0], [0, 0, 12], [12, 12, 12]], dtype=float)
    X, y = make_blobs(n_samples=500, centers=centres, cluster_std=1.0, random_state=7)
    return pd.DataFrame({"ID": np.arange(len(X)), **{f"x{i}": X[:, i] for i in range(3)}}), y


def test_the_train_params_have_a_sub_section_per_registry_entry():
    assert list(TrainParams.model_fields)[-len(algorithms.REGISTRY) :] == list(algorithms.REGISTRY)
    assert TrainParams.model_fields["algorithm"].get_default(call_default_factory=True) == algorithms.DEFAULT
    for name in algorithms.REGISTRY:
        p = params(name)
        assert type(algorithms.make(p, 3)).__name__ == algorithms.REGISTRY[name].estimator
        assert p.algorithm_params is getattr(p, name)


def test_an_unknown_algorithm_is_one_line_listing_the_valid_ones():
    raw = params("kmeans").model_dump(mode="json") | {"algorithm": "dbscan"}
    with pytest.raises(UserError) as err:
        parse_section("train", raw)
    assert str(err.value) == (
        f"params.yaml: train.algorithm: unknown algorithm 'dbscan'; one of: {', '.join(algorithms.REGISTRY)} "
        "(got 'dbscan')"
    )
    assert list(algorithms.REGISTRY)[:6] == [
        "kmeans", "minibatch_kmeans", "bisecting_kmeans", "gaussian_mixture", "agglomerative", "hdbscan"
    ]  # fmt: skip


def test_algorithm_params_are_validated_like_the_others():
    raw = params("kmeans").model_dump(mode="json")
    for sub, bad, expected in [
        ("gaussian_mixture", {"criterion": "dic"}, "train.gaussian_mixture.criterion: Input should be 'bic' or 'aic'"),
        ("hdbscan", {"min_cluster_size": 1}, "train.hdbscan.min_cluster_size: Input should be greater than or equal"),
        ("agglomerative", {"linkage": "ward", "n": 3}, "train.agglomerative.n: unknown parameter"),
    ]:
        with pytest.raises(UserError, match=expected):
            parse_section("train", {**raw, sub: bad})
    with pytest.raises(UserError, match="hdbscan finds the number of clusters itself"):
        parse_section("train", {**raw, "algorithm": "hdbscan", "k": 4})


@pytest.mark.parametrize("algorithm", K_SEARCHING)
def test_each_k_search_finds_the_true_k(blobs, algorithm):
    matrix, y = blobs
    elbow, model = train(matrix, "ID", params(algorithm))
    assert elbow.k_best == TRUE_K, (elbow.rule, elbow.scores)
    expected_rule = "min_bic" if algorithm == "gaussian_mixture" else "elbow"
    assert elbow.rule == expected_rule
    X = matrix.drop(columns="ID").to_numpy()
    labels = algorithms.training_labels(model, X)
    assert adjusted_rand_score(y, labels) > 0.99
    assert algorithms.n_clusters(model) == TRUE_K
    assert hasattr(model, "predict")  # the segmenter always has one


def test_the_gaussian_mixture_by_aic_too(blobs):
    matrix, _ = blobs
    p = params("gaussian_mixture").model_copy(
        update={"gaussian_mixture": params("gaussian_mixture").gaussian_mixture.model_copy(update={"criterion": "aic"})}
    )
    elbow, _ = train(matrix, "ID", p)
    assert (elbow.k_best, elbow.rule, elbow.metric) == (TRUE_K, "min_aic", "aic")
    assert np.argmin(elbow.scores) == elbow.k_values.index(TRUE_K)


def test_hdbscan_finds_the_true_clusters(blobs):
    matrix, y = blobs
    elbow, model = train(matrix, "ID", params("hdbscan"))
    assert (elbow.k_best, elbow.rule, elbow.k_values) == (TRUE_K, "density", [TRUE_K])
    labels = algorithms.training_labels(model, matrix.drop(columns="ID").to_numpy())
    assert adjusted_rand_score(y, labels) >= 0.9  # noise rows count as a cluster of their own here
    assert isinstance(model, CentroidAssigner) and model.algorithm == "hdbscan"


def test_hdbscan_finding_fewer_than_two_clusters_is_an_error():
    X = np.random.default_rng(0).normal(size=(200, 2))
    matrix = pd.DataFrame({"ID": np.arange(200), "a": X[:, 0], "b": X[:, 1]})
    p = params("hdbscan", hdbscan={"min_cluster_size": 150})
    fix = r"change train.hdbscan \(min_cluster_size = 150, min_samples = 10\) to find at least 2"
    with pytest.raises(UserError, match=rf"train.hdbscan found .* {fix}"):
        train(matrix, "ID", p)


def test_a_fit_the_library_refuses_is_one_line():
    X = np.random.default_rng(0).normal(size=(30, 2))
    matrix = pd.DataFrame({"ID": np.arange(30), "a": X[:, 0], "b": X[:, 1]})
    with pytest.raises(UserError, match=r"train.hdbscan.min_samples \(or min_cluster_size\) \(40\) must be at most"):
        train(matrix, "ID", params("hdbscan", hdbscan={"min_samples": 40}))
    p = params("gaussian_mixture", k_max=3, min_cluster_size=2, n_init=1)
    with pytest.raises(
        UserError, match=r"^train: gaussian_mixture with k=2 on 30 rows failed: .* lower train.k_max\)$"
    ):
        train(matrix.assign(a=np.nan), "ID", p)


@pytest.mark.parametrize("algorithm", ["agglomerative", "hdbscan"])
def test_without_predict_fit_a_sample_and_assign_the_rest_to_the_nearest_centroid(blobs, algorithm):
    matrix, y = blobs
    X = matrix.drop(columns="ID").to_numpy()
    p = params(algorithm, **{algorithm: {"fit_sample_size": 200}})
    idx = search_sample(len(X), p)
    assert len(idx) == 200  # fit_sample_size caps the search rows (search_sample_size is unset)
    elbow, model = train(matrix, "ID", p)
    assert elbow.search_rows == 200 and model.n_rows_ == len(X)
    np.testing.assert_array_equal(model.fit_rows_, idx)
    labels = model.training_labels(X)
    others = np.setdiff1d(np.arange(len(X)), idx)
    np.testing.assert_array_equal(labels[others], model.predict(X[others]))  # the rule on the rows not fitted
    assert adjusted_rand_score(y, labels) >= 0.9
    check_model(model, X, "m.joblib", "m.csv", {"k_best": TRUE_K}, "t.json")
    with pytest.raises(UserError, match=r"was fitted on 500 rows, but m\.csv has 499"):
        check_model(model, X[1:], "m.joblib", "m.csv")
    with pytest.raises(UserError, match=r"was not fitted on m\.csv"):
        check_model(model, X[::-1].copy(), "m.joblib", "m.csv")


@pytest.mark.parametrize("algorithm", ["minibatch_kmeans", "bisecting_kmeans", "gaussian_mixture"])
def test_a_sampled_search_then_one_fit_on_every_row(blobs, algorithm):
    matrix, y = blobs
    X = matrix.drop(columns="ID").to_numpy()
    elbow, model = train(matrix, "ID", params(algorithm, search_sample_size=300))
    assert (elbow.search_rows, elbow.k_best) == (300, TRUE_K)
    assert model is not elbow.models[TRUE_K]  # refitted on all 500 rows
    assert adjusted_rand_score(y, model.predict(X)) > 0.99
    check_model(model, X, "m.joblib", "m.csv", {"k_best": TRUE_K, **algorithms.fit_record(model, X)}, "t.json")


def test_the_centroid_rule():
    X = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0], [5.0, 50.0]])
    y = np.array([0, 0, 1, 1, NOISE])
    model = CentroidAssigner("hdbscan").fit(X, y)
    np.testing.assert_array_equal(model.cluster_centers_, [[0.0, 1.0], [10.0, 1.0]])  # noise is in no centroid
    np.testing.assert_array_equal(model.training_labels(X), y)  # the training rows keep their labels, noise too
    np.testing.assert_array_equal(model.predict(np.array([[1.0, 1.0], [9.0, 1.0], [5.0, 50.0]])), [0, 1, 0])
    assert model.n_clusters == 2 and algorithms.n_clusters(model) == 2
    with pytest.raises(ValueError, match=r"cluster labels must be 0\.\.k-1"):
        CentroidAssigner().fit(X, np.array([0, 0, 2, 2, 2]))


def test_new_customers_are_scored_by_the_rule_in_the_segmenter(blobs):
    """The segmenter's last step must have predict: the assigner gives it to agglomerative and HDBSCAN."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    matrix, _ = blobs
    X = matrix.drop(columns="ID").to_numpy()
    _, model = train(matrix, "ID", params("hdbscan"))
    segmenter = Pipeline([("preprocess", FunctionTransformer()), ("cluster", model)])
    new = X[:20] + 0.01
    predicted = segmenter.predict(new)
    assert (predicted >= 0).all()  # never noise
    np.testing.assert_array_equal(predicted, model.predict(new))


@pytest.fixture
def noisy():
    """Two blobs and a few scattered rows HDBSCAN marks as noise."""
    X, _ = make_blobs(n_samples=200, centers=[[0, 0], [10, 10]], cluster_std=0.5, random_state=0)
    far = np.random.default_rng(1).uniform(-30, 40, size=(10, 2))
    X = np.vstack([X, far])
    p = params("hdbscan", hdbscan={"min_cluster_size": 20, "min_samples": 5})
    matrix = pd.DataFrame({"ID": np.arange(len(X)), "a": X[:, 0], "b": X[:, 1]})
    _, model = train(matrix, "ID", p)
    features = pd.DataFrame({"ID": matrix["ID"], "Income": X[:, 0] * 1000 + 50000, "Age": X[:, 1] + 40})
    return matrix, features, model


def test_noise_is_a_segment_of_its_own_and_out_of_the_scores(noisy):
    from sklearn.metrics import silhouette_score

    matrix, features, model = noisy
    X = matrix[["a", "b"]].to_numpy()
    labels = model.training_labels(X)
    assert (labels == NOISE).sum() > 0
    result = evaluate(matrix, features, model, "ID", EvaluateParams(silhouette_sample_size=5000, random_state=0))
    m = result.metrics
    assert m["n_clusters"] == 2 and "inertia" not in m
    assert m["noise_share"] == pytest.approx((labels == NOISE).mean())
    assert m["size_noise"] == (labels == NOISE).sum()
    assert m["size_cluster_0"] + m["size_cluster_1"] + m["size_noise"] == len(X)
    kept = labels != NOISE
    assert m["silhouette"] == pytest.approx(silhouette_score(X[kept], labels[kept]))
    assert m["silhouette_sample_rows"] == kept.sum()
    assert result.profile["cluster"].tolist() == [0, 1, NOISE]  # noise last
    assert result.segments["cluster"].tolist() == labels.tolist()
    z = report.contrasts(features[["Income", "Age"]], labels)
    overall = {c: float(features[c].mean()) for c in ("Income", "Age")}
    kinds = {"Income": report.MONEY, "Age": report.NUMBER}
    segments = report.describe_segments(result.profile, overall, z, ["Income", "Age"], [], kinds)
    assert segments[-1].name == report.NOISE_SEGMENT and segments[-1].description.startswith(report.NOISE_LEAD)


def test_score_names_ignore_the_noise_row(tmp_path):
    profile = tmp_path / "p.csv"
    pd.DataFrame({"cluster": [0, 1, NOISE], "name": ["A", "B", report.NOISE_SEGMENT]}).to_csv(profile, index=False)
    assert segment_names(profile, 2) == {0: "A", 1: "B", NOISE: report.NOISE_SEGMENT}
    assert segment_names(profile, 3) is None


def test_only_the_kmeans_family_claims_an_inertia(blobs):
    matrix, _ = blobs
    X = matrix.drop(columns="ID").to_numpy()
    records = {}
    for name in ("kmeans", "bisecting_kmeans", "gaussian_mixture", "agglomerative"):
        _, model = train(matrix, "ID", params(name, k=TRUE_K))
        records[name] = algorithms.fit_record(model, X)
        check_model(model, X, "m.joblib", "m.csv", {"k_best": TRUE_K, **records[name]}, "t.json")
    assert set(records["kmeans"]) == set(records["bisecting_kmeans"]) == {"inertia"}
    assert set(records["gaussian_mixture"]) == {"log_likelihood"}
    assert records["agglomerative"] == {}
    _, gmm = train(matrix, "ID", params("gaussian_mixture", k=TRUE_K))
    with pytest.raises(UserError, match=r"its log-likelihood on m.csv \(.*\) is not the one t.json records \(1.0\)"):
        check_model(gmm, X, "m.joblib", "m.csv", {"k_best": TRUE_K, "log_likelihood": 1.0}, "t.json")


def test_the_report_says_how_each_algorithm_chose_k():
    bic = pd.DataFrame({"k": [2, 3, 4], "score": [30.0, 10.0, 20.0], "metric": "bic"})
    page = report.k_choice_section(bic, {"k_best": 3, "k_rule": "min_bic"}, None, None, algorithm="a Gaussian mixture")
    assert "fitted a Gaussian mixture for each k and scored it by <b>bic</b>" in page
    assert "chose <b>k = 3</b> by the lowest BIC" in page
    found = pd.DataFrame({"k": [2], "score": [0.33], "metric": "noise_share"})
    page = report.k_choice_section(
        found, {"k_best": 2, "k_rule": "density", "noise_share": 0.3287}, None, None, "HDBSCAN"
    )
    assert "HDBSCAN found <b>k = 2</b> segments itself" in page and "no search over k" in page
    assert "32.9% of the customers it fitted on are in no group (noise)" in page
    assert "k-means" in report.k_choice_section(
        bic.assign(metric="distortion"), {"k_best": 3, "k_rule": "elbow"}, None, None
    )

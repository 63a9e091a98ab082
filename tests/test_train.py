from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from segmentation.config import TrainParams
from segmentation.errors import UserError
from segmentation.train import choose_k, elbow_search, fallback_k, train


def params(**override) -> TrainParams:
    base = {"k_min": 2, "k_max": 8, "metric": "distortion", "n_init": 4, "random_state": 0, "n_threads": 1}
    return TrainParams(**{**base, **override})


@pytest.fixture(scope="module")
def blobs() -> pd.DataFrame:
    X, _ = make_blobs(n_samples=400, centers=4, cluster_std=0.6, random_state=3)
    return pd.DataFrame({"ID": np.arange(len(X)), "x": X[:, 0], "y": X[:, 1]})


@pytest.mark.parametrize("metric", ["distortion", "silhouette", "calinski_harabasz"])
def test_elbow_finds_the_four_blobs(blobs, metric):
    elbow, model = train(blobs, "ID", params(metric=metric))
    assert elbow.k_best == 4
    assert elbow.k_values == list(range(2, 9))  # k_max is inclusive
    assert len(elbow.scores) == 7
    assert model.n_clusters == 4
    assert model.n_init == 4 and model.random_state == 0


def test_best_score_selection(blobs):
    elbow, _ = train(blobs, "ID", params(metric="silhouette", selection="best_score"))
    assert (elbow.k_best, elbow.rule) == (4, "best_score")


def test_training_is_reproducible(blobs):
    a_elbow, a_model = train(blobs, "ID", params())
    b_elbow, b_model = train(blobs, "ID", params())
    assert a_elbow.scores == b_elbow.scores
    np.testing.assert_array_equal(a_model.cluster_centers_, b_model.cluster_centers_)


def test_no_elbow_falls_back_with_a_warning(capsys):
    # Uniform noise along a line: the distortion curve has no knee for yellowbrick.
    X = np.linspace(0, 1, 60).reshape(-1, 1)
    result = elbow_search(X, params(k_min=2, k_max=4))
    assert result.k_best in (2, 3, 4)
    if result.rule != "elbow":
        assert result.rule.startswith("fallback")
        assert "no elbow found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scores", "metric", "expected"),
    [
        ([100.0, 50.0, 40.0, 35.0], "distortion", (3, "fallback_max_curvature")),
        ([100.0, 50.0], "distortion", (2, "fallback_k_min")),
        ([0.2, 0.5, 0.4, 0.3], "silhouette", (3, "fallback_best_score")),
        ([10.0, 30.0, 20.0, 5.0], "calinski_harabasz", (3, "fallback_best_score")),
    ],
)
def test_fallback_rules(scores, metric, expected):
    ks = list(range(2, 2 + len(scores)))
    assert fallback_k(ks, scores, metric) == expected


def test_choose_k_never_returns_none():
    assert choose_k([2, 3, 4], [9.0, 4.0, 3.0], None, "distortion", "elbow") == (3, "fallback_max_curvature")
    assert choose_k([2, 3, 4], [9.0, 4.0, 3.0], 3, "distortion", "elbow") == (3, "elbow")


def test_k_max_must_be_below_the_row_count():
    X = np.arange(10, dtype=float).reshape(-1, 1)
    with pytest.raises(UserError, match=r"train.k_max \(12\) must be below the number of rows \(10\)"):
        elbow_search(X, params(k_max=12))


def test_elbow_plot_is_labelled(blobs):
    elbow, _ = train(blobs, "ID", params())
    ax = elbow.figure.axes[0]
    assert "k_best = 4" in ax.get_title()
    assert ax.get_xlabel() == "number of clusters k"
    assert ax.get_ylabel() == "distortion score"

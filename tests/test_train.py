from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from segmentation.config import TrainParams
from segmentation.core.search import CURVES, choose_k, elbow_search, find_knee, search_sample, train
from segmentation.errors import UserError


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
    assert choose_k(ks, scores, None, metric, "elbow") == expected


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


@pytest.fixture(scope="module")
def many_blobs() -> pd.DataFrame:
    X, _ = make_blobs(n_samples=6000, centers=4, cluster_std=0.6, random_state=3)
    return pd.DataFrame({"ID": np.arange(len(X)), "x": X[:, 0], "y": X[:, 1]})


def test_above_the_sample_size_the_search_fits_a_seeded_sample_then_all_rows(many_blobs, capsys):
    p = params(search_sample_size=1000)
    elbow, model = train(many_blobs, "ID", p)
    assert (elbow.k_best, elbow.search_rows) == (4, 1000)
    assert len(model.labels_) == len(many_blobs)  # the final model: one fit on every row
    assert model.n_init == 1 and isinstance(model.init, np.ndarray)  # started from the sample's centres at k_best
    np.testing.assert_array_equal(model.init, elbow.models[4].cluster_centers_)
    assert "final fit, k=4 on all 6000 rows from the sample's centres" in capsys.readouterr().err
    # The sample: seeded, without replacement, sorted; the rule: more rows than search_sample_size.
    idx = search_sample(6000, p)
    assert len(idx) == len(set(idx)) == 1000 and list(idx) == sorted(idx)
    np.testing.assert_array_equal(idx, search_sample(6000, p))
    assert search_sample(1000, p) is None and search_sample(6000, params()) is None


def test_at_or_below_the_sample_size_the_search_uses_every_row_and_its_model(blobs):
    elbow, model = train(blobs, "ID", params(search_sample_size=400))
    assert elbow.search_rows == 400
    assert model is elbow.models[elbow.k_best]  # no refit: the search's own seeded n_init fit


@pytest.mark.parametrize("search_sample_size", [None, 1000])
def test_results_do_not_depend_on_the_thread_count(many_blobs, search_sample_size):
    one, m1 = train(many_blobs, "ID", params(n_threads=1, search_sample_size=search_sample_size))
    two, m2 = train(many_blobs, "ID", params(n_threads=2, search_sample_size=search_sample_size))
    assert one.scores == two.scores and one.k_best == two.k_best
    for k in one.k_values:
        np.testing.assert_array_equal(one.models[k].cluster_centers_, two.models[k].cluster_centers_)
    if search_sample_size is None:
        np.testing.assert_array_equal(m1.cluster_centers_, m2.cluster_centers_)


def _yellowbrick_knee(x, curve, nature, direction):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from yellowbrick.utils import KneeLocator

        return KneeLocator(x, curve, curve_nature=nature, curve_direction=direction).knee


def test_the_knee_is_kneeds_as_yellowbrick_sets_it():
    """find_knee is kneed's KneeLocator with KElbowVisualizer's settings: on curves of the shape each metric has
    (distortion convex and decreasing, silhouette and calinski_harabasz concave and increasing) the same knee as
    yellowbrick 1.5's copy of kneed."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        x = list(range(2, 2 + int(rng.integers(3, 12))))
        steps = np.sort(rng.exponential(1.0, len(x)))[::-1]  # shrinking gains: a bend somewhere
        rising = list(np.cumsum(steps))  # concave, increasing
        for metric, (nature, direction) in CURVES.items():
            curve = [rising[-1] - v for v in rising] if metric == "distortion" else rising  # convex, decreasing
            assert find_knee(x, curve, nature, direction) == _yellowbrick_knee(x, curve, nature, direction)


def test_the_knee_differs_from_yellowbricks_copy_only_after_a_local_minimum():
    """On curves of any shape, kneed (0.9) and yellowbrick's older copy differ in one rule: once the difference
    curve has passed a local minimum, yellowbrick's copy still reports the last maximum as the knee as soon as the
    curve drops below 0; kneed looks again only from the next local maximum on (a later knee, or none)."""
    from kneed import KneeLocator

    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(300):
        x = list(range(2, 2 + int(rng.integers(3, 12))))
        y = list(np.cumsum(rng.exponential(1.0, len(x))))
        for metric, (nature, direction) in CURVES.items():
            curve = y[::-1] if metric == "distortion" else y
            if rng.random() < 0.3:
                curve = list(rng.normal(size=len(x)))  # no shape at all: often no knee
            ours, theirs = find_knee(x, curve, nature, direction), _yellowbrick_knee(x, curve, nature, direction)
            if ours == theirs:
                continue
            differ += 1
            minima = KneeLocator(x, curve, curve=nature, direction=direction).minima_indices
            # the curves here are not mirrored (kneed mirrors concave-decreasing and convex-increasing ones)
            assert theirs is not None and any(x.index(theirs) < m for m in minima), (x, curve, metric)
            assert ours is None or ours > theirs, (x, curve, metric)
    assert 0 < differ < 300  # both kinds of curve were met


def test_a_fixed_k_is_used_whatever_the_elbow_says(blobs):
    """train.k: the business's number of segments; the search still runs, and its plot shows both."""
    elbow, model = train(blobs, "ID", params(k=6))
    assert (elbow.k_best, elbow.rule) == (6, "fixed")
    assert model.n_clusters == 6 and len(set(model.labels_)) == 6
    assert elbow.k_values == list(range(2, 9))  # the curve to compare with: its elbow is at 4
    assert "fixed" in elbow.figure.axes[0].get_legend().get_texts()[0].get_text()


def test_a_fixed_k_outside_the_search_range_is_fitted_too(blobs):
    elbow, model = train(blobs, "ID", params(k_min=2, k_max=5, k=7))
    assert elbow.k_values == [2, 3, 4, 5, 7] and elbow.k_best == 7 and model.n_clusters == 7


def test_k_min_equal_to_k_max_is_a_fixed_k_without_a_search(blobs):
    elbow, model = train(blobs, "ID", params(k_min=3, k_max=3))
    assert (elbow.k_values, elbow.k_best, elbow.rule, model.n_clusters) == ([3], 3, "fixed", 3)


def test_fixed_k_params_are_checked(blobs):
    with pytest.raises(ValueError, match=r"k_max \(2\) must not be below k_min \(3\)"):
        params(k_min=3, k_max=2)
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        params(k=1)
    with pytest.raises(UserError, match=r"train\.k \(50\) is more than 400 rows allow"):
        train(blobs, "ID", params(k=50))

"""Each segment's stability (core/stability.py): Hennig's cluster-wise bootstrap Jaccard, as fpc::clusterboot."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.datasets import make_blobs

from segmentation.algorithms import NOISE
from segmentation.core.quality import criteria_per_k
from segmentation.core.stability import best_jaccard, cluster_stability


def kmeans(k: int):
    return lambda: KMeans(n_clusters=k, n_init=10, random_state=0)


def blobs(rows: int = 600, centers: int = 4) -> tuple[np.ndarray, np.ndarray]:
    X, _ = make_blobs(rows, centers=centers, n_features=3, cluster_std=0.5, center_box=(-20, 20), random_state=1)
    return X, kmeans(centers)().fit_predict(X)


def test_well_separated_blobs_are_stable():
    X, labels = blobs()
    assert (cluster_stability(X, labels, kmeans(4), 10, 5000, 42) >= 0.95).all()


def test_uniform_noise_in_5_dimensions_has_a_segment_that_is_not_real():
    """NOTES.md "Cluster stability": all six 0.40-0.58 (2-D noise at k = 6 is too stable to test this)."""
    X = np.random.default_rng(0).uniform(size=(2000, 5))
    labels = kmeans(6)().fit_predict(X)
    assert cluster_stability(X, labels, kmeans(6), 10, 5000, 42).min() < 0.6


def direct_stability(X, labels, make, resamples, max_rows, seed) -> list[float]:
    """The same bootstrap written plainly: Python sets of row numbers, one Jaccard at a time."""
    rng = np.random.default_rng(seed)
    if len(X) > max_rows:
        keep = np.sort(rng.choice(len(X), size=max_rows, replace=False))
        X, labels = X[keep], labels[keep]
    k = labels.max() + 1
    total = [0.0] * k
    for _ in range(resamples):
        drawn = sorted(set(rng.integers(0, len(X), size=len(X)).tolist()))
        found = list(make().fit(X[drawn]).labels_)
        for segment in range(k):
            mine = {i for i, row in enumerate(drawn) if labels[row] == segment}
            best = 0.0
            for cluster in set(found) - {NOISE}:
                theirs = {i for i, c in enumerate(found) if c == cluster}
                best = max(best, len(mine & theirs) / len(mine | theirs))
            total[segment] += best
    return [t / resamples for t in total]


@pytest.mark.parametrize("max_rows", [5000, 300])  # every row, then a seeded sample of 300
def test_the_numbers_equal_a_direct_recomputation(max_rows):
    X = np.random.default_rng(3).normal(size=(500, 3))
    labels = kmeans(3)().fit_predict(X)
    ours = cluster_stability(X, labels, kmeans(3), 5, max_rows, 7)
    assert ours == pytest.approx(direct_stability(X, labels, kmeans(3), 5, max_rows, 7), abs=1e-12)


def test_the_same_seed_gives_the_same_numbers():
    X = np.random.default_rng(0).uniform(size=(800, 5))
    labels = kmeans(4)().fit_predict(X)
    first, again = (cluster_stability(X, labels, kmeans(4), 5, 5000, 11) for _ in range(2))
    assert first.tolist() == again.tolist()
    assert first.tolist() != cluster_stability(X, labels, kmeans(4), 5, 5000, 12).tolist()


def test_noise_is_in_no_segment_and_no_cluster():
    """HDBSCAN's noise rows: refitted with the others, counted in no Jaccard; a segment absent from a resample: 0."""
    segments = np.array([0, 0, 1, NOISE, NOISE, 1])
    found = np.array([NOISE, 0, 0, 0, NOISE, 1])  # segment 0 = {0, 1}, 1 = {2, 5}; clusters {1, 2, 3}, {5}
    assert best_jaccard(segments, found, 3).tolist() == [pytest.approx(1 / 4), 0.5, 0.0]
    assert best_jaccard(segments, np.full(6, NOISE), 2).tolist() == [0.0, 0.0]  # the resample found no cluster
    X = np.vstack([blobs(400, 3)[0], np.random.default_rng(0).uniform(-25, 25, size=(40, 3))])  # scattered: noise
    hdbscan = lambda: HDBSCAN(min_cluster_size=20, copy=True)  # noqa: E731
    labels = hdbscan().fit(X).labels_
    assert (labels == NOISE).any()
    assert cluster_stability(X, labels, hdbscan, 3, 5000, 0).tolist() == pytest.approx(
        direct_stability(X, labels, hdbscan, 3, 5000, 0), abs=1e-12
    )


def test_the_mean_stability_per_k_is_seeded_and_capped_by_the_criteria_sample():
    X, _ = blobs(rows=3000)
    first, again = (criteria_per_k(X, [2, 3, 4, 5, 6], 400, 7, resamples=3) for _ in range(2))
    assert first.equals(again)  # seeded: the same numbers on a rerun
    by_k = first.set_index("k")["stability"]
    assert by_k[4] >= 0.95 and by_k[4] == by_k.max()  # the true k is the most stable
    assert by_k[5] < 0.9 and by_k[6] < 0.9  # a true blob split in two comes out differently per resample
    off = criteria_per_k(X, [2, 3, 4, 5, 6], 400, 7)
    assert "stability" not in off and off.equals(first.drop(columns="stability"))  # the other criteria unchanged

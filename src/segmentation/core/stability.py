"""Hennig's cluster-wise stability, as R's ``fpc::clusterboot`` computes it: bootstrap the rows, refit, and score
each segment by its best Jaccard similarity to the resample's clusters on the resample's rows, averaged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from segmentation import algorithms
from segmentation.algorithms import NOISE


def stability_key(cluster: int) -> str:
    """The metric key of a segment's stability: ``stability_cluster_3``."""
    return f"stability_cluster_{cluster}"


def best_jaccard(segments: np.ndarray, found: np.ndarray, k: int) -> np.ndarray:
    """Per segment 0..k-1 of ``segments``, its largest Jaccard similarity to a cluster of ``found`` (the same rows);
    NOISE rows are in no segment and no cluster. 0 for a segment with no row here (clusterboot's ``zerobyzero=0``)."""
    m = max(int(found.max()) + 1, 1)  # the resample's clusters (a column of zeros when it found none)
    both = (segments != NOISE) & (found != NOISE)
    common = np.zeros((k, m))
    np.add.at(common, (segments[both], found[both]), 1)
    in_segment = np.bincount(segments[segments != NOISE], minlength=k)[:, None]
    union = in_segment + np.bincount(found[found != NOISE], minlength=m) - common
    return np.divide(common, union, out=np.zeros_like(common), where=union > 0).max(axis=1)


def cluster_stability(
    X: np.ndarray, labels: np.ndarray, make: Callable[[], Any], resamples: int, max_rows: int, random_state: int,
    done: Callable[[str], None] = lambda message: None,
) -> np.ndarray:  # fmt: skip
    """The stability of each segment 0..k-1 of ``labels``: ``resamples`` bootstraps of a seeded sample of at most
    ``max_rows`` rows of ``X``, each drawn row once (clusterboot's default), each fitted by a fresh ``make()``.
    HDBSCAN's noise rows (-1) are in no segment: they are resampled and refitted, but no segment's score counts
    them. ``done(message)`` is called after each resample."""
    k = int(labels.max()) + 1
    rng = np.random.default_rng(random_state)
    if len(X) > max_rows:
        rows = np.sort(rng.choice(len(X), size=max_rows, replace=False))
        X, labels = X[rows], labels[rows]
    scores = np.zeros((resamples, k))
    for i in range(resamples):
        sample = np.unique(rng.integers(0, len(X), size=len(X)))  # unique: sorted, a duplicate row counted once
        with threadpool_limits(1):  # small fits: 10-20x faster on one thread than on a busy machine's all
            model = make().fit(X[sample])
        scores[i] = best_jaccard(labels[sample], algorithms.fit_labels(model, X[sample]), k)
        done(f"stability: resample {i + 1}/{resamples}")
    return scores.mean(axis=0)

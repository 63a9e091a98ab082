"""Cluster quality: the model's check, silhouette on a sample, Calinski-Harabasz, Davies-Bouldin, the criteria per
k and the per-cluster profile. Pure functions: arrays and DataFrames in, results out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_samples

from segmentation import algorithms
from segmentation.algorithms import NOISE
from segmentation.config import EvaluateParams
from segmentation.core.data import as_categories, expand_columns
from segmentation.core.progress import step
from segmentation.core.report import BLANK, CLUSTER_COLUMN
from segmentation.core.stability import cluster_stability
from segmentation.errors import UserError

# The model's inertia on the matrix must equal the inertia it was fitted with, up to float summation order
# (threads): a larger gap means the model was fitted on other data.
INERTIA_RTOL = 1e-6
CRITERIA = ["k", "silhouette", "calinski_harabasz", "davies_bouldin"]


@dataclass
class Evaluation:
    """Quality metrics, profiles and what the plots need."""

    metrics: dict[str, float | int]
    segments: pd.DataFrame | None  # ID -> cluster (None: the Dask engine's, written from the partitions)
    profile: pd.DataFrame  # one row per cluster: size, share and the mean of every unscaled feature
    silhouette_values: np.ndarray  # per sampled row
    silhouette_labels: np.ndarray


def sample_rows(rows: int, sample_size: int, random_state: int) -> np.ndarray:
    """The sorted rows of a seeded sample of at most ``sample_size`` of ``rows``: the same on either engine."""
    if rows <= sample_size:
        return np.arange(rows)
    return np.sort(np.random.default_rng(random_state).choice(rows, size=sample_size, replace=False))


def silhouette_of(X: np.ndarray, labels: np.ndarray, sample_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row silhouette of the sampled rows ``X`` (:func:`sample_rows`) and their labels."""
    if len(np.unique(labels)) < 2:
        raise UserError(
            f"params.yaml: evaluate.silhouette_sample_size ({sample_size}) is too small: the sample holds one "
            "cluster; raise it"
        )
    return silhouette_samples(X, labels), labels


def check_model(
    model: Any, X: np.ndarray, model_source: str, matrix_source: str, train_metrics: Mapping[str, Any] | None = None,
    metrics_source: str = "metrics/train.json", inertia_on_matrix: Callable[[], float] | None = None,
) -> np.ndarray | None:  # fmt: skip
    """Fail in one line unless ``model`` is a clusterer fitted on ``X`` with the k and fit record ``train_metrics``
    holds. ``inertia_on_matrix`` computes the inertia where ``X`` is not in this process (Dask). Returns the rows'
    clusters when the check predicted them (k-means family), for :func:`evaluate`; else None."""

    def fail(why: str) -> NoReturn:
        raise UserError(f"{model_source}: {why}; rebuild it: dvc repro -f -s train")

    name = algorithms.algorithm_name(model)
    if name is None or not algorithms.is_fitted(model):
        fail(f"holds {'an unfitted' if name else 'a'} {type(model).__name__}, not a fitted clustering model")
    if model.n_features_in_ != X.shape[1]:
        fail(f"fitted on {model.n_features_in_} column(s), but {matrix_source} has {X.shape[1]}")
    k = algorithms.n_clusters(model)
    if train_metrics is not None:
        if train_metrics.get("k_best") != k:
            fail(f"has {k} clusters, but {metrics_source} says k_best = {train_metrics.get('k_best')}")
        for key, value in algorithms.fit_record(model, X).items():  # inertia_ as fitted; the log-likelihood on X
            wrote = train_metrics.get(key)
            if not isinstance(wrote, int | float) or not np.isclose(value, wrote, rtol=INERTIA_RTOL):
                what = "inertia" if key == "inertia" else f"{key.replace('_', '-')} on {matrix_source}"
                fail(f"its {what} ({value:.6g}) is not the one {metrics_source} records ({wrote})")
    labels = None  # algorithms.inertia_on's predict, kept: one pass over the rows for the check and evaluate()
    if hasattr(model, "inertia_"):
        labels = None if inertia_on_matrix else model.predict(X)
        on_matrix = inertia_on_matrix() if labels is None else ((X - model.cluster_centers_[labels]) ** 2).sum()
        if not np.isclose(on_matrix, model.inertia_, rtol=INERTIA_RTOL):
            fail(f"was not fitted on {matrix_source} (inertia {on_matrix:.6g} on it, {model.inertia_:.6g} when fitted)")
    if isinstance(model, algorithms.CentroidAssigner):  # its centroids must be its clusters' means in X
        if model.n_rows_ != len(X):
            fail(f"was fitted on {model.n_rows_} rows, but {matrix_source} has {len(X)}")
        fitted = X if model.fit_rows_ is None else X[model.fit_rows_]  # the rows its clusterer was fitted on
        means = np.stack([fitted[model.fit_labels_ == c].mean(axis=0) for c in range(k)])
        if not np.allclose(means, model.cluster_centers_, rtol=INERTIA_RTOL, atol=1e-9):
            fail(f"was not fitted on {matrix_source} (its centroids are not the means of its clusters there)")
    return labels


def cluster_profile(
    features: pd.DataFrame, labels: np.ndarray, id_column: str, categorical: Sequence[str] = ()
) -> pd.DataFrame:
    """Size, share and mean of each unscaled numeric feature per cluster, noise (-1) last; per categorical column
    the share of each category (sorted), blanks as ``column=(blank)`` so that the shares add up to 1."""
    grouped = features.drop(columns=[id_column, *categorical]).groupby(labels)
    categories = {}
    for column in categorical:
        values = as_categories(features[column])
        blanks = pd.Series(values.isna().to_numpy()).groupby(labels).sum() if values.isna().any() else None
        categories[column] = (pd.crosstab(labels, values), blanks)
    return assemble_profile(grouped.size(), grouped.mean(), categories, len(features))


def assemble_profile(
    sizes: pd.Series, means: pd.DataFrame, categories: Mapping[str, tuple[pd.DataFrame, pd.Series | None]], rows: int
) -> pd.DataFrame:
    """:func:`cluster_profile` from its group-bys; ``categories``: per column, counts per category and of blanks."""
    profile = means.copy()
    profile.insert(0, "share", sizes / rows)
    profile.insert(0, "size", sizes)
    profile.index.name = CLUSTER_COLUMN
    if NOISE in profile.index:  # the clusters first, in order, then the rows in none
        profile = profile.reindex([*(c for c in profile.index if c != NOISE), NOISE])
    for column, (found, blanks) in categories.items():
        counts = found.reindex(index=profile.index, fill_value=0)
        shares = counts[sorted(counts.columns)].div(profile["size"], axis=0)
        shares.columns = [f"{column}={category}" for category in shares.columns]
        if blanks is not None:
            shares[f"{column}={BLANK}"] = blanks.reindex(profile.index, fill_value=0) / profile["size"]
        profile = profile.join(shares)
    return profile.reset_index()


def require_silhouette_sample(params: EvaluateParams, k: int) -> None:
    """The silhouette's sample must be able to hold every cluster."""
    if params.silhouette_sample_size <= k:
        raise UserError(
            f"params.yaml: evaluate.silhouette_sample_size ({params.silhouette_sample_size}) must be greater than "
            f"the number of clusters ({k}); raise it"
        )


def evaluate(
    matrix: pd.DataFrame, features: pd.DataFrame, model, id_column: str, params: EvaluateParams,
    categorical: Sequence[str] = (), labels: np.ndarray | None = None,
) -> Evaluation:  # fmt: skip
    """Assign clusters (``predict``, or the training assignment; ``labels``: already predicted, by :func:`check_model`)
    and measure them; ``features``: the unscaled rows behind ``matrix``, ``categorical`` their columns profiled as
    shares. Noise rows (-1) are left out of the scores."""
    if not matrix[id_column].equals(features[id_column]):
        raise UserError("data/processed: the features and matrix files hold different customers; run dvc repro")
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    k = algorithms.n_clusters(model)
    require_silhouette_sample(params, k)
    labels = algorithms.training_labels(model, X) if labels is None else labels
    clustered = labels != NOISE
    Xc, labels_c = (X, labels) if clustered.all() else (X[clustered], labels[clustered])
    idx = sample_rows(len(Xc), params.silhouette_sample_size, params.random_state)  # full silhouette is O(n^2)
    with step("evaluate", f"silhouette on {len(idx):,} rows"):
        silhouette = silhouette_of(Xc[idx], labels_c[idx], params.silhouette_sample_size)  # (values, labels)
    noise_share = float((~clustered).mean()) if algorithms.REGISTRY[algorithms.algorithm_name(model)].noise else None
    metrics = quality_metrics(
        model, silhouette[0], calinski_harabasz_score(Xc, labels_c), davies_bouldin_score(Xc, labels_c),
        algorithms.cluster_sizes(labels, k), len(labels), noise_share,
    )  # fmt: skip
    segments = pd.DataFrame({id_column: matrix[id_column], CLUSTER_COLUMN: labels})
    return Evaluation(metrics, segments, cluster_profile(features, labels, id_column, categorical), *silhouette)


def quality_metrics(
    model: Any, sil_values: np.ndarray, calinski_harabasz: float, davies_bouldin: float, sizes: Mapping[int, int],
    rows: int, noise_share: float | None,
) -> dict[str, float | int]:  # fmt: skip
    """``metrics/evaluate.json``: scores, inertia (k-means family), smallest cluster's share, noise share, sizes."""
    return {
        "n_clusters": algorithms.n_clusters(model),
        "silhouette": float(sil_values.mean()),
        "silhouette_sample_rows": len(sil_values),
        "calinski_harabasz": float(calinski_harabasz),
        "davies_bouldin": float(davies_bouldin),
        **({"inertia": float(model.inertia_)} if hasattr(model, "inertia_") else {}),
        "smallest_cluster_share": float(min(n for c, n in sizes.items() if c != NOISE) / rows),
        **({"noise_share": noise_share} if noise_share is not None else {}),
        **{algorithms.size_key(c): n for c, n in sizes.items()},
    }


def criteria_per_k(
    X: np.ndarray, ks: Sequence[int], sample_size: int, random_state: int, resamples: int = 0,
    done: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:  # fmt: skip
    """Silhouette, Calinski-Harabasz, Davies-Bouldin and (``resamples`` > 0) the mean stability of a k-means fit
    per k on a seeded sample of ``X``; ``done(message)`` after each k."""
    return criteria_of(X[sample_rows(len(X), sample_size, random_state)], ks, random_state, resamples, done)


def criteria_of(
    sample: np.ndarray, ks: Sequence[int], random_state: int, resamples: int = 0,
    done: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:  # fmt: skip
    """:func:`criteria_per_k` on its sampled rows (3 restarts, one thread: the same numbers on any machine)."""
    from sklearn.metrics import pairwise_distances, silhouette_score
    from threadpoolctl import threadpool_limits

    rows, columns = [], [*CRITERIA, *(["stability"] if resamples else [])]
    with threadpool_limits(1):
        distances = pairwise_distances(sample)  # once for every k: silhouette's cost is these n^2 distances
        for k in (k for k in ks if 2 <= k < len(sample)):
            make = partial(KMeans, n_clusters=k, n_init=3, random_state=random_state)
            labels = make().fit_predict(sample)
            if len(np.unique(labels)) > 1:
                silhouette = silhouette_score(distances, labels, metric="precomputed")
                scores = silhouette, calinski_harabasz_score(sample, labels), davies_bouldin_score(sample, labels)
                if resamples:  # Hennig's stability of each segment, on the same sample: its cost is fixed
                    scores += (cluster_stability(sample, labels, make, resamples, len(sample), random_state).mean(),)
                rows.append({"k": int(k), **dict(zip(columns[1:], map(float, scores), strict=True))})
            done(f"criteria: k = {k}")
    return pd.DataFrame(rows, columns=columns)


def profiled_columns(
    features: pd.DataFrame, id_column: str, model_features: Sequence[str], categorical: Sequence[str], patterns
) -> tuple[list[str], list[str]]:
    """(numeric, non-numeric) columns of ``features`` that ``evaluate.profile_columns`` adds to the profile."""
    columns = [c for c in features.columns if c != id_column]
    found = expand_columns(patterns, columns, "evaluate.profile_columns", "the features file (run dvc repro)")
    extras = [c for c in found if c not in {*model_features, *categorical}]
    numeric = [c for c in extras if pd.api.types.is_numeric_dtype(features[c])]
    return numeric, [c for c in extras if c not in numeric]

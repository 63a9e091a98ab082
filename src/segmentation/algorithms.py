"""The clustering algorithms of ``train.algorithm``: one :data:`REGISTRY` entry each, its params model
(``train.<name>``) beside it; those without ``predict`` are extended to all rows by :class:`CentroidAssigner`."""

from __future__ import annotations

import contextlib
import importlib
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted, validate_data

from segmentation.errors import UserError

TrainParams = Any  # config.TrainParams is built from this registry: not imported here

NOISE = -1  # HDBSCAN's label for rows in no cluster
NOISE_NAME = "noise"  # its name in metric keys (size_noise) and plot legends
ELBOW = "elbow"  # the k search of train.metric's curve and its knee (train.selection)


class AlgorithmParams(BaseModel):  # base of train.<algorithm> (one without predict has a fit_sample_size)
    model_config = ConfigDict(extra="forbid", frozen=True)

    def k_setting(self) -> str:
        """What sets the k of an algorithm that finds k itself, for messages and the plot."""
        return ", ".join(f"{key} = {value}" for key, value in self.model_dump().items())

    def check_rows(self, name: str, rows: int) -> None:
        """Raise a :class:`UserError` naming ``train.<name>`` when ``rows`` rows are too few for these knobs."""


@dataclass(frozen=True)
class Algorithm:
    """One clustering algorithm of ``train.algorithm``."""

    label: str  # how the report names it: "The train stage fitted <label> for each k"
    estimator: str  # what ``make`` returns: a scikit-learn class name, or another library's ``module.Class``
    make: Callable[[TrainParams, int], Any]  # an unfitted estimator with k clusters (ignored when it finds k itself)
    criterion: Callable[[TrainParams], str | None] = lambda p: ELBOW  # the k search, "bic"/"aic" or None (finds k)
    predicts: bool = True  # False: fitted on a sample, extended to all rows and new ones by CentroidAssigner
    noise: bool = False  # labels some rows NOISE: noise_share is a metric, noise a segment of its own
    params: type[AlgorithmParams] = AlgorithmParams  # its sub-section train.<name> (defaults: may be left out)
    bytes_per_row2: float = 0  # a fit's peak memory / rows² (pairwise distances), checked before fitting; 0: linear


def _seeded(p: TrainParams) -> dict[str, Any]:
    """The knobs of ``train`` every seeded estimator gets, explicit (``n_init: 'auto'`` would move the knee)."""
    return {"n_init": p.n_init, "max_iter": p.max_iter, "random_state": p.random_state}


def _sklearn(name: str, **kwargs: Any) -> Any:
    """The scikit-learn clusterer ``name``, imported only when one is made (the stages that fit none stay light)."""
    module = importlib.import_module("sklearn.mixture" if name == "GaussianMixture" else "sklearn.cluster")
    return getattr(module, name)(**kwargs)


class KMeansParams(AlgorithmParams):  # train.kmeans (n_init, max_iter, random_state come from train)
    method: Literal["lloyd", "elkan"] = "lloyd"  # KMeans' ``algorithm``; lloyd is the default


class MiniBatchKMeansParams(AlgorithmParams):  # train.minibatch_kmeans: k-means on random batches
    batch_size: int = Field(default=1024, ge=1)
    max_no_improvement: int = Field(default=10, ge=1)  # batches without a better inertia before it stops


class BisectingKMeansParams(AlgorithmParams):  # train.bisecting_kmeans: clusters split in two one at a time
    bisecting_strategy: Literal["biggest_inertia", "largest_cluster"] = "biggest_inertia"


class GaussianMixtureParams(AlgorithmParams):  # train.gaussian_mixture: k with the lowest BIC (or AIC)
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    criterion: Literal["bic", "aic"] = "bic"
    reg_covar: float = Field(default=1e-6, gt=0)  # added to the covariances' diagonal: keeps them invertible


class AgglomerativeParams(AlgorithmParams):  # train.agglomerative: fitted on a seeded sample (memory: rows^2)
    linkage: Literal["ward", "complete", "average", "single"] = "ward"
    # Measured peak (ward or average, /usr/bin/time): ~8 bytes x rows², 5,000 rows ~0.2 GB, 20,000 ~3.2 GB.
    fit_sample_size: int = Field(default=5000, ge=2)


class HDBSCANParams(AlgorithmParams):  # train.hdbscan: fitted on a seeded sample; finds k itself, marks noise
    min_cluster_size: int = Field(default=20, ge=2)  # the smallest group HDBSCAN calls a cluster
    min_samples: int | None = Field(default=10, ge=1)  # null: min_cluster_size; higher marks more rows noise
    cluster_selection_epsilon: float = Field(default=0.0, ge=0)  # merge clusters closer than this
    fit_sample_size: int = Field(default=20000, ge=2)  # ~2 s at 20,000 rows in 3 dimensions

    def k_setting(self) -> str:
        return f"min_cluster_size = {self.min_cluster_size}, min_samples = {self.min_samples}"

    def check_rows(self, name: str, rows: int) -> None:
        if (needs := self.min_samples or self.min_cluster_size) > rows:
            raise UserError(
                f"params.yaml: train.{name}.min_samples (or min_cluster_size) ({needs}) must be at most the rows it "
                f"is fitted on ({rows}); lower it"
            )


# The one list of algorithms: a name here is a valid train.algorithm and a sub-section of train (its knobs). HDBSCAN:
# copy=True, or it would scale the caller's rows in place.
REGISTRY: dict[str, Algorithm] = {
    "kmeans": Algorithm("k-means", "KMeans", params=KMeansParams,
        make=lambda p, k: _sklearn("KMeans", n_clusters=k, algorithm=p.kmeans.method, **_seeded(p))),
    "minibatch_kmeans": Algorithm("mini-batch k-means", "MiniBatchKMeans", params=MiniBatchKMeansParams,
        make=lambda p, k: _sklearn("MiniBatchKMeans", n_clusters=k, **p.minibatch_kmeans.model_dump(), **_seeded(p))),
    "bisecting_kmeans": Algorithm("bisecting k-means", "BisectingKMeans", params=BisectingKMeansParams,
        make=lambda p, k: _sklearn("BisectingKMeans", n_clusters=k, **p.bisecting_kmeans.model_dump(), **_seeded(p))),
    "gaussian_mixture": Algorithm("a Gaussian mixture", "GaussianMixture",
        lambda p, k: _sklearn("GaussianMixture", n_components=k,
                              **p.gaussian_mixture.model_dump(exclude={"criterion"}), **_seeded(p)),
        lambda p: p.gaussian_mixture.criterion, params=GaussianMixtureParams),
    "agglomerative": Algorithm("agglomerative clustering", "AgglomerativeClustering",
        lambda p, k: _sklearn("AgglomerativeClustering", n_clusters=k,
                              **p.agglomerative.model_dump(exclude={"fit_sample_size"})),
        predicts=False, params=AgglomerativeParams, bytes_per_row2=8),
    "hdbscan": Algorithm("HDBSCAN", "HDBSCAN",
        lambda p, k: _sklearn("HDBSCAN", **p.hdbscan.model_dump(exclude={"fit_sample_size"}), copy=True),
        lambda p: None, predicts=False, noise=True, params=HDBSCANParams),
}  # fmt: skip


DEFAULT = "kmeans"  # train.algorithm when params.yaml does not say


def make(params: TrainParams, k: int):
    """An unfitted estimator of ``train.algorithm`` with ``k`` clusters, every knob from ``params``."""
    return REGISTRY[params.algorithm].make(params, k)


def free_memory() -> int:
    """Bytes this process may still take: the least of the available memory, RLIMIT_AS and cgroup memory.max left."""
    import psutil

    free = [psutil.virtual_memory().available]
    if (limit := resource.getrlimit(resource.RLIMIT_AS)[0]) != resource.RLIM_INFINITY:
        free.append(limit - psutil.Process().memory_info().vms)
    with contextlib.suppress(OSError, ValueError):  # no cgroup v2, or memory.max is "max"
        cgroup = Path("/sys/fs/cgroup")
        free.append(int((cgroup / "memory.max").read_text()) - int((cgroup / "memory.current").read_text()))
    return max(min(free), 0)


def check_memory(params: TrainParams, rows: int, fits: int = 1, lower: str | None = None, stage: str = "train") -> None:
    """Refuse ``fits`` fits at a time on ``rows`` rows whose memory (rows²) exceeds what is free; ``lower``: advice."""
    if (need := REGISTRY[params.algorithm].bytes_per_row2 * rows**2 * fits) and need > (free := free_memory()):
        fix = lower or ("train.search_sample_size" if REGISTRY[params.algorithm].predicts else  # else it has one
            f"train.{params.algorithm}.fit_sample_size") + (" or train.n_threads" if fits > 1 else "")  # fmt: skip
        raise UserError(
            f"{stage}: {params.algorithm} on {rows:,} rows needs ~{need / 2**30:.1f} GiB ({fits} fit(s) at a time; it "
            f"grows with rows²) but {free / 2**30:.1f} GiB is free; lower {fix}"
        )


def fit_labels(model: Any, X: np.ndarray) -> np.ndarray:
    """The cluster of each row ``model`` was just fitted on: ``labels_``, else ``predict`` (noise kept)."""
    labels = getattr(model, "labels_", None)  # a CentroidAssigner has none: its training_labels
    return training_labels(model, X) if labels is None else np.asarray(labels)


class CentroidAssigner(ClusterMixin, BaseEstimator):
    """For algorithms without ``predict``: a row goes to the nearest centroid (ties to the lower cluster) of the
    clusters ``y`` found on the rows ``fit_rows`` (None: all) of a training matrix of ``rows`` rows, noise excluded."""

    def __init__(self, algorithm: str = "") -> None:
        self.algorithm = algorithm  # the registry name of the clusterer whose assignment it extends

    def fit(self, X: np.ndarray, y: np.ndarray, rows: int | None = None, fit_rows: np.ndarray | None = None):
        X, y = np.asarray(X, dtype=float), np.asarray(y)
        clusters = np.unique(y[y != NOISE])
        if not np.array_equal(clusters, np.arange(len(clusters))):
            raise ValueError(f"cluster labels must be 0..k-1 (and {NOISE} for noise), got {clusters.tolist()}")
        self.cluster_centers_ = np.stack([X[y == c].mean(axis=0) for c in clusters])
        self.n_clusters = len(clusters)
        self.n_features_in_ = X.shape[1]
        self.n_rows_ = len(X) if rows is None else int(rows)
        self.fit_rows_ = None if fit_rows is None else np.asarray(fit_rows, dtype=np.int64)
        self.fit_labels_ = y.astype(np.int32)
        return self

    def predict(self, X: Any) -> np.ndarray:
        from sklearn.metrics import pairwise_distances_argmin

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=float)
        return pairwise_distances_argmin(X, self.cluster_centers_).astype(np.int32)

    def training_labels(self, X: np.ndarray) -> np.ndarray:
        """The clusters of the ``n_rows_`` training rows ``X``: as fitted, the others by :meth:`predict`."""
        if self.fit_rows_ is None:
            return self.fit_labels_.copy()
        labels = self.predict(X)
        labels[self.fit_rows_] = self.fit_labels_
        return labels


def n_clusters(model: Any) -> int:
    """How many clusters a fitted model has (noise not counted)."""
    k = getattr(model, "n_clusters", None)
    return int(k if k is not None else model.n_components)


def algorithm_name(model: Any) -> str | None:
    """The ``train.algorithm`` a fitted model comes from, or None for a foreign object."""
    if isinstance(model, CentroidAssigner):
        return model.algorithm if model.algorithm in REGISTRY else None
    # A scikit-learn class by its name (another library's class with the same name is not ours), or by its full name.
    cls = type(model)
    names = {f"{cls.__module__}.{cls.__qualname__}", *([cls.__name__] if cls.__module__.startswith("sklearn.") else [])}
    return next((name for name, entry in REGISTRY.items() if entry.predicts and entry.estimator in names), None)


def is_fitted(model: Any) -> bool:
    """Whether ``model`` has been fitted, by scikit-learn's ``check_is_fitted``."""
    try:
        check_is_fitted(model)
    except (NotFittedError, TypeError):  # TypeError: not an estimator at all
        return False
    return True


def training_labels(model: Any, X: np.ndarray) -> np.ndarray:
    """Each training row's cluster: ``predict``, or a :class:`CentroidAssigner`'s training assignment (noise kept)."""
    return model.training_labels(X) if isinstance(model, CentroidAssigner) else model.predict(X)


def inertia_on(model: Any, X: np.ndarray) -> float:
    """Sum of squared distances of the rows of ``X`` to their predicted cluster's centre."""
    return float(((X - model.cluster_centers_[model.predict(X)]) ** 2).sum())


def fit_record(model: Any, X: np.ndarray) -> dict[str, float]:
    """What ``metrics/train.json`` records to recognise the model: its ``inertia`` or mean ``log_likelihood``."""
    if hasattr(model, "inertia_"):
        return {"inertia": float(model.inertia_)}
    if hasattr(model, "means_"):
        return {"log_likelihood": float(model.score(X))}
    return {}


def size_key(cluster: int) -> str:
    """The metric key of a cluster's size: ``size_cluster_3``, ``size_noise``."""
    return f"size_{NOISE_NAME}" if cluster == NOISE else f"size_cluster_{cluster}"


def cluster_sizes(labels: np.ndarray, k: int) -> dict[int, int]:
    """Rows per cluster 0..k-1 (empty ones included), then the noise rows when there are any."""
    sizes = {c: int(n) for c, n in enumerate(np.bincount(labels[labels != NOISE], minlength=k))}
    noise = int((labels == NOISE).sum())
    return {**sizes, NOISE: noise} if noise else sizes


def describe(sizes: Mapping[int, int]) -> str:
    """``4 clusters + 12 noise rows``, for messages."""
    noise = sizes.get(NOISE, 0)
    return f"{len(sizes) - (NOISE in sizes)} cluster(s)" + (f" + {noise} noise row(s)" if noise else "")

"""The search over k for ``train.algorithm`` (one seeded fit per k, ``n_threads`` at a time), then the final fit.
Pure: arrays in, results out."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from segmentation import algorithms
from segmentation.algorithms import NOISE, CentroidAssigner
from segmentation.config import TrainParams
from segmentation.core.plotting import new_figure
from segmentation.core.progress import parts
from segmentation.errors import UserError

# yellowbrick's KElbowVisualizer: the shape of each metric's curve, for the knee locator.
CURVES = {"distortion": ("convex", "decreasing"), "silhouette": ("concave", "increasing"),
          "calinski_harabasz": ("concave", "increasing")}  # fmt: skip


@dataclass
class ElbowResult:
    """Scores per k, the k chosen and by which rule."""

    k_values: list[int]
    scores: list[float]
    k_best: int
    score_best: float
    rule: str  # "elbow", "best_score", "min_bic"/"min_aic", "density" (HDBSCAN), "fixed" or a fallback
    figure: object  # the drawn matplotlib Figure
    search_rows: int = 0  # rows the search fitted on: all of them, or the seeded sample
    models: dict[int, Any] = field(default_factory=dict, repr=False)  # the search's fit per k
    metric: str = "distortion"  # what the scores are: train.metric, bic/aic, or noise_share (HDBSCAN: no search)
    sample: np.ndarray | None = field(default=None, repr=False)  # the search rows' indices (None: every row)


def say(message: str) -> None:
    """One line on stderr, at once."""
    print(message, file=sys.stderr, flush=True)


def search_sample(rows: int, params: TrainParams) -> np.ndarray | None:
    """The sorted indices of the search's seeded sample (of ``search_sample_size``, ``fit_sample_size``); None: all."""
    size = params.search_sample_size or rows
    if not algorithms.REGISTRY[params.algorithm].predicts:  # fitted on at most fit_sample_size rows
        size = min(size, params.algorithm_params.fit_sample_size)
    if rows <= size:
        return None
    return np.sort(np.random.default_rng(params.random_state).choice(rows, size=size, replace=False))


def score(X: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """The elbow curve's score of a clustering, as yellowbrick 1.5's ``KElbowVisualizer`` computes it (to the bit)."""
    from sklearn.metrics import calinski_harabasz_score, pairwise_distances, silhouette_score

    if metric == "silhouette":
        return float(silhouette_score(X, labels, metric="euclidean"))
    if metric == "calinski_harabasz":
        return float(calinski_harabasz_score(X, labels))
    # distortion (yellowbrick's distortion_score): squared distances to the cluster means
    members = [X[labels == label] for label in np.unique(labels)]
    return float(sum((pairwise_distances(m, m.mean(axis=0)[None]) ** 2).sum() for m in members))


def find_knee(x: list[int], y: list[float], curve_nature: str, curve_direction: str, S: float = 1.0) -> int | None:
    """The knee by kneed's ``KneeLocator`` set as yellowbrick 1.5 sets it; None if none, or a flat or 1-point curve."""
    from kneed import KneeLocator

    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    knee = KneeLocator(x, y, S=S, curve=curve_nature, direction=curve_direction, interp_method="interp1d").knee
    return None if knee is None else int(knee)


def check_k_range(X: np.ndarray, params: TrainParams, source: str, sample: np.ndarray | None = None) -> None:
    """:func:`check_k_rows` on the rows of ``X`` (and the search ``sample`` of them)."""
    check_k_rows(len(X), lambda: distinct_rows(X), params, source, sample)


def check_k_rows(rows: int, count_distinct, params: TrainParams, source: str, sample: np.ndarray | None = None) -> None:
    """Fail unless ``rows`` rows can hold ``k_max`` clusters: below the rows, at most rows / ``min_cluster_size``, at
    least ``k_max`` distinct rows (``count_distinct()``, called only when the search ``sample`` has too few)."""
    top, name = params.k_top  # k_max, or a fixed train.k above it
    if top >= rows:
        raise UserError(f"params.yaml: train.{name} ({top}) must be below the number of rows ({rows})")
    if top > (most := rows // params.min_cluster_size):
        raise UserError(
            f"params.yaml: train.{name} ({top}) is more than {rows} rows allow: at most rows / "
            f"train.min_cluster_size ({params.min_cluster_size}) = {most}; lower {name} (or min_cluster_size)"
        )
    if sample is not None and len(sample) < rows and distinct_rows(sample) >= top:
        return
    distinct = count_distinct()
    if distinct < top:
        fix = f"lower train.{name} to at most {distinct} or check the data"
        fix = "nothing to cluster: check the data" if distinct <= min(params.k_min, top) else fix
        raise UserError(
            f"{source}: only {distinct} distinct row(s) among {rows} (identical customers?), fewer than "
            f"train.{name} ({top}); {fix}"
        )
    if sample is not None and len(sample) < rows:
        raise UserError(
            f"{source}: the elbow search's sample of {len(sample)} rows holds only {distinct_rows(sample)} distinct "
            f"row(s), fewer than train.{name} ({top}); raise train.search_sample_size"
        )


def distinct_rows(X: np.ndarray) -> int:
    """How many distinct rows ``X`` has."""
    return len(pd.DataFrame(X).drop_duplicates())


def small_sizes(sizes: np.ndarray, min_size: int) -> dict[int, int]:
    """``{cluster: size}`` of the clusters (``sizes``) with fewer than ``min_size`` rows."""
    return {i: int(n) for i, n in enumerate(sizes) if n < min_size}


def small_cluster_warning(small: dict[int, int], k: int, min_size: int) -> str:
    """One line describing ``small`` clusters, for stderr and the MLflow tag."""
    sizes = ", ".join(f"cluster {i}: {n} row{'s' if n != 1 else ''}" for i, n in small.items())
    singleton = " (singletons are usually outliers: see preprocess.outliers)" if 1 in small.values() else ""
    return (
        f"k={k} has {len(small)} cluster(s) below train.min_cluster_size ({min_size}): {sizes}{singleton}; "
        "check the data or lower train.k_max"
    )


def choose_k(k_values: list[int], scores: list[float], elbow: int | None, metric: str, selection: str):
    """k_best and its rule: the best score (``selection: best_score``), else the elbow, else a fallback: the best
    score, for distortion the largest second difference of the scores (two k: the smaller)."""
    if selection == "best_score" or (elbow is None and metric != "distortion"):
        return k_values[int(np.argmax(scores))], "best_score" if selection == "best_score" else "fallback_best_score"
    if elbow is not None:
        return int(elbow), "elbow"
    if len(scores) < 3:
        return k_values[0], "fallback_k_min"
    return k_values[int(np.argmax(np.diff(np.asarray(scores, dtype=float), n=2))) + 1], "fallback_max_curvature"


def fit_k(X: np.ndarray, k: int, params: TrainParams) -> tuple[Any, float, float]:
    """One search fit with ``k`` clusters on one thread: (model, score or BIC/AIC, seconds)."""
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="openmp"):  # OpenMP's thread count is per calling thread
        model = fit_model(params, k, X)
    if (criterion := algorithms.REGISTRY[params.algorithm].criterion(params)) in ("bic", "aic"):
        return model, float(getattr(model, criterion)(X)), time.perf_counter() - start
    return model, score(X, algorithms.fit_labels(model, X), params.metric), time.perf_counter() - start


def fit_model(params: TrainParams, k: int, X: np.ndarray, **knobs: Any):
    """``train.algorithm`` with ``k`` clusters (and ``knobs``) fitted on ``X``; a refused fit is a one-line error."""
    try:
        return algorithms.make(params, k).set_params(**knobs).fit(X)
    except ValueError as exc:
        raise UserError(
            f"train: {params.algorithm} with k={k} on {len(X)} rows failed: {str(exc).splitlines()[0]} "
            f"(see train.{params.algorithm} in params.yaml, or lower train.k_max)"
        ) from None


def elbow_search(X: np.ndarray, params: TrainParams, source: str = "the model matrix") -> ElbowResult:
    """Check the k range, fit k_min..k_max on the search rows and choose k_best (HDBSCAN: :func:`density_clusters`)."""
    idx = search_sample(len(X), params)
    S = X if idx is None else X[idx]
    density = algorithms.REGISTRY[params.algorithm].criterion(params) is None  # one fit, not one per k
    algorithms.check_memory(params, len(S), 1 if density else min(params.n_threads, params.k_max - params.k_min + 1))
    if density:
        return density_clusters(S, len(X), idx, params)
    check_k_range(X, params, source, sample=S)
    return search_k(S, len(X), idx, params)


def search_k(S: np.ndarray, rows: int, idx: np.ndarray | None, params: TrainParams) -> ElbowResult:
    """The search on its checked rows ``S``: the rows ``idx`` (None: all) of ``rows``."""
    criterion = algorithms.REGISTRY[params.algorithm].criterion(params)
    k_values = sorted(set(range(params.k_min, params.k_max + 1)) | ({params.k} if params.k is not None else set()))
    models, scores = {}, []
    # BLAS's thread limit is process-wide: one thread for all; OpenMP's is set by each worker thread (fit_k).
    with (
        parts("train", f"elbow search {_on(S, rows)}", total=len(k_values), unit="k") as done,
        threadpool_limits(limits=1, user_api="blas"),
        ThreadPoolExecutor(params.n_threads) as pool,
    ):
        for k, future in [(k, pool.submit(fit_k, S, k, params)) for k in k_values]:
            models[k], value, seconds = future.result()
            scores.append(value)
            done(f"k={k}/{k_values[-1]} fitted ({seconds:.1f} s)")
    metric = params.metric if criterion == algorithms.ELBOW else criterion
    if params.k is not None or len(k_values) == 1:  # fixed by the user: no rule to apply
        k_best, rule = (params.k if params.k is not None else k_values[0]), "fixed"
    elif criterion != algorithms.ELBOW:  # an information criterion: the lowest is the best trade-off
        k_best, rule = k_values[int(np.argmin(scores))], f"min_{criterion}"
    else:
        elbow = find_knee(k_values, scores, *CURVES[params.metric]) if params.selection == "elbow" else None
        k_best, rule = choose_k(k_values, scores, elbow, params.metric, params.selection)
    if rule.startswith("fallback"):
        say(f"warning: train: no elbow found in the {params.metric} curve for k={params.k_min}..{params.k_max}; "
            f"using k={k_best} ({rule.removeprefix('fallback_').replace('_', ' ')} rule)")  # fmt: skip
    score_best = scores[k_values.index(k_best)]
    figure = elbow_figure(k_values, scores, k_best, score_best, rule, metric, len(S), rows)
    return ElbowResult(k_values, scores, k_best, score_best, rule, figure, len(S), models, metric, idx)


def _on(S: np.ndarray, rows: int) -> str:
    return f"on {len(S)} of {rows} rows" if len(S) < rows else f"on {rows} rows"


def density_clusters(S: np.ndarray, rows: int, idx: np.ndarray | None, params: TrainParams) -> ElbowResult:
    """An algorithm that finds k itself (HDBSCAN): one fit on the search rows; the "curve" is one point: noise share."""
    start = time.perf_counter()
    params.algorithm_params.check_rows(params.algorithm, len(S))
    with threadpool_limits(limits=params.n_threads):
        model = fit_model(params, 0, S)
    labels = algorithms.fit_labels(model, S)
    sizes = algorithms.cluster_sizes(labels, int(labels.max()) + 1)
    k = len(sizes) - (NOISE in sizes)
    say(f"train: {params.algorithm} {_on(S, rows)}: {algorithms.describe(sizes)} ({time.perf_counter() - start:.1f} s)")
    if k < 2:
        raise UserError(
            f"params.yaml: train.{params.algorithm} found {algorithms.describe(sizes)} in {len(S)} rows; change "
            f"train.{params.algorithm} ({params.algorithm_params.k_setting()}) to find at least 2"
        )
    noise_share = sizes.get(NOISE, 0) / len(S)
    fig, ax = new_figure()
    names = [algorithms.NOISE_NAME if c == NOISE else str(c) for c in sizes]
    ax.bar(names, list(sizes.values()), color=["grey" if c == NOISE else "C0" for c in sizes])
    on = "" if len(S) == rows else f", on a sample of {len(S)} of {rows} rows"
    title = f"No k search ({params.algorithm}: {params.algorithm_params.k_setting()}{on}), k_best = {k} found"
    ax.set(title=title, xlabel="cluster", ylabel="rows")
    return ElbowResult([k], [noise_share], k, noise_share, "density", fig, len(S), {k: model}, "noise_share", idx)


def elbow_figure(k_values: list[int], scores: list[float], k_best: int, score_best: float, rule: str, metric: str,
                 rows: int, total: int):  # fmt: skip
    """The elbow curve as yellowbrick draws it (diamonds, a dashed line at the chosen k), titled with k_best."""
    fig, ax = new_figure()
    ax.plot(k_values, scores, marker="D", color="C0")
    lower = metric in ("bic", "aic")  # information criteria: the lowest wins, no elbow
    label = f"elbow at $k={k_best}$, $score={score_best:0.3f}$" if rule == "elbow" else (
        f"k = {k_best} (fixed in params)" if rule == "fixed" else
        f"lowest {metric} at $k={k_best}$" if lower else f"k = {k_best} ({rule.replace('_', ' ')})"
    )  # fmt: skip
    ax.axvline(k_best, color="black", linestyle="--", label=label)
    on = "" if rows == total else f", on a sample of {rows} of {total} rows"
    title = f"{'k search' if lower else 'Elbow search'} ({metric}{', lower is better' if lower else ''}{on})"
    ax.set(title=f"{title}, k_best = {k_best}", xlabel="number of clusters k", ylabel=f"{metric} score")
    ax.legend(loc="upper right")  # a fixed place: "best" searches every point of the plot
    return fig


def fit_final(X: np.ndarray, elbow: ElbowResult, params: TrainParams) -> Any:
    """The model with k_best clusters for all rows of ``X``: a :class:`CentroidAssigner` of the search's fit (no
    ``predict``), the search's fit when it saw every row, else a fit on all rows (KMeans: from the sample's centres)."""
    k = elbow.k_best
    if not algorithms.REGISTRY[params.algorithm].predicts:
        S = X if elbow.sample is None else X[elbow.sample]
        labels = algorithms.fit_labels(elbow.models[k], S)
        return CentroidAssigner(params.algorithm).fit(S, labels, rows=len(X), fit_rows=elbow.sample)
    if elbow.search_rows == len(X):
        return elbow.models[k]
    start = time.perf_counter()
    kmeans = params.algorithm == "kmeans"  # its n_init restarts on the sample already chose the centres
    algorithms.check_memory(params, len(X), lower="the rows of preprocess.data.path (this fit takes them all)")
    with threadpool_limits(limits=params.n_threads):
        model = fit_model(params, k, X, **({"init": elbow.models[k].cluster_centers_, "n_init": 1} if kmeans else {}))
    start_from = " from the sample's centres" if kmeans else ""
    iterations = f", {model.n_iter_} iterations" if hasattr(model, "n_iter_") else ""
    say(f"train: final fit, k={k} on all {len(X)} rows{start_from} ({time.perf_counter() - start:.1f} s{iterations})")
    return model


def train(
    matrix: pd.DataFrame, id_column: str, params: TrainParams, source: str = "the model matrix"
) -> tuple[ElbowResult, Any]:
    """The search over k (or HDBSCAN's own clusters) then the final model on the matrix's non-ID columns."""
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    elbow = elbow_search(X, params, source)
    return elbow, fit_final(X, elbow, params)

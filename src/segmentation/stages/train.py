"""Stage ``train``: the search over k for ``train.algorithm`` (yellowbrick's elbow scores and kneed's knee for the
k-means family and agglomerative clustering, the lowest BIC/AIC for the Gaussian mixture, none for HDBSCAN), then the
final fit.

The search fits one seeded model (``n_init`` restarts) per k on the search rows: all rows, or above
``search_sample_size`` rows a seeded sample of that many. Fits run ``n_threads`` at a time, each on one thread, so the
scores do not depend on the thread count. The final model is the search's fit at k_best when the search saw every row;
otherwise (KMeans) one KMeans fit on all rows started from the sample's centres at k_best, or (the other algorithms
that predict) one fit on all rows. Algorithms without ``predict`` are fitted on their sample only and extended to the
other rows by :class:`segmentation.algorithms.CentroidAssigner` (see :mod:`segmentation.algorithms`).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from segmentation import algorithms
from segmentation.algorithms import NOISE, CentroidAssigner
from segmentation.config import PreprocessParams, TrainParams, flatten, parse_section
from segmentation.core.plotting import FIGURE_DPI, new_figure
from segmentation.core.progress import Progress
from segmentation.core.segmenter import build_segmenter, input_schema
from segmentation.engines import LOCAL, engine_module
from segmentation.errors import UserError
from segmentation.files import load_model, read_matrix
from segmentation.stages.runner import Outcome, cli


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


def make_kmeans(params: TrainParams, n_clusters: int = 8) -> KMeans:
    """KMeans with every knob explicit: seeded, ``n_init`` fixed (``'auto'`` moves the knee)."""
    return algorithms.REGISTRY["kmeans"].make(params, n_clusters)


def search_sample(rows: int, params: TrainParams) -> np.ndarray | None:
    """The rows the search fits on: None for all of them (``rows`` <= the sample size, or no limit), else the sorted
    indices of a sample drawn without replacement, seeded by ``random_state``.

    The sample size is ``search_sample_size``; for an algorithm without ``predict`` (fitted on its sample only) at
    most its ``fit_sample_size`` too."""
    size = params.search_sample_size
    if not algorithms.get(params).predicts:
        own = params.algorithm_params.fit_sample_size
        size = own if size is None else min(size, own)
    if size is None or rows <= size:
        return None
    return np.sort(np.random.default_rng(params.random_state).choice(rows, size=size, replace=False))


def distortion_score(X: np.ndarray, labels: np.ndarray) -> float:
    """yellowbrick's ``distortion_score``: the sum over clusters of squared Euclidean distances to the cluster mean
    (computed as yellowbrick 1.5 does, so the scores are the same to the last bit)."""
    from sklearn.metrics import pairwise_distances

    total = 0.0
    for label in np.unique(labels):
        members = X[labels == label]
        center = np.array([members.mean(axis=0)])
        total += (pairwise_distances(members, center, metric="euclidean") ** 2).sum()
    return float(total)


def score(X: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """The elbow curve's score of a clustering, as ``KElbowVisualizer`` computes it for ``metric``."""
    if metric == "distortion":
        return distortion_score(X, labels)
    if metric == "silhouette":
        from sklearn.metrics import silhouette_score

        return float(silhouette_score(X, labels, metric="euclidean"))
    from sklearn.metrics import calinski_harabasz_score

    return float(calinski_harabasz_score(X, labels))


# yellowbrick's KElbowVisualizer: the shape of each metric's curve, for the knee locator.
CURVES = {
    "distortion": ("convex", "decreasing"),
    "silhouette": ("concave", "increasing"),
    "calinski_harabasz": ("concave", "increasing"),
}


def find_knee(x: list[int], y: list[float], curve_nature: str, curve_direction: str, S: float = 1.0) -> int | None:
    """The knee (elbow) of the curve ``y(x)`` by kneed's ``KneeLocator`` (the Kneedle algorithm), set as yellowbrick
    1.5's ``KElbowVisualizer`` sets its copy of it: the curve's shape from :data:`CURVES`, ``S=1``, no smoothing
    (``interp1d``), offline (the first knee). None when it finds none, and for a flat curve or fewer than two k
    (kneed would divide by zero). tests/test_train.py compares it with yellowbrick's copy."""
    from kneed import KneeLocator

    xs, ys = np.asarray(x), np.asarray(y, dtype=float)
    if len(xs) < 2 or xs.max() == xs.min() or ys.max() == ys.min():
        return None
    knee = KneeLocator(
        xs, ys, S=S, curve=curve_nature, direction=curve_direction, interp_method="interp1d", online=False
    ).knee
    return None if knee is None else int(knee)


def check_k_range(X: np.ndarray, params: TrainParams, source: str, sample: np.ndarray | None = None) -> None:
    """:func:`check_k_rows` on the rows of ``X`` (and the search ``sample`` of them)."""
    check_k_rows(len(X), lambda: distinct_rows(X), params, source, sample)


def check_k_rows(rows: int, count_distinct, params: TrainParams, source: str, sample: np.ndarray | None = None) -> None:
    """Fail unless ``rows`` rows (and the search ``sample`` of them, when there is one) can hold ``k_max``
    clusters; ``count_distinct()`` counts the distinct rows of all of them (called only when needed).

    - ``k_max`` must be below the number of rows, and at most rows / ``min_cluster_size`` (the documented bound);
    - the rows must include at least ``k_max`` distinct ones (KMeans cannot make more clusters than distinct points:
      with all rows identical every score is 0 and any k would be "chosen"); so must the sample the search fits on.
      Counted on the sample first: all rows are counted only when it holds too few.
    """
    top, name = params.k_top  # k_max, or a fixed train.k above it
    if top >= rows:
        raise UserError(f"params.yaml: train.{name} ({top}) must be below the number of rows ({rows})")
    most = rows // params.min_cluster_size
    if top > most:
        raise UserError(
            f"params.yaml: train.{name} ({top}) is more than {rows} rows allow: at most rows / "
            f"train.min_cluster_size ({params.min_cluster_size}) = {most}; lower {name} (or min_cluster_size)"
        )
    if sample is not None and len(sample) < rows and distinct_rows(sample) >= top:
        return
    distinct = count_distinct()
    if distinct < top:
        fix = (
            "nothing to cluster: check the data"
            if distinct <= min(params.k_min, top)
            else f"lower train.{name} to at most {distinct} or check the data"
        )
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


def small_clusters(labels: np.ndarray, k: int, min_size: int) -> dict[int, int]:
    """Clusters with fewer than ``min_size`` rows: ``{cluster: size}`` (empty when every cluster is big enough;
    noise rows, -1, are no cluster)."""
    return small_sizes(np.bincount(labels[labels != NOISE], minlength=k), min_size)


def small_sizes(sizes: np.ndarray, min_size: int) -> dict[int, int]:
    """Clusters (by number: ``sizes[i]`` rows in cluster i) with fewer than ``min_size`` rows."""
    return {i: int(n) for i, n in enumerate(sizes) if n < min_size}


def small_cluster_warning(small: dict[int, int], k: int, min_size: int) -> str:
    """One line describing ``small`` clusters (from :func:`small_clusters`), for stderr and the MLflow tag."""
    sizes = ", ".join(f"cluster {i}: {n} row{'s' if n != 1 else ''}" for i, n in small.items())
    singleton = " (singletons are usually outliers: see preprocess.outliers)" if 1 in small.values() else ""
    return (
        f"k={k} has {len(small)} cluster(s) below train.min_cluster_size ({min_size}): {sizes}{singleton}; "
        "check the data or lower train.k_max"
    )


def fallback_k(k_values: list[int], scores: list[float], metric: str) -> tuple[int, str]:
    """The documented rule when the knee locator finds no elbow.

    - silhouette / calinski_harabasz (higher is better): the k with the best score;
    - distortion (always decreasing): the k where the curve bends most, i.e. the largest second
      difference of the scores (needs three k values; with two, the smaller k).
    """
    if metric != "distortion":
        i = int(np.argmax(scores))
        return k_values[i], "fallback_best_score"
    if len(scores) < 3:
        return k_values[0], "fallback_k_min"
    second_diff = np.diff(np.asarray(scores, dtype=float), n=2)
    return k_values[int(np.argmax(second_diff)) + 1], "fallback_max_curvature"


def choose_k(
    k_values: list[int], scores: list[float], elbow: int | None, metric: str, selection: str
) -> tuple[int, str]:
    """Pick k_best: the elbow (or the best score) per ``selection``; never returns None."""
    if selection == "best_score":
        i = int(np.argmax(scores))
        return k_values[i], "best_score"
    if elbow is not None:
        return int(elbow), "elbow"
    return fallback_k(k_values, scores, metric)


def fit_k(X: np.ndarray, k: int, params: TrainParams) -> tuple[Any, float, float]:
    """One search fit: ``train.algorithm`` seeded with ``k`` clusters on one thread; returns (model, score,
    seconds). The score is ``train.metric``'s (elbow) or the model's BIC/AIC."""
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="openmp"):  # OpenMP's thread count is per calling thread
        model = fit_model(params, k, X)
    criterion = algorithms.get(params).criterion(params)
    if criterion in ("bic", "aic"):
        value = float(getattr(model, criterion)(X))
    else:
        value = score(X, algorithms.fit_labels(model, X), params.metric)
    return model, value, time.perf_counter() - start


def fit_model(params: TrainParams, k: int, X: np.ndarray):
    """``train.algorithm`` with ``k`` clusters fitted on ``X``. A fit the library refuses (e.g. a Gaussian mixture
    component with an ill-defined covariance on too few distinct rows) is a user error naming the algorithm's
    params, not a traceback."""
    try:
        return algorithms.make(params, k).fit(X)
    except ValueError as exc:
        raise UserError(
            f"train: {params.algorithm} with k={k} on {len(X)} rows failed: {str(exc).splitlines()[0]} "
            f"(see train.{params.algorithm} in params.yaml, or lower train.k_max)"
        ) from None


def elbow_search(X: np.ndarray, params: TrainParams, source: str = "the model matrix") -> ElbowResult:
    """Fit ``train.algorithm`` for k in [k_min, k_max] on the search rows and choose k_best (progress per k on
    stderr): the elbow of ``train.metric``'s curve, or the lowest BIC/AIC (Gaussian mixture). HDBSCAN has no search
    (:func:`density_clusters`).

    ``source`` names the matrix in error messages (see :func:`check_k_range`).
    """
    criterion = algorithms.get(params).criterion(params)
    if criterion is None:
        return density_clusters(X, params)
    idx = search_sample(len(X), params)
    S = X if idx is None else X[idx]
    check_k_range(X, params, source, sample=S)
    return search_k(S, len(X), idx, params)


def search_k(S: np.ndarray, rows: int, idx: np.ndarray | None, params: TrainParams) -> ElbowResult:
    """The search of :func:`elbow_search` on its rows ``S``: the rows ``idx`` (None: all) of a matrix of ``rows``
    rows, checked (:func:`check_k_range`)."""
    criterion = algorithms.get(params).criterion(params)
    k_values = sorted(set(range(params.k_min, params.k_max + 1)) | ({params.k} if params.k is not None else set()))
    fits: dict[int, tuple[Any, float]] = {}
    what = f"on {len(S)} of {rows} rows" if idx is not None else f"on {rows} rows"
    # BLAS's thread limit is process-wide: one thread for all; OpenMP's is set by each worker thread (fit_k).
    with (
        Progress("train", f"elbow search {what}", total=len(k_values), unit="k") as progress,
        threadpool_limits(limits=1, user_api="blas"),
        ThreadPoolExecutor(params.n_threads) as pool,
    ):
        futures = {k: pool.submit(fit_k, S, k, params) for k in k_values}
        for k in k_values:
            model, value, seconds = futures[k].result()
            fits[k] = (model, value)
            progress.step(f"k={k}/{k_values[-1]} fitted ({seconds:.1f} s)")
    scores = [fits[k][1] for k in k_values]
    metric = params.metric if criterion == algorithms.ELBOW else criterion
    if params.k is not None or len(k_values) == 1:  # fixed by the user: no rule to apply
        k_best, rule = (params.k if params.k is not None else k_values[0]), "fixed"
    elif criterion != algorithms.ELBOW:  # an information criterion: the lowest is the best trade-off
        k_best, rule = k_values[int(np.argmin(scores))], f"min_{criterion}"
    else:
        elbow = find_knee(k_values, scores, *CURVES[params.metric]) if params.selection == "elbow" else None
        k_best, rule = choose_k(k_values, scores, elbow, params.metric, params.selection)
    if rule.startswith("fallback"):
        print(
            f"warning: train: no elbow found in the {params.metric} curve for k={params.k_min}..{params.k_max}; "
            f"using k={k_best} ({rule.removeprefix('fallback_').replace('_', ' ')} rule)",
            file=sys.stderr,
        )
    score_best = scores[k_values.index(k_best)]
    figure = elbow_figure(k_values, scores, k_best, score_best, rule, metric, len(S), rows)
    models = {k: model for k, (model, _) in fits.items()}
    return ElbowResult(k_values, scores, k_best, score_best, rule, figure, len(S), models, metric, idx)


def density_clusters(X: np.ndarray, params: TrainParams) -> ElbowResult:
    """An algorithm that finds k itself (HDBSCAN): no search over k; one fit on the search rows finds the clusters
    (and noise) itself. Its "curve" is one point: k found, with the share of noise rows as the score; the figure
    shows the clusters' sizes."""
    idx = search_sample(len(X), params)
    S = X if idx is None else X[idx]
    start = time.perf_counter()
    params.algorithm_params.check_rows(params.algorithm, len(S))
    with threadpool_limits(limits=params.n_threads):
        model = fit_model(params, 0, S)
    labels = algorithms.fit_labels(model, S)
    sizes = algorithms.cluster_sizes(labels, int(labels.max()) + 1)
    k = sum(1 for c in sizes if c != NOISE)
    what = f"on {len(S)} of {len(X)} rows" if idx is not None else f"on {len(X)} rows"
    print(
        f"train: {params.algorithm} {what}: {algorithms.describe(sizes)} ({time.perf_counter() - start:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    if k < 2:
        raise UserError(
            f"params.yaml: train.{params.algorithm} found {algorithms.describe(sizes)} in {len(S)} rows; change "
            f"train.{params.algorithm} ({params.algorithm_params.k_setting()}) to find at least 2"
        )
    noise_share = sizes.get(NOISE, 0) / len(S)
    figure = sizes_figure(sizes, params, len(S), len(X))
    return ElbowResult([k], [noise_share], k, noise_share, "density", figure, len(S), {k: model}, "noise_share", idx)


def sizes_figure(sizes: dict[int, int], params: TrainParams, rows: int, total: int):
    """The stand-in for the elbow plot of an algorithm that finds k itself (HDBSCAN): the size of each cluster it
    found, noise included."""
    fig, ax = new_figure()
    names = [algorithms.NOISE_NAME if c == NOISE else str(c) for c in sizes]
    ax.bar(names, list(sizes.values()), color=["grey" if c == NOISE else "C0" for c in sizes])
    on = "" if rows == total else f", on a sample of {rows} of {total} rows"
    k = sum(1 for c in sizes if c != NOISE)
    ax.set_title(f"No k search ({params.algorithm}: {params.algorithm_params.k_setting()}{on}), k_best = {k} found")
    ax.set_xlabel("cluster")
    ax.set_ylabel("rows")
    return fig


def elbow_figure(
    k_values: list[int], scores: list[float], k_best: int, score_best: float, rule: str, metric: str, rows: int,
    total: int,
):  # fmt: skip
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
    ax.set_title(f"{'k search' if lower else 'Elbow search'} ({metric}{', lower is better' if lower else ''}{on}), "
                 f"k_best = {k_best}")  # fmt: skip
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel(f"{metric} score")
    ax.legend(loc="upper right")  # a fixed place: "best" searches every point of the plot
    return fig


def fit_final(X: np.ndarray, elbow: ElbowResult, params: TrainParams) -> Any:
    """The final model with ``elbow.k_best`` clusters on all rows of ``X``.

    - An algorithm without ``predict``: a :class:`CentroidAssigner` of the search's fit at k_best (its labels on the
      search rows, the nearest centroid for the others and for new customers).
    - Otherwise the search's own fit when it saw every row. Else, KMeans: one run on all rows (``n_threads``
      threads) started from the centres the search found on its sample (its ``n_init`` restarts already chose
      them); the other algorithms: one fit with k_best on all rows.
    """
    k = elbow.k_best
    if not algorithms.get(params).predicts:
        S = X if elbow.sample is None else X[elbow.sample]
        fitted = elbow.models[k]
        return CentroidAssigner(params.algorithm).fit(
            S, algorithms.fit_labels(fitted, S), rows=len(X), fit_rows=elbow.sample
        )
    if elbow.search_rows == len(X):
        return elbow.models[k]
    start = time.perf_counter()
    with threadpool_limits(limits=params.n_threads):
        if params.algorithm == "kmeans":
            centres = elbow.models[k].cluster_centers_
            model = KMeans(
                n_clusters=k, init=centres, n_init=1, max_iter=params.max_iter, random_state=params.random_state,
                algorithm=params.kmeans.method,
            ).fit(X)  # fmt: skip
        else:
            model = fit_model(params, k, X)
    start_from = " from the sample's centres" if params.algorithm == "kmeans" else ""
    print(
        f"train: final fit, k={k} on all {len(X)} rows{start_from} "
        f"({time.perf_counter() - start:.1f} s"
        f"{f', {model.n_iter_} iterations' if hasattr(model, 'n_iter_') else ''})",
        file=sys.stderr,
        flush=True,
    )
    return model


def train(
    matrix: pd.DataFrame, id_column: str, params: TrainParams, source: str = "the model matrix"
) -> tuple[ElbowResult, Any]:
    """The search over k (or HDBSCAN's own clusters) then the final model on the matrix's non-ID columns."""
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    elbow = elbow_search(X, params, source)
    return elbow, fit_final(X, elbow, params)


MLFLOW_MODEL_NAME = "segmenter"  # the train run's MLflow model: runs:/<run id>/segmenter


def save_mlflow_model(segmenter, folder: str) -> str:
    """Write ``segmenter`` as an MLflow model (sklearn flavor, input signature of the raw columns) into
    ``folder``/segmenter; returns its path. Its ``MLmodel`` holds a creation time and a UUID: it is logged to the
    run, never a DVC output (``models/segmenter.joblib`` is).

    The requirements are given, not inferred (inferring them loads the model in a subprocess: seconds); with
    ``--env-manager local`` they are not installed: the model runs in the project's environment, which provides
    the ``segmentation`` package its feature step comes from.
    """
    from importlib.metadata import version

    import mlflow.sklearn

    from segmentation.tracking.store import MLFLOW_SERIALIZATION, quiet_mlflow

    path = f"{folder}/{MLFLOW_MODEL_NAME}"
    requirements = [f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "pandas", "numpy", "cloudpickle")]
    with quiet_mlflow():  # its notes on pickle safety and pip's version are not the user's concern here
        mlflow.sklearn.save_model(
            segmenter,
            path,
            signature=input_schema(segmenter),
            pip_requirements=requirements,
            serialization_format=MLFLOW_SERIALIZATION,
        )
    return path


def work(args, params: TrainParams, raw_params: dict[str, Any]) -> Outcome:
    """Read the matrix, run :func:`train`, build the segmenter; say what to write and log. Another
    ``preprocess.engine`` does its own work (:func:`segmentation.engines.engine_module`)."""
    if args.segmenter and not args.preprocessor:
        raise UserError("--segmenter needs --preprocessor (the fitted preprocessing it includes)")
    # The segmenter's feature step is the preprocess recipe; preprocess.engine says where the matrix is.
    preprocess_params: PreprocessParams | None = None
    if args.segmenter or raw_params.get("preprocess") is not None:
        preprocess_params = parse_section("preprocess", raw_params.get("preprocess"), args.params)
    if preprocess_params is not None and preprocess_params.engine != LOCAL:
        return engine_module(preprocess_params.engine, "train").work(args, params, preprocess_params)
    matrix = read_matrix(args.matrix, stage="preprocess")
    preprocessor = load_model(args.preprocessor, stage="preprocess") if args.segmenter else None
    id_column = matrix.columns[0]
    elbow, model = train(matrix, id_column, params, source=args.matrix)
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    labels = algorithms.fit_labels(model, X)
    noise_share = float((labels == NOISE).mean()) if algorithms.get(params).noise else None
    sizes = np.bincount(labels[labels != NOISE], minlength=elbow.k_best)
    segmenter = build_segmenter(preprocess_params, preprocessor, model) if args.segmenter else None
    return outcome(args, params, elbow, model, algorithms.fit_record(model, X), sizes, noise_share, segmenter)


def outcome(
    args, params: TrainParams, elbow: ElbowResult, model: Any, record: dict[str, float], sizes: np.ndarray,
    noise_share: float | None, segmenter: Any,
) -> Outcome:  # fmt: skip
    """What train writes and logs, from the search, the final model, its fit record (:func:`algorithms.fit_record`)
    and its clusters' sizes on all rows (noise apart, ``noise_share`` of them; None: no noise)."""
    # The criterion that chose k names the score (distortion_at_k_best, bic_at_k_best); inertia only where the
    # algorithm has one (k-means family), the Gaussian mixture's log-likelihood instead: evaluate checks the model.
    metrics: dict[str, Any] = {"k_best": elbow.k_best}
    if elbow.rule != "density":  # HDBSCAN has no criterion: it found k itself (noise_share below)
        metrics[f"{elbow.metric}_at_k_best"] = elbow.score_best
    metrics.update(record)
    if hasattr(model, "n_iter_"):
        metrics["n_iter"] = int(model.n_iter_)
    metrics["search_rows"] = elbow.search_rows  # all rows, or the seeded sample (search/fit_sample_size)
    if noise_share is not None:
        metrics["noise_share"] = noise_share
    tags = {"k_rule": elbow.rule}
    small = small_sizes(sizes, params.min_cluster_size)
    if small:  # a warning, kept with the results: in metrics/train.json and as an MLflow tag
        message = small_cluster_warning(small, elbow.k_best, params.min_cluster_size)
        print(f"warning: train: {message}", file=sys.stderr)
        metrics.update(clusters_below_min_size=len(small), smallest_cluster_size=min(small.values()))
        tags["warning_small_clusters"] = message

    def write(out, log) -> None:
        out.dump_model(args.model, model)
        if segmenter is not None:
            out.dump_model(args.segmenter, segmenter)
        out.save_figure(args.elbow_plot, elbow.figure, dpi=FIGURE_DPI)
        out.write_csv(
            args.elbow_scores,
            pd.DataFrame({"k": elbow.k_values, "score": elbow.scores, "metric": elbow.metric}),
        )
        out.write_json(args.metrics, {**metrics, "k_rule": elbow.rule})
        log.log_params(flatten(params, "train."))
        log.log_metrics(metrics)
        log.set_tags(tags)
        log.log_artifact(args.model)
        log.log_artifact(args.elbow_plot)
        log.log_artifact(args.elbow_scores)
        if segmenter is not None:
            log.log_artifact_dir(save_mlflow_model(segmenter, str(out.scratch("segmenter-"))), MLFLOW_MODEL_NAME)

    return Outcome(write, f"train: k_best = {elbow.k_best} ({elbow.rule}), {elbow.metric} = {elbow.score_best:.4g}")


main = cli(
    "train",
    __doc__,
    work,
    {
        "matrix": "input: ID + transformed matrix (.parquet or .csv)",
        "model": "output: the fitted clusterer of train.algorithm (pickle)",
        "preprocessor": "input: fitted preprocessing (pickle); needed with --segmenter",
        "segmenter": "output: raw row -> segment, a scikit-learn Pipeline (pickle), also an MLflow model",
        "elbow_plot": "output: elbow plot (PNG)",
        "elbow_scores": "output: score per k (CSV, DVC plot data)",
        "metrics": "output: k_best and its score (JSON)",
    },
    optional={"preprocessor", "segmenter"},
    params_model=TrainParams,
)


if __name__ == "__main__":
    main()

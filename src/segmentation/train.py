"""Stage ``train``: elbow search over k (yellowbrick's scores and knee rule), then the final KMeans fit.

The search fits one seeded KMeans (``n_init`` restarts) per k on the search rows: all rows, or above
``search_sample_size`` rows a seeded sample of that many. Fits run ``n_threads`` at a time, each on one thread, so the
scores do not depend on the thread count. The final model is the search's fit at k_best when the search saw every row;
otherwise one KMeans fit on all rows started from the sample's centres at k_best.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from segmentation.errors import exit_on_interrupt
from segmentation.store_helper import run_warm, start_store_helper

if __name__ == "__main__":  # run as a stage: MLflow (and the libraries) get ready in a helper process
    exit_on_interrupt("train")
    start_store_helper()
    run_warm("train")  # the later stages of a dvc repro: in a fork of the helper, libraries loaded


import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from segmentation.config import PreprocessParams, TrainParams, flatten, parse_section
from segmentation.errors import UserError
from segmentation.files import load_model, read_matrix
from segmentation.plotting import FIGURE_DPI, new_figure
from segmentation.progress import Progress
from segmentation.segmenter import build_segmenter, input_schema
from segmentation.stage import Outcome, cli, exit_now


@dataclass
class ElbowResult:
    """Scores per k, the k chosen and by which rule."""

    k_values: list[int]
    scores: list[float]
    k_best: int
    score_best: float
    rule: str  # "elbow", "best_score", or the fallback used when no elbow was found
    figure: object  # the drawn matplotlib Figure
    search_rows: int = 0  # rows the search fitted on: all of them, or the seeded sample
    models: dict[int, KMeans] = field(default_factory=dict, repr=False)  # the search's fit per k


def make_kmeans(params: TrainParams, n_clusters: int = 8) -> KMeans:
    """KMeans with every knob explicit: seeded, ``n_init`` fixed (``'auto'`` moves the knee)."""
    return KMeans(
        n_clusters=n_clusters,
        n_init=params.n_init,
        max_iter=params.max_iter,
        random_state=params.random_state,
    )


def search_sample(rows: int, params: TrainParams) -> np.ndarray | None:
    """The rows the elbow search fits on: None for all of them (``rows`` <= ``search_sample_size``, or no limit),
    else the sorted indices of a sample of ``search_sample_size`` rows drawn without replacement, seeded by
    ``random_state``."""
    size = params.search_sample_size
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
    """The knee (elbow) of the curve ``y(x)`` by yellowbrick 1.5's ``KneeLocator`` (the Kneedle algorithm, offline
    mode, first knee), or None when it finds none. A port of its code without importing yellowbrick (~2 s);
    tests/test_degenerate_model.py checks it against yellowbrick."""
    from scipy.signal import argrelextrema

    xs, ys = np.asarray(x), np.asarray(y, dtype=float)
    if len(xs) < 2 or xs.max() == xs.min() or ys.max() == ys.min():
        return None
    x_norm = (xs - xs.min()) / (xs.max() - xs.min())
    y_norm = (ys - ys.min()) / (ys.max() - ys.min())
    if curve_direction == "decreasing":  # turn an elbow into a knee (concave, increasing)
        y_norm = np.flip(y_norm) if curve_nature == "concave" else y_norm.max() - y_norm
    elif curve_nature == "convex":
        y_norm = np.flip(y_norm.max() - y_norm)
    y_diff = y_norm - x_norm
    maxima = argrelextrema(y_diff, np.greater_equal)[0]
    minima = argrelextrema(y_diff, np.less_equal)[0]
    if not maxima.size:
        return None
    thresholds = y_diff[maxima] - S * np.abs(np.diff(x_norm).mean())
    max_index = 0
    threshold, threshold_index = None, None
    for i, xi in enumerate(x_norm):
        if i < maxima[0]:
            continue
        if xi == 1.0:
            break
        if (maxima == i).any():
            threshold, threshold_index = thresholds[max_index], i
            max_index += 1
        if (minima == i).any():
            threshold = 0.0
        if y_diff[i + 1] < threshold:
            if (curve_nature == "convex") == (curve_direction == "decreasing"):
                return int(xs[threshold_index])
            return int(xs[-(threshold_index + 1)])
    return None


def check_k_range(X: np.ndarray, params: TrainParams, source: str, sample: np.ndarray | None = None) -> None:
    """Fail unless the rows of ``X`` (and the search ``sample`` of them, when there is one) can hold ``k_max``
    clusters.

    - ``k_max`` must be below the number of rows, and at most rows / ``min_cluster_size`` (the documented bound);
    - ``X`` must have at least ``k_max`` distinct rows (KMeans cannot make more clusters than distinct points: with
      all rows identical every score is 0 and any k would be "chosen"); so must the sample the search fits on.
      Counted on the sample first: all rows are counted only when it holds too few.
    """
    rows = len(X)
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
    distinct = distinct_rows(X)
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
    """Clusters with fewer than ``min_size`` rows: ``{cluster: size}`` (empty when every cluster is big enough)."""
    sizes = np.bincount(labels, minlength=k)
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
    """The documented rule when yellowbrick finds no elbow.

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


def fit_k(X: np.ndarray, k: int, params: TrainParams) -> tuple[KMeans, float, float]:
    """One search fit: seeded KMeans with ``k`` clusters on one thread; returns (model, score, seconds)."""
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="openmp"):  # OpenMP's thread count is per calling thread
        model = make_kmeans(params, n_clusters=k).fit(X)
    return model, score(X, model.labels_, params.metric), time.perf_counter() - start


def elbow_search(X: np.ndarray, params: TrainParams, source: str = "the model matrix") -> ElbowResult:
    """Fit KMeans for k in [k_min, k_max] on the search rows and choose k_best (progress per k on stderr).

    ``source`` names the matrix in error messages (see :func:`check_k_range`).
    """
    idx = search_sample(len(X), params)
    S = X if idx is None else X[idx]
    check_k_range(X, params, source, sample=S)
    k_values = sorted(set(range(params.k_min, params.k_max + 1)) | ({params.k} if params.k is not None else set()))
    fits: dict[int, tuple[KMeans, float]] = {}
    what = f"on {len(S)} of {len(X)} rows" if idx is not None else f"on {len(X)} rows"
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
    if params.k is not None or len(k_values) == 1:  # fixed by the user: no rule to apply
        k_best, rule = (params.k if params.k is not None else k_values[0]), "fixed"
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
    figure = elbow_figure(k_values, scores, k_best, score_best, rule, params.metric, len(S), len(X))
    return ElbowResult(
        k_values, scores, k_best, score_best, rule, figure, len(S), {k: model for k, (model, _) in fits.items()}
    )


def elbow_figure(
    k_values: list[int], scores: list[float], k_best: int, score_best: float, rule: str, metric: str, rows: int,
    total: int,
):  # fmt: skip
    """The elbow curve as yellowbrick draws it (diamonds, a dashed line at the chosen k), titled with k_best."""
    fig, ax = new_figure()
    ax.plot(k_values, scores, marker="D", color="C0")
    label = f"elbow at $k={k_best}$, $score={score_best:0.3f}$" if rule == "elbow" else (
        f"k = {k_best} (fixed in params)" if rule == "fixed" else f"k = {k_best} ({rule.replace('_', ' ')})"
    )  # fmt: skip
    ax.axvline(k_best, color="black", linestyle="--", label=label)
    on = "" if rows == total else f", on a sample of {rows} of {total} rows"
    ax.set_title(f"Elbow search ({metric}{on}), k_best = {k_best}")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel(f"{metric} score")
    ax.legend(loc="upper right")  # a fixed place: "best" searches every point of the plot
    return fig


def fit_final(X: np.ndarray, elbow: ElbowResult, params: TrainParams) -> KMeans:
    """The final model with ``elbow.k_best`` clusters on all rows of ``X``.

    The search's own fit when it saw every row; otherwise one KMeans run on all rows (``n_threads`` threads) started
    from the centres the search found on its sample (its ``n_init`` restarts already chose them).
    """
    k = elbow.k_best
    if elbow.search_rows == len(X):
        return elbow.models[k]
    start = time.perf_counter()
    centres = elbow.models[k].cluster_centers_
    model = KMeans(n_clusters=k, init=centres, n_init=1, max_iter=params.max_iter, random_state=params.random_state)
    with threadpool_limits(limits=params.n_threads):
        model.fit(X)
    print(
        f"train: final fit, k={k} on all {len(X)} rows from the sample's centres "
        f"({time.perf_counter() - start:.1f} s, {model.n_iter_} iterations)",
        file=sys.stderr,
        flush=True,
    )
    return model


def train(
    matrix: pd.DataFrame, id_column: str, params: TrainParams, source: str = "the model matrix"
) -> tuple[ElbowResult, KMeans]:
    """Elbow search then final model on the matrix's non-ID columns."""
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

    from segmentation.store import quiet_mlflow

    path = f"{folder}/{MLFLOW_MODEL_NAME}"
    requirements = [f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "pandas", "numpy", "cloudpickle")]
    with quiet_mlflow():  # its notes on pickle safety and pip's version are not the user's concern here
        mlflow.sklearn.save_model(
            segmenter,
            path,
            signature=input_schema(segmenter),
            pip_requirements=requirements,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    return path


def work(args, params: TrainParams, raw_params: dict[str, Any]) -> Outcome:
    """Read the matrix, run :func:`train`, build the segmenter; say what to write and log."""
    if args.segmenter and not args.preprocessor:
        raise UserError("--segmenter needs --preprocessor (the fitted preprocessing it includes)")
    matrix = read_matrix(args.matrix, stage="preprocess")
    if args.segmenter:  # the segmenter's feature step is the preprocess recipe
        preprocess_params: PreprocessParams = parse_section("preprocess", raw_params.get("preprocess"), args.params)
        preprocessor = load_model(args.preprocessor, stage="preprocess")
    id_column = matrix.columns[0]
    elbow, model = train(matrix, id_column, params, source=args.matrix)
    metrics = {
        "k_best": elbow.k_best,
        f"{params.metric}_at_k_best": elbow.score_best,
        "inertia": float(model.inertia_),
        "n_iter": int(model.n_iter_),
        "search_rows": elbow.search_rows,  # all rows, or the seeded sample (train.search_sample_size)
    }
    tags = {"k_rule": elbow.rule}
    small = small_clusters(model.labels_, elbow.k_best, params.min_cluster_size)
    if small:  # a warning, kept with the results: in metrics/train.json and as an MLflow tag
        message = small_cluster_warning(small, elbow.k_best, params.min_cluster_size)
        print(f"warning: train: {message}", file=sys.stderr)
        metrics.update(clusters_below_min_size=len(small), smallest_cluster_size=min(small.values()))
        tags["warning_small_clusters"] = message
    segmenter = build_segmenter(preprocess_params, preprocessor, model) if args.segmenter else None

    def write(out, log) -> None:
        out.dump_model(args.model, model)
        if segmenter is not None:
            out.dump_model(args.segmenter, segmenter)
        out.save_figure(args.elbow_plot, elbow.figure, dpi=FIGURE_DPI)
        out.write_csv(
            args.elbow_scores,
            pd.DataFrame({"k": elbow.k_values, "score": elbow.scores, "metric": params.metric}),
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

    return Outcome(write, f"train: k_best = {elbow.k_best} ({elbow.rule}), {params.metric} = {elbow.score_best:.4g}")


main = cli(
    "train",
    __doc__,
    work,
    {
        "matrix": "input: ID + transformed matrix (.parquet or .csv)",
        "model": "output: fitted KMeans (pickle)",
        "preprocessor": "input: fitted preprocessing (pickle); needed with --segmenter",
        "segmenter": "output: raw row -> segment, a scikit-learn Pipeline (pickle), also an MLflow model",
        "elbow_plot": "output: elbow plot (PNG)",
        "elbow_scores": "output: score per k (CSV, DVC plot data)",
        "metrics": "output: k_best and its score (JSON)",
    },
    optional={"preprocessor", "segmenter"},
)


if __name__ == "__main__":
    main()
    exit_now()  # succeeded: skip the interpreter's teardown

"""Stage ``train``: elbow search over k with yellowbrick's ``KElbowVisualizer``, then the final KMeans fit."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from segmentation.config import TrainParams, flatten, load_section
from segmentation.errors import UserError, stage_entrypoint
from segmentation.files import read_matrix
from segmentation.plotting import FIGURE_DPI, new_figure
from segmentation.stage import run as run_stage


@dataclass
class ElbowResult:
    """Scores per k, the k chosen and by which rule."""

    k_values: list[int]
    scores: list[float]
    k_best: int
    score_best: float
    rule: str  # "elbow", "best_score", or the fallback used when no elbow was found
    figure: object  # the drawn matplotlib Figure


def make_kmeans(params: TrainParams, n_clusters: int = 8) -> KMeans:
    """KMeans with every knob explicit: seeded, ``n_init`` fixed (``'auto'`` moves the knee)."""
    return KMeans(
        n_clusters=n_clusters,
        n_init=params.n_init,
        max_iter=params.max_iter,
        random_state=params.random_state,
    )


class ProgressKMeans(KMeans):
    """KMeans that prints one line per fit on stderr: yellowbrick's elbow search fits one model per k silently.

    Same parameters and ``fit`` as KMeans, so the scores are those of a plain KMeans. ``k_max`` (an attribute, not
    a parameter) is shown as the end of the search.
    """

    k_max: int | None = None

    def fit(self, X, y=None, sample_weight=None):
        """Fit as KMeans does, then print ``train: k=4/10 fitted (0.3 s)``."""
        start = time.perf_counter()
        super().fit(X, y=y, sample_weight=sample_weight)
        of = f"/{self.k_max}" if self.k_max else ""
        print(
            f"train: k={self.n_clusters}{of} fitted ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True
        )
        return self


def check_k_range(X: np.ndarray, params: TrainParams, source: str) -> None:
    """Fail unless the rows of ``X`` can hold ``k_max`` clusters.

    - ``k_max`` must be below the number of rows, and at most rows / ``min_cluster_size`` (the documented bound);
    - ``X`` must have at least ``k_max`` distinct rows (KMeans cannot make more clusters than distinct points: with
      all rows identical every score is 0 and any k would be "chosen").
    """
    rows = len(X)
    if params.k_max >= rows:
        raise UserError(f"params.yaml: train.k_max ({params.k_max}) must be below the number of rows ({rows})")
    most = rows // params.min_cluster_size
    if params.k_max > most:
        raise UserError(
            f"params.yaml: train.k_max ({params.k_max}) is more than {rows} rows allow: at most rows / "
            f"train.min_cluster_size ({params.min_cluster_size}) = {most}; lower k_max (or min_cluster_size)"
        )
    distinct = len(pd.DataFrame(X).drop_duplicates())
    if distinct < params.k_max:
        fix = (
            "nothing to cluster: check the data"
            if distinct <= params.k_min
            else f"lower train.k_max to at most {distinct} or check the data"
        )
        raise UserError(
            f"{source}: only {distinct} distinct row(s) among {rows} (identical customers?), fewer than "
            f"train.k_max ({params.k_max}); {fix}"
        )


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


def elbow_search(X: np.ndarray, params: TrainParams, source: str = "the model matrix") -> ElbowResult:
    """Fit KMeans for k in [k_min, k_max] with ``KElbowVisualizer`` and choose k_best (one progress line per k).

    ``source`` names the matrix in error messages (see :func:`check_k_range`).
    """
    from segmentation.plotting import kelbow_visualizer_class

    KElbowVisualizer = kelbow_visualizer_class()
    check_k_range(X, params, source)
    estimator = ProgressKMeans(**make_kmeans(params).get_params())
    estimator.k_max = params.k_max
    fig, ax = new_figure()
    viz = KElbowVisualizer(
        estimator,
        ax=ax,
        k=(params.k_min, params.k_max + 1),  # yellowbrick's (start, stop) is half-open
        metric=params.metric,
        timings=False,  # fit times differ run to run; keep the plot reproducible
        locate_elbow=params.selection == "elbow",
        # yellowbrick 1.5 rejects KMeans under scikit-learn >= 1.8 (yellowbrick #1331); the model is a clusterer.
        force_model=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viz.fit(X)
    for w in caught:
        if "knee" not in str(w.message) and "elbow" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    k_values = [int(k) for k in viz.k_values_]
    scores = [float(s) for s in viz.k_scores_]
    elbow = viz.elbow_value_ if params.selection == "elbow" else None
    k_best, rule = choose_k(k_values, scores, elbow, params.metric, params.selection)
    if rule.startswith("fallback"):
        print(
            f"warning: train: no elbow found in the {params.metric} curve for k={params.k_min}..{params.k_max}; "
            f"using k={k_best} ({rule.removeprefix('fallback_').replace('_', ' ')} rule)",
            file=sys.stderr,
        )
    score_best = scores[k_values.index(k_best)]
    if rule != "elbow":
        ax.axvline(k_best, color="black", linestyle="--", label=f"k = {k_best} ({rule.replace('_', ' ')})")
    viz.finalize()
    ax.set_title(f"Elbow search ({params.metric}), k_best = {k_best}")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel(f"{params.metric} score")
    ax.legend(loc="best")
    return ElbowResult(k_values, scores, k_best, score_best, rule, fig)


def fit_final(X: np.ndarray, k: int, params: TrainParams) -> KMeans:
    """Fit the final KMeans with ``k`` clusters."""
    return make_kmeans(params, n_clusters=k).fit(X)


def train(
    matrix: pd.DataFrame, id_column: str, params: TrainParams, source: str = "the model matrix"
) -> tuple[ElbowResult, KMeans]:
    """Elbow search then final fit on the matrix's non-ID columns, with the thread count fixed."""
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    with threadpool_limits(limits=params.n_threads):
        elbow = elbow_search(X, params, source)
        model = fit_final(X, elbow.k_best, params)
    return elbow, model


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI of the ``train`` stage."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--matrix", required=True, help="input: ID + transformed matrix (CSV)")
    parser.add_argument("--model", required=True, help="output: fitted KMeans (pickle)")
    parser.add_argument("--elbow-plot", required=True, help="output: elbow plot (PNG)")
    parser.add_argument("--elbow-scores", required=True, help="output: score per k (CSV, DVC plot data)")
    parser.add_argument("--metrics", required=True, help="output: k_best and its score (JSON)")
    parser.add_argument("--dagshub-dir", required=True, help="output: DAGsHubLogger metrics.csv + params.yml")
    args = parser.parse_args(argv)

    params: TrainParams = load_section("train", args.params)
    matrix = read_matrix(args.matrix, stage="preprocess")
    id_column = matrix.columns[0]
    elbow, model = train(matrix, id_column, params, source=args.matrix)
    metrics = {
        "k_best": elbow.k_best,
        f"{params.metric}_at_k_best": elbow.score_best,
        "inertia": float(model.inertia_),
        "n_iter": int(model.n_iter_),
    }
    tags = {"k_rule": elbow.rule}
    small = small_clusters(model.labels_, elbow.k_best, params.min_cluster_size)
    if small:  # a warning, kept with the results: in metrics/train.json and as an MLflow tag
        message = small_cluster_warning(small, elbow.k_best, params.min_cluster_size)
        print(f"warning: train: {message}", file=sys.stderr)
        metrics.update(clusters_below_min_size=len(small), smallest_cluster_size=min(small.values()))
        tags["warning_small_clusters"] = message

    with run_stage("train", args.dagshub_dir) as (out, log):
        out.dump_model(args.model, model)
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
    print(f"train: k_best = {elbow.k_best} ({elbow.rule}), {params.metric} = {elbow.score_best:.4g}")


if __name__ == "__main__":
    main()

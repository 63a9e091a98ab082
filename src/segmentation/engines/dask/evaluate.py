"""Stage ``evaluate`` on the Dask engine (``preprocess.engine: dask``): its ``work``
(:func:`segmentation.stages.evaluate.work` hands over to it). The tables stay in the cluster: sizes, profiles and
the scores by group-bys over every row, the sampled measures on the local engine's seeded samples; the outputs are
the local engine's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from segmentation import algorithms
from segmentation.config import EvaluateParams, PreprocessParams
from segmentation.core import report
from segmentation.core.figures import profile_plot, projection_figure, silhouette_plot
from segmentation.core.quality import (
    CLUSTER_COLUMN,
    Evaluation,
    assemble_profile,
    check_model,
    criteria_of,
    profiled_columns,
    quality_metrics,
    require_silhouette_sample,
    sample_rows,
    silhouette_of,
)
from segmentation.engines.dask import parts
from segmentation.engines.dask import tables as dask_tables
from segmentation.engines.dask.cluster import dask_client
from segmentation.engines.dask.params import dask_params
from segmentation.errors import UserError
from segmentation.files import load_model, remove_temp
from segmentation.stages.evaluate import read_optional_csv, read_train_metrics, report_outcome
from segmentation.stages.runner import Outcome


def scores_of_groups(counts: np.ndarray, sums: np.ndarray, spread: np.ndarray) -> tuple[float, float]:
    """Calinski-Harabasz and Davies-Bouldin as scikit-learn computes them, from group-bys over all rows: rows and
    column sums per cluster (``counts``, ``sums``), and per cluster the sums of squared distances and of distances
    to its centroid (``spread``: 2 x k). Clusters with no rows are left out, as scikit-learn's labels have none."""
    present = counts > 0
    n, centroids = counts[present], sums[present] / counts[present][:, None]
    squared, distances = spread[0][present], spread[1][present]
    k, rows = len(n), int(n.sum())
    mean = sums[present].sum(axis=0) / rows
    extra = float((n * ((centroids - mean) ** 2).sum(axis=1)).sum())
    intra = float(squared.sum())
    calinski_harabasz = 1.0 if intra == 0.0 else extra * (rows - k) / (intra * (k - 1.0))
    intra_dists = distances / n
    between = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(intra_dists, 0) or np.allclose(between, 0):
        return calinski_harabasz, 0.0
    between[between == 0] = np.inf
    combined = (intra_dists[:, None] + intra_dists) / between
    return calinski_harabasz, float(np.mean(np.max(combined, axis=1)))


def require_dask_model(model: Any, model_source: str) -> None:
    """The Dask engine evaluates the k-means family's models (train on Dask fits kmeans)."""
    name = algorithms.algorithm_name(model)
    if name is not None and (isinstance(model, algorithms.CentroidAssigner) or not hasattr(model, "cluster_centers_")):
        raise UserError(
            f"{model_source}: a {name} model; preprocess.engine dask evaluates the k-means family only: rebuild it: "
            "dvc repro -f -s train"
        )


@dataclass
class DaskEvaluation:
    """What :func:`evaluate_on_dask` hands to the report: the evaluation (its segments stay in the cluster, one
    frame per part), the overall means and the contrasts of the numeric columns, their kinds, the figures."""

    result: Evaluation
    segments: list[Any]  # futures: ID + cluster per part
    overall: dict[str, float]
    contrasts: pd.DataFrame
    kinds: dict[str, str]
    figures: dict[str, Any]
    sample: np.ndarray  # the criteria's sample of the model matrix (their rows: sample_rows)


def evaluate_on_dask(
    client: Any, matrix: Any, features: Any, model: Any, params: EvaluateParams, categorical: list[str],
    numeric: list[str],
) -> DaskEvaluation:  # fmt: skip
    """:func:`segmentation.stages.evaluate.evaluate` and the report's measures on the tables in the cluster
    (:mod:`segmentation.engines.dask.tables`): the clusters' sizes, the profiles, the overall means, the contrasts
    and the kinds of the columns exactly, by group-bys over every row; Calinski-Harabasz and Davies-Bouldin from
    per-cluster sums over every row; the silhouette, the criteria's sample and the figures' points on the local
    engine's seeded samples (the same row numbers, brought here); the projection's components by dask-ml's PCA on
    every row."""
    import dask
    import dask.dataframe as dd
    from dask_ml.decomposition import PCA as DaskPCA

    table, id_column = matrix.table, matrix.table.columns[0]
    if features.rows != table.rows or not all(
        client.gather(client.map(parts.same_ids, features.frames, table.frames, id_column=id_column))
    ):
        raise UserError("data/processed: the features and matrix files hold different customers; run dvc repro")
    k, rows = algorithms.n_clusters(model), table.total
    require_silhouette_sample(params, k)
    labels = client.map(parts.part_labels, matrix.blocks, model=model)

    # every row: sizes, the scores' group-bys
    groups = client.gather(client.map(parts.part_groups, matrix.blocks, labels, k=k))
    counts, sums = sum(g[0] for g in groups), sum(g[1] for g in groups)
    sizes = {c: int(n) for c, n in enumerate(counts)}
    centroids = sums / np.maximum(counts, 1)[:, None]
    spread = dask_tables.sum_of(client, client.map(parts.part_spread, matrix.blocks, labels, centroids=centroids))
    calinski_harabasz, davies_bouldin = scores_of_groups(counts, sums, spread)

    # seeded samples of rows, as the local engine draws them
    def sampled(size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = sample_rows(rows, size, params.random_state)
        return dask_tables.take(client, matrix.blocks, table.rows, idx), dask_tables.take(
            client, labels, table.rows, idx
        )

    sil_values, sil_labels = silhouette_of(*sampled(params.silhouette_sample_size), params.silhouette_sample_size)
    metrics = quality_metrics(model, sil_values, calinski_harabasz, davies_bouldin, sizes, rows, None)

    # the profile, overall means, contrasts and kinds: Dask's group-bys over the features and the labels
    meta = parts.labelled(features.meta, np.zeros(0, dtype=np.int32), categorical, CLUSTER_COLUMN)
    frame = dd.from_delayed(
        client.map(parts.labelled, features.frames, labels, categorical=categorical, cluster_column=CLUSTER_COLUMN),
        meta=meta,
        verify_meta=False,
    )
    profiled = [c for c in features.columns if c not in {id_column, *categorical}]
    grouped = frame[[*profiled, CLUSTER_COLUMN]].groupby(CLUSTER_COLUMN)
    values = frame[numeric]
    zero_one = ((values == 0) | (values == 1) | values.isna()).all() & (values.count() > 0)
    lazy = {
        "size": frame[CLUSTER_COLUMN].value_counts(split_out=1),  # k rows: no shuffle (its buffers, on the workers)
        "means": grouped.mean(),
        "sums": grouped.sum(),
        "counts": grouped.count(),
        "overall": values.mean(),
        "spreads": values.std(ddof=0),
        "zero_one": zero_one,
        **{f"count:{c}": frame.groupby([CLUSTER_COLUMN, c]).size() for c in categorical},
        **{f"blank:{c}": frame[c].isna().groupby(frame[CLUSTER_COLUMN]).sum() for c in categorical},
    }
    done = dict(zip(lazy, dask.compute(*lazy.values()), strict=True))
    size = done["size"].sort_index().rename_axis(CLUSTER_COLUMN)
    categories = {}
    for c in categorical:
        found = done[f"count:{c}"].unstack(fill_value=0)
        blanks = done[f"blank:{c}"].sort_index()
        categories[c] = (found, blanks if blanks.any() else None)
    profile = assemble_profile(size, done["means"].sort_index()[profiled], categories, rows)
    overall = {c: float(done["overall"][c]) for c in numeric}
    z = report.contrasts_of(
        done["sums"].sort_index()[numeric], done["counts"].sort_index()[numeric], done["spreads"][numeric]
    )
    z.index = [int(c) for c in z.index]
    kinds = {c: report.kind_of(c, bool(done["zero_one"][c])) for c in numeric}

    # the figures: the projection's components on every row (dask-ml), its points and the silhouette's sampled
    x = matrix.array()
    n = min(2, matrix.width)
    x = x.rechunk({0: max(max(table.rows), matrix.width), 1: -1})  # tall blocks for the tall-and-skinny QR
    pca = DaskPCA(n_components=n, svd_solver="tsqr").fit(x)
    components = np.asarray(pca.components_)
    # scikit-learn's sign rule: each component's largest coefficient positive
    components *= np.sign(components[np.arange(n), np.argmax(np.abs(components), axis=1)])[:, None]
    shown, shown_labels = sampled(params.plot_sample_size)
    xy = (shown - np.asarray(pca.mean_)) @ components.T
    present = {c: n_c for c, n_c in sizes.items() if n_c}
    figures = {
        "clusters_2d.png": projection_figure(xy, shown_labels, present, rows),
        "silhouette.png": silhouette_plot(sil_values, sil_labels),
        "profile.png": profile_plot(profile, params.labels),
    }
    criteria_rows, _ = sampled(params.criteria_sample_size)
    segments = client.map(parts.part_segments, table.frames, labels, id_column=id_column, cluster_column=CLUSTER_COLUMN)
    result = Evaluation(metrics, None, profile, sil_values, sil_labels)
    return DaskEvaluation(result, segments, overall, z, kinds, figures, criteria_rows)


def work(args, params: EvaluateParams, preprocess_params: PreprocessParams) -> Outcome:
    """The evaluate stage on the cluster (``preprocess.engine: dask``): the tables read by the workers part by part,
    the segments file written from the parts in order; the outputs are the local engine's."""
    categorical_params = preprocess_params.categorical
    model = load_model(args.model, stage="train")
    require_dask_model(model, args.model)
    train_metrics = read_train_metrics(args.train_metrics)  # the model's check, then the report's k section
    elbow = read_optional_csv(args.elbow_scores)
    with dask_client(dask_params(preprocess_params, args.params)) as client:
        matrix = dask_tables.load_matrix(client, args.matrix, stage="preprocess")
        features = dask_tables.load(client, args.features, stage="preprocess")
        id_column = matrix.table.columns[0]
        model_features = [c for c in preprocess_params.features if c in features.columns]
        numeric_extras, text_extras = profiled_columns(
            features.meta, id_column, model_features, categorical_params.columns, params.profile_columns
        )
        categorical = [*categorical_params.columns, *text_extras]
        inertia = lambda: dask_tables.sum_of(client, client.map(parts.part_inertia, matrix.blocks, model=model))  # noqa: E731
        check_model(model, matrix.array(), args.model, args.matrix, train_metrics, args.train_metrics, inertia)
        done = evaluate_on_dask(
            client, matrix, features, model, params, categorical, [*model_features, *numeric_extras]
        )
        segments_file = dask_tables.stream_csv(client, done.segments, args.segments)
    try:
        criteria = None
        if args.report and elbow is not None and "k" in elbow:
            criteria = criteria_of(
                done.sample, [int(k) for k in elbow["k"]], params.random_state, params.k_stability_resamples
            )
        return report_outcome(
            args, params, model, done.result, done.figures, done.kinds, done.overall, done.contrasts, criteria,
            model_features, numeric_extras, categorical_params, train_metrics, elbow, matrix.table.total,
            lambda out: out.adopt(args.segments, segments_file),
        )  # fmt: skip
    except BaseException:
        remove_temp(segments_file)
        raise

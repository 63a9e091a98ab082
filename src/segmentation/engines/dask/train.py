"""Stage ``train`` on the Dask engine (``preprocess.engine: dask``): its ``work``
(:func:`segmentation.stages.train.work` hands over to it). The k search runs on the local engine's seeded sample of
the matrix held by the cluster, brought to this process; the final KMeans on all rows is Lloyd's method, part by part
on the workers (numpy only: dask-ml's KMeans brought numba and LLVM, ~150 MiB, onto every worker)."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from segmentation import algorithms
from segmentation.config import PreprocessParams, TrainParams
from segmentation.core.search import ElbowResult, check_k_rows, distinct_rows, search_k, search_sample
from segmentation.core.segmenter import build_segmenter
from segmentation.engines.dask import parts
from segmentation.engines.dask import tables as dask_tables
from segmentation.engines.dask.cluster import dask_client
from segmentation.engines.dask.params import dask_params
from segmentation.errors import UserError
from segmentation.files import load_model
from segmentation.stages.runner import Outcome
from segmentation.stages.train import outcome


def require_dask_params(params: TrainParams, source: str) -> None:
    """What the Dask engine's train does: the k-means search on a seeded sample, the final KMeans fit on all rows.
    Anything else is one line naming the setting."""
    if params.algorithm != "kmeans":
        raise UserError(
            f"{source}: train.algorithm: {params.algorithm} runs on the local engine only (preprocess.engine: "
            "dask fits kmeans on the cluster); use kmeans or preprocess.engine: local"
        )
    if params.search_sample_size is None:
        raise UserError(
            f"{source}: train.search_sample_size: null would search k on every row in one process; with "
            "preprocess.engine: dask set a sample size (e.g. 20000)"
        )


def train_on_dask(client: Any, matrix: Any, params: TrainParams, source: str) -> tuple[ElbowResult, KMeans, np.ndarray]:
    """:func:`segmentation.core.search.train` on the model matrix held by the cluster
    (:class:`segmentation.engines.dask.tables.Matrix`): the k search on the local engine's seeded sample (the same
    row numbers, brought to this process), then the final fit on all rows (:func:`fit_kmeans_on_dask`)
    unless the sample holds every row (then, as on the local engine, the search's fit is the model). Returns the
    search, the model and its clusters' sizes on all rows."""
    rows = matrix.table.total
    idx = search_sample(rows, params)
    S = dask_tables.take(client, matrix.blocks, matrix.table.rows, idx)
    whole = lambda: distinct_rows(S) if idx is None else dask_tables.distinct_rows(matrix.table)  # noqa: E731
    check_k_rows(rows, whole, params, source, sample=S)
    elbow = search_k(S, rows, idx, params)
    k = elbow.k_best
    if elbow.search_rows == rows:
        model = elbow.models[k]
    else:
        model = fit_kmeans_on_dask(client, matrix, elbow.models[k].cluster_centers_, S, params)
    sizes = dask_tables.sum_of(client, client.map(parts.part_sizes, matrix.blocks, model=model))
    return elbow, model, sizes


def fit_kmeans_on_dask(
    client: Any, matrix: Any, centres: np.ndarray, sample: np.ndarray, params: TrainParams
) -> KMeans:
    """The final KMeans on all rows of the matrix in the cluster: Lloyd's method from the search's ``centres``
    (:func:`lloyd_on_dask`); returned as the ordinary scikit-learn ``KMeans`` the local engine saves (``predict``,
    pickling, the segmenter and the MLflow model work unchanged).

    The scikit-learn estimator is first fitted on the search ``sample`` from the same centres, for its structure
    (``n_features_in_``, its thread count...), then given the centres and iterations on all rows, and the inertia of
    those centres on all rows. Its ``labels_`` are dropped: they would be the sample's (a label per row of all rows
    would bring a column of the whole matrix to this process); ``predict`` gives them.
    """
    k = len(centres)
    start = time.perf_counter()
    x = matrix.array()
    model = KMeans(
        n_clusters=k, init=centres, n_init=1, max_iter=params.max_iter, random_state=params.random_state,
        algorithm=params.kmeans.method,
    )  # fmt: skip
    # scikit-learn stops when the centres' squared shift is below tol x the data's mean variance per column
    tol = model.tol * float(x.var(axis=0).mean().compute())
    fitted, n_iter = lloyd_on_dask(client, matrix.blocks, np.asarray(centres, dtype=float), params.max_iter, tol)
    with threadpool_limits(limits=params.n_threads):  # the model's thread count, as the local engine's final fit
        model.fit(sample)
    model.cluster_centers_ = fitted
    model.n_iter_ = n_iter
    del model.labels_
    model.inertia_ = float(dask_tables.sum_of(client, client.map(parts.part_inertia, matrix.blocks, model=model)))
    print(
        f"train: final fit, k={k} on all {matrix.table.total} rows from the sample's centres, on Dask "
        f"({time.perf_counter() - start:.1f} s, {model.n_iter_} iterations)",
        file=sys.stderr,
        flush=True,
    )
    return model


def lloyd_on_dask(
    client: Any, blocks: list[Any], centres: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Lloyd's iterations from ``centres`` as dask-ml's ``KMeans`` runs them: each row to its nearest centre, each
    centre to its rows' mean (a centre with no rows to the origin), until the centres' squared shift is below
    ``tol`` (the centres before that last step are kept) or ``max_iter``. The centres and the iterations run."""
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        steps = client.gather(client.map(parts.part_step, blocks, centres=centres))
        counts, sums = sum(s[0] for s in steps), sum(s[1] for s in steps)
        moved = sums / np.maximum(counts, 1)[:, None]
        if float(((centres - moved) ** 2).sum()) < tol:
            break
        centres = moved
    return centres, n_iter


def work(args, params: TrainParams, preprocess_params: PreprocessParams) -> Outcome:
    """The train stage on the cluster (``preprocess.engine: dask``): the matrix is read by the workers, part by
    part; the search, the model, the metrics and the outputs are those of the local engine."""
    require_dask_params(params, args.params)
    preprocessor = load_model(args.preprocessor, stage="preprocess") if args.segmenter else None
    with dask_client(dask_params(preprocess_params, args.params)) as client:
        matrix = dask_tables.load_matrix(client, args.matrix, stage="preprocess")
        elbow, model, sizes = train_on_dask(client, matrix, params, source=args.matrix)
    segmenter = build_segmenter(preprocess_params, preprocessor, model) if args.segmenter else None
    return outcome(args, params, elbow, model, algorithms.fit_record(model, None), sizes, None, segmenter)

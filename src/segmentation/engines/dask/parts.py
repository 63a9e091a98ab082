"""What the workers run for the train and evaluate stages on the Dask engine: one part of the model matrix (or of the
features) at a time.

A light module on purpose (numpy, pandas, the algorithms' helpers): a worker imports the module of every function it
runs, and these must not bring a stage's module with them (matplotlib, the report, the tracking). Defined in the
stage modules run as ``__main__``, they used to be sent by value; from an importable stage module they made each
worker import the stages, ~30 MiB more per worker (324 -> 351 MiB with dask-ml loaded): enough for two 600 MiB
workers to stay paused at Dask's 80% threshold before train's final fit (tests/test_dask_pipeline.py, its
low-memory test). tests/test_stage_deps.py checks what this module imports.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from segmentation import algorithms
from segmentation.core.data import as_categories


def part_labels(block: np.ndarray, model: Any) -> np.ndarray:
    """The model's cluster of each row of a part."""
    return model.predict(block) if len(block) else np.zeros(0, dtype=np.int32)


def part_sizes(block: np.ndarray, model: Any) -> np.ndarray:
    """Rows per cluster of the model in a part."""
    return (
        np.bincount(model.predict(block), minlength=model.n_clusters) if len(block) else np.zeros(model.n_clusters, int)
    )


def part_inertia(block: np.ndarray, model: Any) -> float:
    """The model's inertia on a part's rows."""
    return algorithms.inertia_on(model, block) if len(block) else 0.0


def part_groups(block: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and the sum of each model column per cluster, in one part."""
    sums = np.stack([np.bincount(labels, weights=block[:, j], minlength=k) for j in range(block.shape[1])], axis=1)
    return np.bincount(labels, minlength=k), sums


def part_spread(block: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per cluster, the sum of squared distances and the sum of distances of a part's rows to their centroid."""
    k = len(centroids)
    distances = np.sqrt(((block - centroids[labels]) ** 2).sum(axis=1))
    return np.stack(
        [np.bincount(labels, weights=distances**2, minlength=k), np.bincount(labels, weights=distances, minlength=k)]
    )


def same_ids(features: pd.DataFrame, matrix: pd.DataFrame, id_column: str) -> bool:
    """Whether a part of the features and the same part of the matrix hold the same IDs, in the same order."""
    return features[id_column].reset_index(drop=True).equals(matrix[id_column].reset_index(drop=True))


def part_segments(matrix: pd.DataFrame, labels: np.ndarray, id_column: str, cluster_column: str) -> pd.DataFrame:
    """ID -> cluster of a part's rows."""
    return pd.DataFrame({id_column: matrix[id_column].to_numpy(), cluster_column: labels})


def labelled(features: pd.DataFrame, labels: np.ndarray, categorical: list[str], cluster_column: str) -> pd.DataFrame:
    """A part of the features with its rows' clusters, its categorical columns as the local engine profiles them."""
    out = features.assign(**{cluster_column: labels})
    for column in categorical:
        out[column] = as_categories(out[column])
    return out

"""What the workers run for the train and evaluate stages on the Dask engine: one part of the model matrix (or of the
features) at a time.

A light module on purpose (numpy, pandas): a worker imports the module of every function it runs, and Dask pauses a
worker whose process memory stays above 80% of its limit, even with all its data spilled to disk. A stage's module
(matplotlib, the report, the tracking) made two 600 MiB workers stay paused before train's final fit; the
algorithms' module (scikit-learn's base, pydantic) costs ~85 MiB more (tests/test_dask_pipeline.py, its low-memory
test). tests/test_stage_deps.py checks what this module imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from typing import Any

import numpy as np
import pandas as pd

from segmentation.core.data import as_categories


def release_memory() -> None:
    """Give a worker's freed memory back to the system (Python's garbage, pyarrow's pool, the C heap): what a stage
    left behind counts against the memory limit of the next (``client.run``, before each stage's work)."""
    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def part_labels(block: np.ndarray, model: Any) -> np.ndarray:
    """The model's cluster of each row of a part."""
    return model.predict(block) if len(block) else np.zeros(0, dtype=np.int32)


def part_sizes(block: np.ndarray, model: Any) -> np.ndarray:
    """Rows per cluster of the model in a part."""
    return (
        np.bincount(model.predict(block), minlength=model.n_clusters) if len(block) else np.zeros(model.n_clusters, int)
    )


def part_inertia(block: np.ndarray, model: Any) -> float:
    """The model's inertia on a part's rows (:func:`segmentation.algorithms.inertia_on`)."""
    return float(((block - model.cluster_centers_[model.predict(block)]) ** 2).sum()) if len(block) else 0.0


def part_groups(block: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and the sum of each model column per cluster, in one part."""
    sums = np.stack([np.bincount(labels, weights=block[:, j], minlength=k) for j in range(block.shape[1])], axis=1)
    return np.bincount(labels, minlength=k), sums


def part_step(block: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of Lloyd's method on a part: rows and the sum of each column per nearest centre (squared euclidean
    distances as ``|c|^2 - 2 x.c``, the row's own norm left out: it does not change the nearest)."""
    labels = (centres**2).sum(axis=1) - 2 * block @ centres.T
    return part_groups(block, labels.argmin(axis=1), len(centres))


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

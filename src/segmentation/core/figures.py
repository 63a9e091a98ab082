"""The evaluate stage's figures: the customers in 2-D, the silhouette plot and the profile heatmap."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from segmentation.algorithms import NOISE, NOISE_NAME
from segmentation.core import report
from segmentation.core.plotting import new_figure
from segmentation.core.quality import sample_rows
from segmentation.core.report import CLUSTER_COLUMN


def _name(cluster: int) -> str:
    return NOISE_NAME if cluster == NOISE else f"cluster {cluster}"


def projection_plot(matrix: pd.DataFrame, labels: np.ndarray, id_column: str, sample_size: int, random_state: int):
    """The model matrix's first two principal components (fitted on all rows), a seeded sample drawn by cluster."""
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    xy = PCA(n_components=min(2, X.shape[1]), svd_solver="covariance_eigh").fit_transform(X)
    sizes = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    shown = sample_rows(len(xy), sample_size, random_state)
    return projection_figure(xy[shown], labels[shown], sizes, len(xy))


def projection_figure(xy: np.ndarray, labels: np.ndarray, sizes: Mapping[int, int], rows: int):
    """:func:`projection_plot`'s figure from the drawn rows' coordinates and labels and the clusters' full sizes."""
    fig, ax = new_figure()
    for k in sorted(sizes, key=lambda c: c == NOISE):  # noise last, in grey
        pts = xy[labels == k]
        y = pts[:, 1] if xy.shape[1] == 2 else np.zeros(len(pts))
        ax.scatter(pts[:, 0], y, s=8, alpha=0.6, label=f"{_name(k)} ({sizes[k]})", color="grey" if k == NOISE else None)
    drawn = "" if len(xy) == rows else f" (a sample of {len(xy)} of {rows})"
    ax.set(title=f"Customers in 2-D (PCA of the model matrix), coloured by cluster{drawn}", xlabel="component 1")
    ax.set_ylabel("component 2" if xy.shape[1] == 2 else "(single feature)")
    # A fixed place: loc="best" tests every point drawn (9.5 s for 1M points).
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=2)
    return fig


def silhouette_plot(values: np.ndarray, labels: np.ndarray):
    """Classic silhouette plot: sorted per-row silhouettes, one band per cluster, mean as a dashed line."""
    fig, ax = new_figure()
    y = 0
    for k in np.unique(labels):
        band = np.sort(values[labels == k])
        ax.fill_betweenx(np.arange(y, y + len(band)), 0, band, alpha=0.7, label=f"cluster {k}")
        y += len(band) + 10
    ax.axvline(values.mean(), color="black", linestyle="--", label=f"mean {values.mean():.3f}")
    ax.set(title=f"Silhouette per customer ({len(values)} rows)", xlabel="silhouette coefficient", yticks=[])
    ax.set_ylabel("customers, grouped by cluster")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def profile_plot(profile: pd.DataFrame, labels: Mapping[str, str] | None = None):
    """Heatmap of cluster means as z-scores against the size-weighted overall mean, annotated with the means: a row
    per feature (its label from ``labels``), so 20+ features stay legible (the figure grows with them)."""
    feats = profile.drop(columns=[CLUSTER_COLUMN, "size", "share"])
    overall = feats.mul(profile["share"].to_numpy(), axis=0).sum()
    z = ((feats - overall) / feats.std(ddof=0).replace(0, 1.0)).to_numpy(dtype=float).T
    fig, ax = new_figure(size=(max(6.0, 1.3 * len(profile) + 4), 0.35 * feats.shape[1] + 2.5))
    limit = max(float(np.nanmax(np.abs(z))), 1e-9)
    image = ax.imshow(z, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_yticks(range(feats.shape[1]), [report.label(c, labels or {}) for c in feats.columns], parse_math=False)
    clusters = [f"{_name(c)}\n(n={n})" for c, n in zip(profile[CLUSTER_COLUMN], profile["size"], strict=True)]
    ax.set_xticks(range(len(profile)), clusters)
    ax.xaxis.tick_top()
    for (i, j), mean in np.ndenumerate(feats.to_numpy(dtype=float).T):
        # Short labels (29k, 1,393, 0.82) in the colour that contrasts with the cell's.
        colour = report.text_colour(image.cmap(image.norm(z[i, j])))
        ax.text(j, i, report.compact_number(mean), ha="center", va="center", fontsize=8, color=colour)
    ax.set(title="Cluster profiles: mean of each feature (colour: relative to the other clusters)", xlabel="cluster")
    ax.set_ylabel("feature")
    fig.colorbar(image, ax=ax, label="relative level (z-score of cluster means)")
    return fig

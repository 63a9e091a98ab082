"""Stage ``evaluate``: cluster quality, per-cluster profiles of the unscaled features, segments and plots."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_samples

from segmentation import algorithms
from segmentation.algorithms import NOISE
from segmentation.config import EvaluateParams, flatten, parse_section
from segmentation.core import report
from segmentation.core.data import as_categories, expand_columns
from segmentation.core.plotting import FIGURE_DPI, new_figure
from segmentation.engines import LOCAL, engine_module
from segmentation.errors import UserError
from segmentation.files import load_model, read_csv, read_matrix
from segmentation.stages.runner import Outcome, cli
from segmentation.tracking.lineage import _pipeline_graph, upstream_lineage

CLUSTER_COLUMN = "cluster"
# The model's inertia on the matrix must equal the inertia it was fitted with, up to float summation order
# (threads): a larger gap means the model was fitted on other data.
INERTIA_RTOL = 1e-6


@dataclass
class Evaluation:
    """Quality metrics, profiles and what the plots need."""

    metrics: dict[str, float | int]
    segments: pd.DataFrame | None  # ID -> cluster (None: the Dask engine's, written from the partitions)
    profile: pd.DataFrame  # one row per cluster: size, share and the mean of every unscaled feature
    silhouette_values: np.ndarray  # per sampled row
    silhouette_labels: np.ndarray


def sample_rows(rows: int, sample_size: int, random_state: int) -> np.ndarray:
    """The rows a seeded sample of at most ``sample_size`` of ``rows`` rows takes (sorted; every row when there
    are no more): the rule of every sampled measure here, the same row numbers on either engine."""
    if rows <= sample_size:
        return np.arange(rows)
    return np.sort(np.random.default_rng(random_state).choice(rows, size=sample_size, replace=False))


def silhouette_sample(
    X: np.ndarray, labels: np.ndarray, sample_size: int, random_state: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row silhouette on a seeded sample of at most ``sample_size`` rows (full silhouette is O(n^2))."""
    idx = sample_rows(len(X), sample_size, random_state)
    return silhouette_of(X[idx], labels[idx], sample_size)


def silhouette_of(X: np.ndarray, labels: np.ndarray, sample_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row silhouette of the sampled rows ``X`` (:func:`sample_rows`) and their labels."""
    if len(np.unique(labels)) < 2:
        raise UserError(
            f"params.yaml: evaluate.silhouette_sample_size ({sample_size}) is too small: the sample holds one "
            "cluster; raise it"
        )
    return silhouette_samples(X, labels), labels


def read_train_metrics(path: str | Path) -> dict[str, Any] | None:
    """The train stage's metrics (``k_best``, ``inertia``), or None when the file is absent."""
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"{path}: is a directory, not the train stage's metrics; remove it, then: dvc repro -f -s train"
        )
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        metrics = None
    if not isinstance(metrics, dict):
        raise UserError(f"{path}: not the JSON the train stage writes; rebuild it: dvc repro -f -s train")
    return metrics


def check_model(
    model: Any,
    X: np.ndarray,
    model_source: str,
    matrix_source: str,
    train_metrics: Mapping[str, Any] | None = None,
    metrics_source: str = "metrics/train.json",
    inertia_on_matrix: Callable[[], float] | None = None,
) -> None:
    """Fail unless ``model`` is a fitted model of a ``train.algorithm`` fitted on ``X``, with the k and the fit
    record (``inertia`` for the k-means family, ``log_likelihood`` for the Gaussian mixture) ``train_metrics``
    holds. An assigner (agglomerative, HDBSCAN) must have been fitted for ``X``'s rows: its centroids are the means
    of its clusters there.

    Catches a foreign or stale model file before scikit-learn does, with the fix in one line. ``inertia_on_matrix``
    computes the model's inertia on the matrix where ``X`` is not in this process (the Dask engine: ``X`` is a dask
    array there, its shape all that is read).
    """
    rebuild = "rebuild it: dvc repro -f -s train"
    name = algorithms.algorithm_name(model)
    if name is None or not algorithms.is_fitted(model):
        what = f"an unfitted {type(model).__name__}" if name is not None else f"a {type(model).__name__}"
        raise UserError(f"{model_source}: holds {what}, not a fitted clustering model; {rebuild}")
    if model.n_features_in_ != X.shape[1]:
        raise UserError(
            f"{model_source}: fitted on {model.n_features_in_} column(s), but {matrix_source} has {X.shape[1]}; "
            f"{rebuild}"
        )
    k = algorithms.n_clusters(model)
    recorded = algorithms.fit_record(model, X)  # inertia_ as fitted; the mixture's log-likelihood on X
    if train_metrics is not None:
        if train_metrics.get("k_best") != k:
            raise UserError(
                f"{model_source}: has {k} clusters, but {metrics_source} says k_best = {train_metrics.get('k_best')}; "
                f"{rebuild}"
            )
        for key, value in recorded.items():
            wrote = train_metrics.get(key)
            if not isinstance(wrote, int | float) or not np.isclose(value, wrote, rtol=INERTIA_RTOL):
                what = "inertia" if key == "inertia" else f"{key.replace('_', '-')} on {matrix_source}"
                raise UserError(
                    f"{model_source}: its {what} ({value:.6g}) is not the one {metrics_source} records ({wrote}); "
                    f"{rebuild}"
                )
    if hasattr(model, "inertia_"):
        on_matrix = inertia_on_matrix() if inertia_on_matrix is not None else algorithms.inertia_on(model, X)
        if not np.isclose(on_matrix, model.inertia_, rtol=INERTIA_RTOL):
            raise UserError(
                f"{model_source}: was not fitted on {matrix_source} (inertia {on_matrix:.6g} on it, "
                f"{model.inertia_:.6g} when fitted); {rebuild}"
            )
    if isinstance(model, algorithms.CentroidAssigner):
        if model.n_rows_ != len(X):
            raise UserError(
                f"{model_source}: was fitted on {model.n_rows_} rows, but {matrix_source} has {len(X)}; {rebuild}"
            )
        fitted = X if model.fit_rows_ is None else X[model.fit_rows_]  # the rows its clusterer was fitted on
        means = [fitted[model.fit_labels_ == c].mean(axis=0) for c in range(k)]
        if not np.allclose(np.stack(means), model.cluster_centers_, rtol=INERTIA_RTOL, atol=1e-9):
            raise UserError(
                f"{model_source}: was not fitted on {matrix_source} (its centroids are not the means of its clusters "
                f"there); {rebuild}"
            )


def cluster_profile(
    features: pd.DataFrame, labels: np.ndarray, id_column: str, categorical: Sequence[str] = ()
) -> pd.DataFrame:
    """Size, share and mean of each unscaled numeric feature per cluster; noise rows (-1, HDBSCAN) are a segment of
    their own, last.

    Each categorical column adds one ``column=category`` column per category (sorted): the share of the cluster's
    rows in that category; a column with blanks adds ``column=(blank)`` last, so that its shares add up to 1.
    """
    numeric = features.drop(columns=[id_column, *categorical]).assign(**{CLUSTER_COLUMN: labels})
    grouped = numeric.groupby(CLUSTER_COLUMN)
    categories = {}
    for column in categorical:
        values = as_categories(features[column])
        blanks = pd.Series(values.isna().to_numpy()).groupby(labels).sum() if values.isna().any() else None
        categories[column] = (pd.crosstab(labels, values), blanks)
    return assemble_profile(grouped.size(), grouped.mean(), categories, len(numeric))


def assemble_profile(
    sizes: pd.Series, means: pd.DataFrame, categories: Mapping[str, tuple[pd.DataFrame, pd.Series | None]], rows: int
) -> pd.DataFrame:
    """The profile of :func:`cluster_profile` from its group-bys: rows per cluster, the numeric columns' means per
    cluster (both indexed by cluster, in order), per categorical column the rows per cluster and category and the
    blank rows per cluster (None: no blanks); ``rows`` in all."""
    profile = means.copy()
    profile.insert(0, "share", sizes / rows)
    profile.insert(0, "size", sizes)
    if NOISE in profile.index:  # the clusters first, in order, then the rows in none
        profile = profile.reindex([*(c for c in profile.index if c != NOISE), NOISE])
    for column, (found, blanks) in categories.items():
        counts = found.reindex(index=profile.index, fill_value=0)
        counts = counts[sorted(counts.columns)]
        shares = counts.div(profile["size"], axis=0)
        shares.columns = [f"{column}={category}" for category in shares.columns]
        if blanks is not None:
            shares[f"{column}={report.BLANK}"] = blanks.reindex(profile.index, fill_value=0) / profile["size"]
        profile = profile.join(shares)
    return profile.reset_index()


def evaluate(
    matrix: pd.DataFrame,
    features: pd.DataFrame,
    model,
    id_column: str,
    params: EvaluateParams,
    categorical: Sequence[str] = (),
) -> Evaluation:
    """Assign clusters and measure them; ``features`` are the unscaled rows behind ``matrix`` (same IDs, order).

    ``categorical`` names the columns of ``features`` that are profiled as category shares rather than means. The
    clusters are the model's ``predict``, or for an algorithm without one its training assignment. Noise rows (-1)
    are left out of silhouette, Calinski-Harabasz and Davies-Bouldin; ``noise_share`` says how many there are.
    """
    if not matrix[id_column].equals(features[id_column]):
        raise UserError("data/processed: the features and matrix files hold different customers; run dvc repro")
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    k = algorithms.n_clusters(model)
    require_silhouette_sample(params, k)
    labels = algorithms.training_labels(model, X)
    sizes = algorithms.cluster_sizes(labels, k)
    clustered = labels != NOISE
    Xc, labels_c = (X, labels) if clustered.all() else (X[clustered], labels[clustered])
    sil_values, sil_labels = silhouette_sample(Xc, labels_c, params.silhouette_sample_size, params.random_state)
    noise_share = float((~clustered).mean()) if algorithms.REGISTRY[algorithms.algorithm_name(model)].noise else None
    metrics = quality_metrics(
        model, sil_values, calinski_harabasz_score(Xc, labels_c), davies_bouldin_score(Xc, labels_c), sizes,
        len(labels), noise_share,
    )  # fmt: skip
    segments = pd.DataFrame({id_column: matrix[id_column], CLUSTER_COLUMN: labels})
    profile = cluster_profile(features, labels, id_column, categorical)
    return Evaluation(metrics, segments, profile, sil_values, sil_labels)


def require_silhouette_sample(params: EvaluateParams, k: int) -> None:
    """The silhouette's sample must be able to hold every cluster."""
    if params.silhouette_sample_size <= k:
        raise UserError(
            f"params.yaml: evaluate.silhouette_sample_size ({params.silhouette_sample_size}) must be greater than "
            f"the number of clusters ({k}); raise it"
        )


def quality_metrics(
    model: Any, sil_values: np.ndarray, calinski_harabasz: float, davies_bouldin: float, sizes: Mapping[int, int],
    rows: int, noise_share: float | None,
) -> dict[str, float | int]:  # fmt: skip
    """``metrics/evaluate.json``: the scores (silhouette on its sample; Calinski-Harabasz and Davies-Bouldin on
    every clustered row), the inertia (k-means family), the smallest cluster's share of all ``rows``, the noise
    share (None: the algorithm has no noise) and each cluster's size."""
    metrics: dict[str, float | int] = {
        "n_clusters": algorithms.n_clusters(model),
        "silhouette": float(sil_values.mean()),
        "silhouette_sample_rows": len(sil_values),
        "calinski_harabasz": float(calinski_harabasz),
        "davies_bouldin": float(davies_bouldin),
    }
    if hasattr(model, "inertia_"):  # the k-means family's; the other algorithms have none
        metrics["inertia"] = float(model.inertia_)
    metrics["smallest_cluster_share"] = float(min(n for c, n in sizes.items() if c != NOISE) / rows)
    if noise_share is not None:
        metrics["noise_share"] = noise_share
    metrics.update({algorithms.size_key(c): n for c, n in sizes.items()})
    return metrics


def projection_plot(matrix: pd.DataFrame, labels: np.ndarray, id_column: str, sample_size: int, random_state: int):
    """Scatter of the first two principal components of the model matrix, coloured by cluster.

    The components are fitted on every row; at most ``sample_size`` rows (a seeded sample) are drawn. The legend
    gives each cluster's size among all rows.
    """
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    n = min(2, X.shape[1])
    xy = PCA(n_components=n, svd_solver="covariance_eigh").fit_transform(X)
    clusters, counts = np.unique(labels, return_counts=True)
    sizes = dict(zip(clusters.tolist(), counts.tolist(), strict=True))
    shown = sample_rows(len(xy), sample_size, random_state)
    return projection_figure(xy[shown], labels[shown], sizes, len(xy))


def projection_figure(xy: np.ndarray, labels: np.ndarray, sizes: Mapping[int, int], rows: int):
    """The figure of :func:`projection_plot`: the drawn rows' coordinates on the first (two) components and their
    labels, the size of each cluster among all ``rows`` rows."""
    n = xy.shape[1]
    if n == 1:
        xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
    fig, ax = new_figure()
    for k in [*(c for c in sizes if c != NOISE), *(c for c in sizes if c == NOISE)]:  # noise last, in grey
        pts = xy[labels == k]
        name, colour = (algorithms.NOISE_NAME, {"color": "grey"}) if k == NOISE else (f"cluster {k}", {})
        ax.scatter(pts[:, 0], pts[:, 1], s=8, alpha=0.6, label=f"{name} ({sizes[k]})", **colour)
    drawn = "" if len(xy) == rows else f" (a sample of {len(xy)} of {rows})"
    ax.set_title(f"Customers in 2-D (PCA of the model matrix), coloured by cluster{drawn}")
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2" if n == 2 else "(single feature)")
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
    ax.set_title(f"Silhouette per customer ({len(values)} rows)")
    ax.set_xlabel("silhouette coefficient")
    ax.set_ylabel("customers, grouped by cluster")
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def profile_plot(profile: pd.DataFrame):
    """Heatmap of cluster means as z-scores against the size-weighted overall mean, annotated with the means."""
    feats = profile.drop(columns=[CLUSTER_COLUMN, "size", "share"])
    weights = profile["share"].to_numpy()
    overall = (feats.mul(weights, axis=0)).sum()
    spread = feats.std(ddof=0).replace(0, 1.0)
    z = ((feats - overall) / spread).to_numpy(dtype=float)
    fig, ax = new_figure(size=(max(6.0, 1.1 * feats.shape[1] + 2), 1.0 * len(profile) + 2))
    limit = max(float(np.nanmax(np.abs(z))), 1e-9)
    image = ax.imshow(z, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(feats.shape[1]), feats.columns, rotation=45, ha="right")
    rows = [
        f"{algorithms.NOISE_NAME if c == NOISE else f'cluster {c}'} (n={n})"
        for c, n in zip(profile[CLUSTER_COLUMN], profile["size"], strict=True)
    ]
    ax.set_yticks(range(len(profile)), rows)
    for (i, j), mean in np.ndenumerate(feats.to_numpy(dtype=float)):
        # Short labels (29k, 1,393, 0.82) in the colour that contrasts with the cell's.
        colour = report.text_colour(image.cmap(image.norm(z[i, j])))
        ax.text(j, i, report.compact_number(mean), ha="center", va="center", fontsize=8, color=colour)
    ax.set_title("Cluster profiles: mean of each feature (colour: relative to the other clusters)")
    ax.set_xlabel("feature")
    ax.set_ylabel("cluster")
    fig.colorbar(image, ax=ax, label="relative level (z-score of cluster means)")
    return fig


def criteria_per_k(X: np.ndarray, ks: Sequence[int], sample_size: int, random_state: int) -> pd.DataFrame:
    """Silhouette, Calinski-Harabasz and Davies-Bouldin of a k-means fit per k, on a seeded sample of at most
    ``sample_size`` rows (3 restarts, one thread: the same numbers on any machine): what the criteria the search
    did not use say about k. Columns k, silhouette, calinski_harabasz, davies_bouldin."""
    return criteria_of(X[sample_rows(len(X), sample_size, random_state)], ks, random_state)


def criteria_of(sample: np.ndarray, ks: Sequence[int], random_state: int) -> pd.DataFrame:
    """:func:`criteria_per_k` on its sampled rows (:func:`sample_rows`)."""
    from sklearn.metrics import pairwise_distances, silhouette_score
    from threadpoolctl import threadpool_limits

    rows = []
    with threadpool_limits(1):
        distances = pairwise_distances(sample)  # once for every k: silhouette's cost is these n^2 distances
        for k in ks:
            if not 2 <= k < len(sample):
                continue
            labels = KMeans(n_clusters=k, n_init=3, random_state=random_state).fit_predict(sample)
            if len(np.unique(labels)) < 2:
                continue
            rows.append(
                {
                    "k": int(k),
                    "silhouette": float(silhouette_score(distances, labels, metric="precomputed")),
                    "calinski_harabasz": float(calinski_harabasz_score(sample, labels)),
                    "davies_bouldin": float(davies_bouldin_score(sample, labels)),
                }
            )
    return pd.DataFrame(rows, columns=["k", "silhouette", "calinski_harabasz", "davies_bouldin"])


def profiled_columns(
    features: pd.DataFrame, id_column: str, model_features: Sequence[str], categorical: Sequence[str], patterns
) -> tuple[list[str], list[str]]:
    """(numeric, non-numeric) columns of ``features`` that ``evaluate.profile_columns`` adds to the profile."""
    columns = [c for c in features.columns if c != id_column]
    found = expand_columns(patterns, columns, "evaluate.profile_columns", "the features file (run dvc repro)")
    extras = [c for c in found if c not in {*model_features, *categorical}]
    numeric = [c for c in extras if pd.api.types.is_numeric_dtype(features[c])]
    return numeric, [c for c in extras if c not in numeric]


def source_files(stage: str = "evaluate", dvc_yaml: str | Path = "dvc.yaml") -> dict[str, str]:
    """The git blob id of each Python file the stage declares as a dependency in ``dvc.yaml`` (the package's files
    when there is none): the code that produced its outputs, by content. A file cannot name the commit it is
    committed in, but ``git log --find-object=<id>`` finds the commits holding each file. The list changes exactly
    when the stage re-runs, so a fresh clone reproduces the report byte for byte. A declared folder of code (the
    engine's, ``src/segmentation/engines/${preprocess.engine}``) counts with its Python files."""
    declared = _pipeline_graph(Path(dvc_yaml))[0].get(stage, ())
    code = [Path(d) for d in declared if d.startswith("src/") and Path(d).is_dir()]
    deps = sorted({*(d for d in declared if d.endswith(".py")), *(f.as_posix() for c in code for f in c.rglob("*.py"))})
    paths = [Path(d) for d in deps if Path(d).is_file()]
    if paths:
        return {p.as_posix(): _blob_id(p) for p in paths}
    package = Path(__file__).resolve().parents[1]  # a stage run by hand, outside a project
    return {p.relative_to(package.parent).as_posix(): _blob_id(p) for p in sorted(package.rglob("*.py"))}


def _blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_optional_csv(path: str | None) -> pd.DataFrame | None:
    return read_csv(path, stage="train") if path and Path(path).is_file() else None


def work(args, params: EvaluateParams, raw_params: dict[str, Any]) -> Outcome:
    """Check the model against the matrix, run :func:`evaluate`, name the segments; say what to write and log."""
    # The profile also needs which preprocess columns are categorical.
    preprocess_params = parse_section("preprocess", raw_params.get("preprocess"), args.params)
    if preprocess_params.engine != LOCAL:  # another engine does its own work
        return engine_module(preprocess_params.engine, "evaluate").work(args, params, preprocess_params)
    categorical_params = preprocess_params.categorical
    matrix = read_matrix(args.matrix, stage="preprocess")
    features = read_csv(args.features, stage="preprocess")
    model_features = [c for c in preprocess_params.features if c in features.columns]
    numeric_extras, text_extras = profiled_columns(
        features, matrix.columns[0], model_features, categorical_params.columns, params.profile_columns
    )
    categorical = [*categorical_params.columns, *text_extras]
    model = load_model(args.model, stage="train")
    id_column = matrix.columns[0]
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    train_metrics = read_train_metrics(args.train_metrics)  # the model's check, then the report's k section
    check_model(model, X, args.model, args.matrix, train_metrics, args.train_metrics)
    result = evaluate(matrix, features, model, id_column, params, categorical)
    labels = result.segments[CLUSTER_COLUMN].to_numpy()
    figures = {
        "clusters_2d.png": projection_plot(matrix, labels, id_column, params.plot_sample_size, params.random_state),
        "silhouette.png": silhouette_plot(result.silhouette_values, result.silhouette_labels),
        "profile.png": profile_plot(result.profile),
    }

    numeric = [*model_features, *numeric_extras]
    kinds = {c: report.column_kind(c, features[c]) for c in numeric}
    elbow = read_optional_csv(args.elbow_scores)
    criteria = None
    if args.report and elbow is not None and "k" in elbow:
        criteria = criteria_per_k(X, [int(k) for k in elbow["k"]], params.criteria_sample_size, params.random_state)

    overall = {c: float(features[c].mean()) for c in numeric}
    z = report.contrasts(features[numeric], labels)
    return report_outcome(
        args, params, model, result, figures, kinds, overall, z, criteria, model_features, numeric_extras,
        categorical_params, train_metrics, elbow, len(labels),
        lambda out: out.write_csv(args.segments, result.segments),
    )  # fmt: skip


def report_outcome(
    args, params: EvaluateParams, model: Any, result: Evaluation, figures: dict[str, Any], kinds: dict[str, str],
    overall: dict[str, float], z: pd.DataFrame, criteria: pd.DataFrame | None, model_features: list[str],
    numeric_extras: list[str], categorical_params: Any, train_metrics: Mapping[str, Any] | None,
    elbow: pd.DataFrame | None, rows: int, write_segments: Callable[[Any], None],
) -> Outcome:  # fmt: skip
    """Name the segments and say what to write and log (either engine): the evaluation, its figures, the numeric
    columns' kinds, overall means and contrasts (:func:`report.contrasts`), the criteria per k (None: no report
    section), ``rows`` in all; ``write_segments(out)`` writes the segments file."""
    profile = result.profile
    overall = {**overall, **{c: float((profile[c] * profile["size"]).sum() / rows) for c in profile if "=" in c}}
    segments = report.describe_segments(profile, overall, z, model_features, numeric_extras, kinds)
    rounded = report.rounded_profile(profile, kinds)
    # The names go with the profile: `make score` puts them beside each new customer's segment.
    rounded.insert(1, report.NAME_COLUMN, [segment.name for segment in segments])

    def write(out, log) -> None:
        write_segments(out)
        out.write_csv(args.profile, rounded)
        out.write_json(args.metrics, result.metrics)
        images: dict[str, bytes | None] = {}
        for name, fig in figures.items():
            out.save_figure(f"{args.plots_dir}/{name}", fig, dpi=FIGURE_DPI)
            log.log_artifact(f"{args.plots_dir}/{name}")
            images[name.removesuffix(".png")] = out.staged(f"{args.plots_dir}/{name}").read_bytes()
        log.log_artifact(args.profile)
        if args.report:
            lineage = upstream_lineage("evaluate")
            elbow_plot = Path(args.elbow_plot) if args.elbow_plot else None
            elbow_png = elbow_plot.read_bytes() if elbow_plot and elbow_plot.is_file() else None
            page = report.render_report(
                segments=segments,
                profile=profile,
                overall=overall,
                features=model_features,
                extras=numeric_extras,
                kinds=kinds,
                metrics=result.metrics,
                images=images,
                k_choice=report.k_choice_section(
                    elbow,
                    train_metrics,
                    criteria,
                    elbow_png,
                    algorithm=algorithms.REGISTRY[algorithms.algorithm_name(model)].label,
                ),
                provenance=report.provenance_section(
                    {**lineage.params, **flatten(params, "evaluate.")},
                    lineage.data_path,
                    lineage.data_md5,
                    source_files("evaluate"),
                ),
            )
            out.write_text(args.report, page)
            log.log_artifact(args.report)
        # The k the model was trained with decides every result here; train's params come from dvc.lock.
        log.log_params({"k_best": algorithms.n_clusters(model), **flatten(params, "evaluate.")})
        log.log_params(flatten(categorical_params, "preprocess.categorical."))
        log.log_metrics(result.metrics)

    m = result.metrics
    return Outcome(
        write,
        f"evaluate: {m['n_clusters']} clusters, silhouette {m['silhouette']:.3f}, "
        f"Calinski-Harabasz {m['calinski_harabasz']:.1f}, Davies-Bouldin {m['davies_bouldin']:.3f}",
    )


main = cli(
    "evaluate",
    __doc__,
    work,
    {
        "matrix": "input: ID + transformed matrix (.parquet or .csv)",
        "features": "input: ID + unscaled features (.parquet or .csv)",
        "model": "input: the fitted clusterer of train.algorithm (pickle)",
        "train_metrics": "input: the train stage's metrics; the model must have its k_best and inertia (or "
        "log-likelihood; skipped when the file is absent)",
        "segments": "output: ID -> cluster (CSV)",
        "profile": "output: per-cluster profile (CSV)",
        "metrics": "output: quality metrics (JSON)",
        "plots_dir": "output: clusters_2d.png, silhouette.png, profile.png",
        "elbow_scores": "input: the train stage's score per k (CSV), for the report",
        "elbow_plot": "input: the train stage's elbow plot (PNG), for the report",
        "report": "output: the segment report, one self-contained HTML page",
    },
    optional={"elbow_scores", "elbow_plot", "report"},
    params_model=EvaluateParams,
)


if __name__ == "__main__":
    main()

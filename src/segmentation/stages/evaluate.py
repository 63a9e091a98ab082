"""Stage ``evaluate``: cluster quality, per-cluster profiles of the unscaled features, segments and plots."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from segmentation import algorithms
from segmentation.config import EvaluateParams, flatten, parse_section
from segmentation.core import report
from segmentation.core.figures import profile_plot, projection_plot, silhouette_plot
from segmentation.core.plotting import FIGURE_DPI
from segmentation.core.progress import LONG_STEP_S, parts, step
from segmentation.core.quality import Evaluation, check_model, criteria_per_k, evaluate, profiled_columns
from segmentation.core.stability import cluster_stability, stability_key
from segmentation.engines import LOCAL, engine_module
from segmentation.errors import UserError
from segmentation.files import load_model, read_csv, read_matrix
from segmentation.stages.runner import Outcome, cli
from segmentation.tracking.lineage import upstream_lineage


def read_train_metrics(path: str | Path) -> dict[str, Any] | None:
    """The train stage's metrics (``k_best``, ``inertia``), or None when the file is absent."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # a folder, binary, cut short
        metrics = None
    if not isinstance(metrics, dict):
        fix = "remove it, then" if path.is_dir() else "rebuild it"
        raise UserError(f"{path}: not the JSON the train stage writes; {fix}: dvc repro -f -s train")
    return metrics


def read_optional_csv(path: str | None) -> pd.DataFrame | None:
    return read_csv(path, stage="train") if path and Path(path).is_file() else None


def work(args, params: EvaluateParams, raw_params: dict[str, Any]) -> Outcome:
    """Check the model against the matrix, run :func:`evaluate`, name the segments; say what to write and log."""
    preprocess_params = parse_section("preprocess", raw_params.get("preprocess"), args.params)
    if preprocess_params.engine != LOCAL:  # another engine does its own work
        return engine_module(preprocess_params.engine, "evaluate").work(args, params, preprocess_params)
    matrix = read_matrix(args.matrix, stage="preprocess")
    features = read_csv(args.features, stage="preprocess")
    id_column = matrix.columns[0]
    model_features = [c for c in preprocess_params.features if c in features.columns]
    categorical = preprocess_params.categorical.columns
    extras, text_extras = profiled_columns(features, id_column, model_features, categorical, params.profile_columns)
    model = load_model(args.model, stage="train")
    X = matrix.drop(columns=[id_column]).to_numpy(dtype=float)
    train_metrics = read_train_metrics(args.train_metrics)  # the model's check, then the report's k section
    labels = check_model(model, X, args.model, args.matrix, train_metrics, args.train_metrics)  # None or predicted
    result = evaluate(matrix, features, model, id_column, params, [*categorical, *text_extras], labels)
    labels = result.segments[report.CLUSTER_COLUMN].to_numpy()
    if resamples := params.stability_resamples:  # refitted with train's knobs: dvc.yaml declares train's params
        train_params, k = parse_section("train", raw_params.get("train"), args.params), algorithms.n_clusters(model)
        rows = min(len(X), params.stability_max_rows)
        algorithms.check_memory(train_params, rows, lower="evaluate.stability_max_rows", stage="evaluate")
        what = f"stability, {resamples} resamples of {rows:,} rows"
        with step("evaluate", what), parts("evaluate", what, resamples, "resample", LONG_STEP_S) as done:
            values = cluster_stability(X, labels, lambda: algorithms.make(train_params, k), resamples,
                                       params.stability_max_rows, params.random_state, done)  # fmt: skip
        result.metrics.update({stability_key(c): float(v) for c, v in enumerate(values)})
    figures = {
        "clusters_2d.png": projection_plot(matrix, labels, id_column, params.plot_sample_size, params.random_state),
        "silhouette.png": silhouette_plot(result.silhouette_values, result.silhouette_labels),
        "profile.png": profile_plot(result.profile, params.labels),
    }
    numeric = [*model_features, *extras]
    elbow = read_optional_csv(args.elbow_scores)
    criteria = None
    if args.report and elbow is not None and "k" in elbow:
        ks, what = [int(k) for k in elbow["k"]], f"criteria per k on {min(len(X), params.criteria_sample_size):,} rows"
        with step("evaluate", what), parts("evaluate", what, len(ks), "k", LONG_STEP_S) as done:
            criteria = criteria_per_k(X, ks, params.criteria_sample_size, params.random_state,
                                      params.k_stability_resamples, done)  # fmt: skip
    return report_outcome(
        args, params, model, result, figures, {c: report.column_kind(c, features[c]) for c in numeric},
        {c: float(features[c].mean()) for c in numeric}, report.contrasts(features[numeric], labels), criteria,
        model_features, extras, preprocess_params.categorical, train_metrics, elbow, len(labels),
        lambda out: out.write_csv(args.segments, result.segments),
    )  # fmt: skip


def report_outcome(
    args, params: EvaluateParams, model: Any, result: Evaluation, figures: dict[str, Any], kinds: dict[str, str],
    overall: dict[str, float], z: pd.DataFrame, criteria: pd.DataFrame | None, model_features: list[str],
    numeric_extras: list[str], categorical_params: Any, train_metrics: Mapping[str, Any] | None,
    elbow: pd.DataFrame | None, rows: int, write_segments: Callable[[Any], None],
) -> Outcome:  # fmt: skip
    """Name the segments and say what to write and log (either engine); ``z``: :func:`report.contrasts`,
    ``write_segments(out)`` writes the segments file."""
    profile = result.profile
    overall = {**overall, **{c: float((profile[c] * profile["size"]).sum() / rows) for c in profile if "=" in c}}
    segments = report.describe_segments(profile, overall, z, model_features, numeric_extras, kinds, params.labels)
    rounded = report.rounded_profile(profile, kinds)
    # The names go with the profile: `make score` puts them beside each new customer's segment.
    rounded.insert(1, report.NAME_COLUMN, [segment.name for segment in segments])
    # Not the labels: words, not knobs (the page shows them), keyed by column names MLflow may refuse as param names.
    evaluate_params = flatten(params.model_dump(mode="json", exclude={"labels"}), "evaluate.")
    stability = {
        s.cluster: result.metrics[key] for s in segments if (key := stability_key(s.cluster)) in result.metrics
    }
    for line in report.k_table(elbow, train_metrics, criteria)[2]:
        print(f"warning: evaluate: {line}" + (f" (see {args.report})" if args.report else ""), file=sys.stderr)
    for s in segments:
        if stability.get(s.cluster, 1.0) < report.UNSTABLE:
            print(f"warning: evaluate: segment {s.cluster} ({s.name}) has stability {stability[s.cluster]:.2f}: "
                  f"{report.stability_reading(stability[s.cluster])}", file=sys.stderr)  # fmt: skip

    def write(out, log) -> None:
        write_segments(out)
        out.write_csv(args.profile, rounded)
        out.write_json(args.metrics, result.metrics)
        images = {}
        for name, fig in figures.items():
            out.save_figure(f"{args.plots_dir}/{name}", fig, dpi=FIGURE_DPI)
            log.log_artifact(f"{args.plots_dir}/{name}")
            images[name.removesuffix(".png")] = out.staged(f"{args.plots_dir}/{name}").read_bytes()
        log.log_artifact(args.profile)
        if args.report:
            lineage = upstream_lineage("evaluate")
            elbow_png = Path(args.elbow_plot or "")
            algorithm = algorithms.REGISTRY[algorithms.algorithm_name(model)].label
            page = report.render_report(
                segments=segments, profile=profile, overall=overall, features=model_features, extras=numeric_extras,
                kinds=kinds, metrics=result.metrics, images=images, labels=params.labels,
                k_choice=report.k_choice_section(
                    elbow, train_metrics, criteria, elbow_png.read_bytes() if elbow_png.is_file() else None, algorithm
                ),
                stability=report.stability_section(
                    segments, stability, params.stability_resamples, min(rows, params.stability_max_rows)
                ),
                provenance=report.provenance_section(
                    {**lineage.params, **evaluate_params}, lineage.data_path, lineage.data_md5
                ),
            )  # fmt: skip
            out.write_text(args.report, page)
            log.log_artifact(args.report)
        # The k the model was trained with decides every result here; train's params come from dvc.lock.
        log.log_params({"k_best": algorithms.n_clusters(model), **evaluate_params})
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
        "train_metrics": "input: the train stage's metrics: the model must match its k_best and fit record (if any)",
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

"""Stage ``train``: the search over k for ``train.algorithm``, the final fit on all rows, the segmenter (raw row ->
segment)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd

from segmentation import algorithms
from segmentation.config import DataParams, TrainParams, flatten, load_section, parse_section
from segmentation.core.plotting import FIGURE_DPI
from segmentation.core.search import ElbowResult, elbow_search, fit_final, small_cluster_warning, small_sizes
from segmentation.core.segmenter import build_segmenter, example_rows, input_schema, requirements
from segmentation.engines import LOCAL, engine_module
from segmentation.errors import UserError
from segmentation.files import load_model, read_matrix
from segmentation.stages.runner import Outcome, cli
from segmentation.tracking.registry import SEGMENTER


def save_mlflow_model(segmenter, folder: str, data: DataParams | None = None) -> str:
    """Write ``segmenter`` as a self-contained MLflow model (the package's code in it) into ``folder``/segmenter: logged
    to the run, never a DVC output (its MLmodel holds a time and a UUID); requirements declared, not inferred (slow)."""
    from pathlib import Path

    import mlflow.sklearn

    import segmentation
    from segmentation.tracking.store import MLFLOW_SERIALIZATION, quiet_mlflow

    path = f"{folder}/{SEGMENTER}"  # the run's MLflow model: runs:/<run id>/segmenter
    example = example_rows(segmenter, data) if data is not None else None
    with quiet_mlflow():  # its notes on pickle safety and pip's version are not the user's concern here
        mlflow.sklearn.save_model(segmenter, path, signature=input_schema(segmenter), input_example=example,
                                  pip_requirements=requirements(), code_paths=[str(Path(segmentation.__file__).parent)],
                                  serialization_format=MLFLOW_SERIALIZATION)  # fmt: skip
    return path


def work(args, params: TrainParams, raw_params: dict[str, Any]) -> Outcome:
    """Read the matrix, search k and fit, build the segmenter; say what to write and log."""
    if args.segmenter and not args.preprocessor:
        raise UserError("--segmenter needs --preprocessor (the fitted preprocessing it includes)")
    # The segmenter's feature step is the preprocess recipe; preprocess.engine says where the matrix is.
    wanted = args.segmenter or raw_params.get("preprocess") is not None
    preprocess_params = parse_section("preprocess", raw_params.get("preprocess"), args.params) if wanted else None
    if preprocess_params is not None and preprocess_params.engine != LOCAL:
        return engine_module(preprocess_params.engine, "train").work(args, params, preprocess_params)
    matrix = read_matrix(args.matrix, stage="preprocess")
    preprocessor = load_model(args.preprocessor, stage="preprocess") if args.segmenter else None
    X = matrix.drop(columns=[matrix.columns[0]]).to_numpy(dtype=float)  # the first column is the ID
    elbow = elbow_search(X, params, source=args.matrix)
    model = fit_final(X, elbow, params)
    labels = algorithms.fit_labels(model, X)
    noise_share = float((labels == algorithms.NOISE).mean()) if algorithms.REGISTRY[params.algorithm].noise else None
    sizes = np.bincount(labels[labels != algorithms.NOISE], minlength=elbow.k_best)
    segmenter = build_segmenter(preprocess_params, preprocessor, model) if args.segmenter else None
    return outcome(args, params, elbow, model, algorithms.fit_record(model, X), sizes, noise_share, segmenter)


def outcome(args, params: TrainParams, elbow: ElbowResult, model: Any, record: dict[str, float], sizes: np.ndarray,
            noise_share: float | None, segmenter: Any) -> Outcome:  # fmt: skip
    """What train writes and logs, from the search, the model, its fit record, its clusters' sizes and noise share."""
    # The criterion that chose k names the score (distortion_at_k_best); HDBSCAN found k itself (noise_share).
    score = {} if elbow.rule == "density" else {f"{elbow.metric}_at_k_best": elbow.score_best}
    n_iter = {"n_iter": int(model.n_iter_)} if hasattr(model, "n_iter_") else {}
    noise = {} if noise_share is None else {"noise_share": noise_share}
    metrics = {"k_best": elbow.k_best, **score, **record, **n_iter, "search_rows": elbow.search_rows, **noise}
    tags = {"k_rule": elbow.rule}
    if small := small_sizes(sizes, params.min_cluster_size):  # a warning kept in metrics/train.json and MLflow
        message = small_cluster_warning(small, elbow.k_best, params.min_cluster_size)
        print(f"warning: train: {message}", file=sys.stderr)
        metrics.update(clusters_below_min_size=len(small), smallest_cluster_size=min(small.values()))
        tags["warning_small_clusters"] = message

    def write(out, log) -> None:
        out.dump_model(args.model, model)
        if segmenter is not None:
            out.dump_model(args.segmenter, segmenter)
        out.save_figure(args.elbow_plot, elbow.figure, dpi=FIGURE_DPI)
        scores = pd.DataFrame({"k": elbow.k_values, "score": elbow.scores, "metric": elbow.metric})
        out.write_csv(args.elbow_scores, scores)
        out.write_json(args.metrics, {**metrics, "k_rule": elbow.rule})
        log.log_params(flatten(params, "train."))
        log.log_metrics(metrics)
        log.set_tags(tags)
        for path in (args.model, args.elbow_plot, args.elbow_scores):
            log.log_artifact(path)
        if segmenter is not None:
            data = load_section("preprocess", args.params).data  # the input example: a few of its raw rows
            log.log_artifact_dir(save_mlflow_model(segmenter, str(out.scratch("segmenter-")), data), SEGMENTER)

    return Outcome(write, f"train: k_best = {elbow.k_best} ({elbow.rule}), {elbow.metric} = {elbow.score_best:.4g}")


FILES = {  # --<option>: its help
    "matrix": "input: ID + transformed matrix (.parquet or .csv)",
    "model": "output: the fitted clusterer of train.algorithm (pickle)",
    "preprocessor": "input: fitted preprocessing (pickle); needed with --segmenter",
    "segmenter": "output: raw row -> segment, a scikit-learn Pipeline (pickle), also an MLflow model",
    "elbow_plot": "output: elbow plot (PNG)",
    "elbow_scores": "output: score per k (CSV, DVC plot data)",
    "metrics": "output: k_best and its score (JSON)",
}
main = cli("train", __doc__, work, FILES, optional={"preprocessor", "segmenter"}, params_model=TrainParams)


if __name__ == "__main__":
    main()

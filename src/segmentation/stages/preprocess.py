"""Stage ``preprocess``: raw CSV -> derived features -> filtered rows -> scaled (optionally PCA) matrix."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from segmentation.config import PreprocessParams, flatten, profile_patterns
from segmentation.core import data
from segmentation.core.progress import step
from segmentation.core.transform import build_transformer, fit_preprocessing, input_columns, keep_rows
from segmentation.engines import LOCAL, engine_module
from segmentation.stages.runner import Outcome, cli
from segmentation.tracking.lineage import file_md5


def in_background(function, *args) -> Future:
    """``function(*args)`` in a daemon thread (a stage that stops early does not wait for it), as a future."""
    future: Future = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def work(args, params: PreprocessParams, raw_params: dict[str, Any]) -> Outcome:
    """Read the raw CSV (only the columns used), preprocess it, say what to write and log."""
    if params.engine != LOCAL:
        return engine_module(params.engine, "preprocess").work(args, params, raw_params)
    profile_columns = profile_patterns(raw_params, args.params)  # passed through for the evaluate stage
    # The raw file's md5 (for the MLflow run) is computed while the stage works: hashlib releases the GIL.
    md5 = in_background(file_md5, params.data.path)  # a missing file: load_csv says so, the future is dropped
    # The CSV is read while scikit-learn is imported (~1 s): pandas' tokenizer releases the GIL.
    reading = in_background(data.load_csv, params.data, [*input_columns(params), *profile_columns])
    build_transformer(params)
    with step("preprocess", f"read {params.data.path}"):
        raw = reading.result()
    del reading
    skipped = {"rows_malformed": raw.attrs["rows_malformed"]} if params.data.bad_rows == "skip" else {}
    with step("preprocess", f"checked, derived and transformed {len(raw)} rows"):
        kept = keep_rows(raw, params, source=params.data.path, profile_columns=profile_columns)
        del raw  # the fit and the outputs without the raw table in memory (0.4 GiB less at 3M rows)
        result = fit_preprocessing(kept, params)
    result.metrics = {**skipped, **result.metrics}

    def write(out, log) -> None:
        with step("preprocess", "wrote the features and the matrix"):
            out.write_table(args.features, result.features)
            out.write_table(args.matrix, result.matrix)
        out.dump_model(args.transformer, result.transformer)
        out.write_json(args.metrics, result.metrics)
        log.log_params(flatten(params, "preprocess."))
        log.log_data(params.data.path, md5.result())
        log.log_metrics(result.metrics)
        log.log_artifact(args.transformer)

    m, columns = result.metrics, result.matrix.shape[1] - 1
    return Outcome(write, f"preprocess: {m['rows_in']} rows in, {m['rows_out']} out, {columns} columns")


main = cli(
    "preprocess",
    __doc__,
    work,
    {
        "features": "output: ID + unscaled features (.parquet or .csv)",
        "matrix": "output: ID + transformed matrix (.parquet or .csv)",
        "transformer": "output: fitted preprocessing pipeline (pickle)",
        "metrics": "output: row counts (JSON)",
    },
    params_model=PreprocessParams,
)


if __name__ == "__main__":
    main()

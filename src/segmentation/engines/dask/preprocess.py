"""Stage ``preprocess`` on the Dask engine: its ``work`` (:func:`segmentation.stages.preprocess.work` hands over to
it on ``preprocess.engine: dask``); the partitions' work is :mod:`segmentation.engines.dask.engine`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segmentation.config import PreprocessParams, flatten, profile_patterns
from segmentation.core.progress import step
from segmentation.core.transform import input_columns
from segmentation.engines.dask import engine as dask_engine
from segmentation.engines.dask.params import dask_params
from segmentation.stages.preprocess import in_background
from segmentation.stages.runner import Outcome
from segmentation.tracking.lineage import file_md5


def work(args, params: PreprocessParams, raw_params: dict[str, Any]) -> Outcome:
    """The local engine's outputs, the tables as partitioned Parquet (or manifests of parts on object storage)."""
    profile_columns = profile_patterns(raw_params, args.params)  # passed through for the evaluate stage
    # The raw file's md5 (for the MLflow run) is computed while the cluster works: hashlib releases the GIL.
    md5 = in_background(file_md5, params.data.path) if Path(params.data.path).is_file() else None
    columns = [*input_columns(params), *profile_columns]
    with (
        dask_engine.dask_client(dask_params(params, args.params)) as client,
        step("preprocess", f"preprocessed {params.data.path} on Dask"),
    ):
        result = dask_engine.preprocess_on_dask(client, params, columns, profile_columns, args.features, args.matrix)

    def write(out, log) -> None:
        if result.manifests is None:
            out.adopt(args.features, result.features_dir)
            out.adopt(args.matrix, result.matrix_dir)
        else:  # the tables are on object storage: their manifests at the dvc.yaml paths (engines.dask.store)
            out.write_manifest(args.features, result.manifests[0])
            out.write_manifest(args.matrix, result.manifests[1])
        out.dump_model(args.transformer, result.transformer)
        out.write_json(args.metrics, result.metrics)
        log.log_params(flatten(params, "preprocess."))
        log.log_data(params.data.path, md5.result() if md5 is not None else None)
        log.log_metrics(result.metrics)
        log.log_artifact(args.transformer)

    m = result.metrics
    return Outcome(
        write,
        f"preprocess: {m['rows_in']} rows in, {m['rows_out']} out, {result.matrix_columns} columns "
        f"({result.partitions} partition(s) on Dask)",
    )

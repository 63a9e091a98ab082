"""The Dask engine's inputs (:mod:`segmentation.dask_sources`): Parquet datasets, S3-compatible storage with the DVC
remote's credentials, DVC dependencies on them, and ``make score`` on the cluster.

Real components only: a LocalCluster of two worker processes on 127.0.0.1 (stopped at the end of the module), moto's
S3 server on 127.0.0.1 (:func:`servers.moto_s3_server`, IAM authentication switched on after the test data is
uploaded, so that a wrong key is refused as S3 refuses it), s3fs, DVC. Marked ``dask``; the first tests need no
cluster.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_helpers import FIXTURE_DATA, FIXTURE_PARAMS, REPO
from segmentation.config import DaskParams, PreprocessParams
from segmentation.errors import UserError
from segmentation.files import read_csv
from segmentation.preprocess import input_columns, preprocess

SMALL_BLOCKS = "8kB"
PROFILE = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())["evaluate"]["profile_columns"]
ROW_GROUP = 60  # rows per Parquet row group: the sample's 428 rows in several partitions per file


# -- no cluster -----------------------------------------------------------------------------------------------------
def with_data(params: PreprocessParams, **data) -> PreprocessParams:
    return params.model_copy(update={"data": params.data.model_copy(update=data)})


@pytest.mark.parametrize("path", ["data/*.csv", "data/x.parquet", "s3://bucket/x.csv", "remote://origin/x.csv"])
def test_the_local_engine_names_what_needs_dask(preprocess_params, path):
    from pydantic import ValidationError

    base = preprocess_params.model_dump()
    with pytest.raises(ValidationError, match="engine 'local' reads one local CSV file"):
        PreprocessParams.model_validate({**base, "data": {**base["data"], "path": path}})
    PreprocessParams.model_validate({**base, "engine": "dask", "data": {**base["data"], "path": path}})


def test_storage_options_come_from_the_dvc_remote_then_the_environment():
    from segmentation.dask_sources import s3_options

    remote = {"url": "s3://b", "endpointurl": "http://127.0.0.1:1", "access_key_id": "K", "secret_access_key": "S"}
    env = {"AWS_ACCESS_KEY_ID": "envK", "AWS_SECRET_ACCESS_KEY": "envS", "AWS_SESSION_TOKEN": "T"}
    options = s3_options(remote, env)
    assert (options["key"], options["secret"], options["token"]) == ("K", "S", "T")
    assert options["endpoint_url"] == "http://127.0.0.1:1"
    assert s3_options({}, env)["key"] == "envK"
    assert "endpoint_url" not in s3_options({}, {})


def test_a_parquet_message_names_rows(tmp_path):
    from segmentation.dask_sources import rows_not_lines

    assert rows_not_lines("x: e.g. '58k' on line 302") == "x: e.g. '58k' on row 301"
    assert rows_not_lines("duplicates, e.g. 7 on lines 4 (a.parquet) and 352 (b.parquet)") == (
        "duplicates, e.g. 7 on rows 3 (a.parquet) and 351 (b.parquet)"
    )
    assert rows_not_lines("on lines 4 and 352") == "on rows 3 and 351"


# -- on a LocalCluster ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """The engine's own client context: a LocalCluster of 2 worker processes, 1 thread each, on 127.0.0.1."""
    from segmentation import dask_engine

    saved = os.environ.pop(dask_engine.SCHEDULER_ENV, None)
    try:
        with dask_engine.dask_client(DaskParams(n_workers=2, threads_per_worker=1, memory_limit="1GiB")) as c:
            yield c
    finally:
        if saved is not None:
            os.environ[dask_engine.SCHEDULER_ENV] = saved


def dask_params(params: PreprocessParams, **data) -> PreprocessParams:
    return params.model_copy(
        update={
            "engine": "dask",
            "dask": DaskParams(blocksize=SMALL_BLOCKS),
            "data": params.data.model_copy(update=data),
        }
    )


def on_dask(client, params: PreprocessParams, out):
    from segmentation.dask_engine import preprocess_on_dask

    out.mkdir(exist_ok=True)
    result = preprocess_on_dask(
        client, params, [*input_columns(params), *PROFILE], PROFILE, out / "features.parquet", out / "matrix.parquet"
    )
    return result, read_csv(result.features_dir), read_csv(result.matrix_dir)


def write_parquet_parts(raw: pd.DataFrame, folder, cuts=(0, 150, 151, None), name="part-{}.parquet") -> list:
    """``raw`` (the sample as the local engine reads it) as Parquet files of several row groups each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    plain = raw.copy()
    plain.attrs = {}
    files = []
    for number, (start, stop) in enumerate(itertools.pairwise(cuts)):
        path = folder / name.format(number)
        pq.write_table(
            pa.Table.from_pandas(plain.iloc[start:stop], preserve_index=False), path, row_group_size=ROW_GROUP
        )
        files.append(path)
    return files


@pytest.fixture(scope="module")
def local(raw_full, preprocess_params):
    """The local engine's outputs on the sample CSV."""
    return preprocess(raw_full, preprocess_params, preprocess_params.data.path, profile_columns=PROFILE)


def same_as_local(local, result, features, matrix) -> None:
    assert result.metrics == local.metrics
    pd.testing.assert_frame_equal(features, local.features)
    assert matrix["ID"].equals(local.matrix["ID"])
    np.testing.assert_allclose(matrix.iloc[:, 1:], local.matrix.iloc[:, 1:], rtol=0, atol=1e-9)


@pytest.mark.dask
def test_a_parquet_dataset_gives_the_csv_s_outputs(client, raw_full, preprocess_params, local, tmp_path):
    """The sample as a folder of 3 Parquet files (row groups of 60 rows; a `_SUCCESS` marker beside them), as a
    glob and as one file: the local engine's outputs on the CSV, one partition per row group."""
    folder = tmp_path / "dataset"
    write_parquet_parts(raw_full, folder)
    (folder / "_SUCCESS").write_bytes(b"")
    one = write_parquet_parts(raw_full, tmp_path / "one", cuts=(0, None), name="all{}.parquet")[0]
    for path in (folder, folder / "part-*.parquet", one):
        result, features, matrix = on_dask(client, dask_params(preprocess_params, path=str(path)), tmp_path / "out")
        same_as_local(local, result, features, matrix)
    assert result.partitions == -(-len(raw_full) // ROW_GROUP)


@pytest.mark.dask
def test_a_bad_value_in_parquet_names_its_file_and_row(client, raw_full, preprocess_params, tmp_path):
    bad = raw_full.copy()
    bad.loc[300, "Kidhome"] = -1
    write_parquet_parts(bad, tmp_path / "dataset")
    with pytest.raises(UserError) as found:
        on_dask(client, dask_params(preprocess_params, path=str(tmp_path / "dataset")), tmp_path / "out")
    message = str(found.value)
    assert "Kidhome" in message and "row 150" in message and "line" not in message, message  # file 2, its row 150


@pytest.mark.dask
@pytest.mark.parametrize("case", ["nothing", "mixed", "empty folder"])
def test_an_input_that_matches_nothing_or_mixes_formats_is_one_line(
    client, raw_full, preprocess_params, tmp_path, case
):
    folder = tmp_path / "dataset"
    folder.mkdir()
    if case == "mixed":
        write_parquet_parts(raw_full, folder)
        (folder / "more.csv").write_bytes((REPO / FIXTURE_DATA).read_bytes())
    path = str(folder / "nothing-*.csv") if case == "nothing" else str(folder)
    with pytest.raises(UserError) as found:
        on_dask(client, dask_params(preprocess_params, path=path), tmp_path / "out")
    message = str(found.value)
    assert message.startswith(f"params.yaml: preprocess.data.path: {path}: ") and "\n" not in message
    expected = "mixes Parquet and CSV files" if case == "mixed" else "no data file found"
    assert expected in message

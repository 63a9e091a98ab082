"""The Dask engine's inputs (:mod:`segmentation.engines.dask.sources`): Parquet datasets, S3-compatible storage with
the DVC remote's credentials, DVC dependencies on them, and ``make score`` on the cluster.

Real components only: a LocalCluster of two worker processes on 127.0.0.1 (stopped at the end of the module), moto's
S3 server on 127.0.0.1 (:func:`servers.moto_s3_server`, IAM authentication switched on after the test data is
uploaded, so that a wrong key is refused as S3 refuses it), s3fs, DVC. Marked ``dask``; the first tests need no
cluster. Skipped whole without the dask extra; the params checks that need no Dask are in tests/test_engines.py.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_helpers import DAGSHUB_SINK as DISCARD  # the discard port on 127.0.0.1
from pipeline_helpers import FIXTURE_DATA, FIXTURE_PARAMS, REPO
from segmentation.config import PreprocessParams
from segmentation.core.transform import input_columns, preprocess
from segmentation.errors import UserError
from segmentation.files import read_csv

# Without the dask extra (`make setup` installs none) the whole file is one skip line: make setup EXTRAS=dask.
pytest.importorskip("dask", reason="the dask extra is not installed: make setup EXTRAS=dask")

from segmentation.engines.dask.params import DaskParams

SMALL_BLOCKS = "8kB"
PROFILE = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())["evaluate"]["profile_columns"]
# The LocalCluster a stage or `make score` starts in a subprocess: one worker process (starting and importing a
# worker is most of such a run's time on 2 cores; the module's own cluster has two).
STAGE_CLUSTER = {"blocksize": SMALL_BLOCKS, "n_workers": 1, "memory_limit": "1GiB"}
ROW_GROUP = 60  # rows per Parquet row group: the sample's 428 rows in several partitions per file


# -- no cluster -----------------------------------------------------------------------------------------------------
def test_the_input_with_data_files_and_the_default_score_output():
    from segmentation.config import DataParams
    from segmentation.engines.dask.score import default_output
    from segmentation.engines.dask.sources import data_path

    data = DataParams(path="data/raw/parts/", separator=",", files="part-*.csv")
    assert data_path(data) == "data/raw/parts/part-*.csv"
    assert str(default_output("data/new/part-*.csv")).endswith("new_segments.parquet")
    assert str(default_output("remote://data/new/customers/")).endswith("customers_segments.parquet")
    assert str(default_output("new.csv")).endswith("new_segments.parquet")


def test_too_many_csv_blocks_is_one_line_naming_blocksize(monkeypatch, tmp_path):
    """More blocks than the scheduler handles in reasonable time (a tiny blocksize on a large input): one line, before
    any task."""
    from segmentation.config import DataParams
    from segmentation.engines.dask import sources

    (tmp_path / "sample.csv").write_bytes((REPO / FIXTURE_DATA).read_bytes())  # 42 kB: 11 blocks of 4 kB
    monkeypatch.chdir(tmp_path)
    data = DataParams(path="sample.csv", separator="\t")
    assert len(sources.partitions(data, 4000)[1]) == 11
    monkeypatch.setattr(sources, "MAX_PARTITIONS", 10)
    with pytest.raises(UserError) as bad:
        sources.partitions(data, 4000)
    assert str(bad.value) == (
        "params.yaml: preprocess.dask.blocksize: 4000 bytes cut sample.csv into 11 partitions (at most 10); "
        "raise it (e.g. 64MiB)"
    )


def test_storage_options_come_from_the_dvc_remote_then_the_environment():
    from segmentation.engines.dask.sources import s3_options

    remote = {"url": "s3://b", "endpointurl": "http://127.0.0.1:1", "access_key_id": "K", "secret_access_key": "S"}
    env = {"AWS_ACCESS_KEY_ID": "envK", "AWS_SECRET_ACCESS_KEY": "envS", "AWS_SESSION_TOKEN": "T"}
    options = s3_options(remote, env)
    assert (options["key"], options["secret"], options["token"]) == ("K", "S", "T")
    assert options["endpoint_url"] == "http://127.0.0.1:1"
    assert s3_options({}, env)["key"] == "envK"
    assert "endpoint_url" not in s3_options({}, {})


def test_a_parquet_message_names_rows(tmp_path):
    from segmentation.engines.dask.sources import rows_not_lines

    assert rows_not_lines("x: e.g. '58k' on line 302") == "x: e.g. '58k' on row 301"
    assert rows_not_lines("duplicates, e.g. 7 on lines 4 (a.parquet) and 352 (b.parquet)") == (
        "duplicates, e.g. 7 on rows 3 (a.parquet) and 351 (b.parquet)"
    )
    assert rows_not_lines("on lines 4 and 352") == "on rows 3 and 351"


# -- on a LocalCluster ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """The engine's own client context: a LocalCluster of 2 worker processes, 1 thread each, on 127.0.0.1."""
    from segmentation.engines.dask import engine as dask_engine

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
    from segmentation.engines.dask.engine import preprocess_on_dask

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


# -- S3-compatible storage: moto's server on 127.0.0.1 --------------------------------------------------------------
BUCKET = "segments-data"
USER = "pipeline"


class S3Store:
    """The running moto server, the key it accepts (an IAM user's, authentication on) and a DVC project's config."""

    def __init__(self, endpoint: str, key_id: str, secret: str):
        self.endpoint, self.key_id, self.secret = endpoint, key_id, secret

    def client(self):
        """A boto3 S3 client with the accepted key (authentication is on)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )  # fmt: skip

    def project(self, root, secret: str | None = None, url: str = f"s3://{BUCKET}", endpoint: str | None = None):
        """``root`` as a DVC project whose default remote ``origin`` is this store: endpoint in ``.dvc/config``,
        credentials in ``.dvc/config.local`` (as `make dagshub S3=1` and `dvc remote modify --local` write them)."""
        dvc = root / ".dvc"
        dvc.mkdir(parents=True, exist_ok=True)
        (dvc / "config").write_text(
            f"[core]\n    remote = origin\n['remote \"origin\"']\n    url = {url}\n"
            f"    endpointurl = {endpoint or self.endpoint}\n"
        )
        (dvc / "config.local").write_text(
            f"['remote \"origin\"']\n    access_key_id = {self.key_id}\n"
            f"    secret_access_key = {self.secret if secret is None else secret}\n"
        )
        return root


@pytest.fixture(scope="module")
def s3(tmp_path_factory, raw_full):
    """moto's S3 server with bucket ``segments-data``: ``raw/sample.csv`` (the sample), ``raw/parts/part-N.csv``
    (the sample in 3 files), ``raw/dataset/part-N.parquet`` (as Parquet, row groups of 60 rows). After the upload,
    IAM authentication is switched on: only the access key of user ``pipeline`` (allowed s3:*) is accepted."""
    import json
    from urllib.request import Request, urlopen

    import boto3

    from servers import moto_s3_server

    work = tmp_path_factory.mktemp("s3")
    with moto_s3_server(work / "moto") as endpoint:
        setup = {"endpoint_url": endpoint, "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", region_name="us-east-1", **setup)
        client = boto3.client("s3", region_name="us-east-1", **setup)
        iam.create_user(UserName=USER)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=USER, PolicyName="data", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        client.create_bucket(Bucket=BUCKET)
        text = (REPO / FIXTURE_DATA).read_bytes().decode("utf-8")
        client.put_object(Bucket=BUCKET, Key="raw/sample.csv", Body=text.encode("utf-8"))
        header, *rows = text.splitlines(keepends=True)
        for number, (start, stop) in enumerate([(0, 150), (150, 151), (151, len(rows))]):
            body = header + "".join(rows[start:stop])
            client.put_object(Bucket=BUCKET, Key=f"raw/parts/part-{number}.csv", Body=body.encode("utf-8"))
        for path in write_parquet_parts(raw_full, work / "dataset"):
            client.put_object(Bucket=BUCKET, Key=f"raw/dataset/{path.name}", Body=path.read_bytes())
        switch = Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        with urlopen(switch, timeout=10) as answer:
            assert answer.status == 200
        yield S3Store(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.mark.dask
def test_s3_inputs_read_with_the_dvc_remote_s_credentials_give_the_local_outputs(
    client, s3, local, preprocess_params, tmp_path, monkeypatch
):
    """The workers read the bucket with the endpoint and key of the DVC remote (``.dvc/config`` +
    ``.dvc/config.local``): the CSV through ``remote://origin/...``, the CSV files by an ``s3://`` glob (the remote of
    that bucket), the Parquet folder; each gives the local engine's outputs on the local file."""
    monkeypatch.chdir(s3.project(tmp_path / "project"))
    for number, path in enumerate(
        ["remote://origin/raw/sample.csv", f"s3://{BUCKET}/raw/parts/part-*.csv", "remote://origin/raw/dataset/"]
    ):
        result, features, matrix = on_dask(client, dask_params(preprocess_params, path=path), tmp_path / f"o{number}")
        same_as_local(local, result, features, matrix)


@pytest.mark.dask
@pytest.mark.parametrize(
    ("case", "path", "expected"),
    [
        ("wrong secret", "remote://origin/raw/sample.csv", "access denied: check the credentials (DVC remote origin)"),
        ("missing bucket", "remote://origin/raw/sample.csv", "no data file found (no bucket 'no-such-bucket'"),
        ("missing key", "remote://origin/raw/nothing.csv", "no data file found"),
        ("no such remote", "remote://elsewhere/raw/sample.csv", "no DVC remote 'elsewhere'"),
        (
            "unreachable",
            "remote://origin/raw/sample.csv",
            "storage unreachable (DVC remote origin): could not connect; check its endpointurl",
        ),
    ],
)
def test_a_storage_problem_is_one_line_and_writes_nothing(
    client, s3, preprocess_params, tmp_path, monkeypatch, case, path, expected
):
    url = "s3://no-such-bucket" if case == "missing bucket" else f"s3://{BUCKET}"
    secret = "wrong" if case == "wrong secret" else None
    endpoint = DISCARD if case == "unreachable" else None  # nothing listens there
    monkeypatch.chdir(s3.project(tmp_path / "project", secret=secret, url=url, endpoint=endpoint))
    with pytest.raises(UserError) as found:
        on_dask(client, dask_params(preprocess_params, path=path), tmp_path / "out")
    message = str(found.value)
    assert message.startswith(f"params.yaml: preprocess.data.path: {path}: {expected}"), message
    assert "\n" not in message and s3.secret not in message
    assert list((tmp_path / "out").iterdir()) == []


STAGE_OUTPUTS = ["--features", "out/f.parquet", "--matrix", "out/m.parquet", "--transformer", "out/t.joblib",
                 "--metrics", "out/p.json", "--dagshub-dir", "out/dh"]  # fmt: skip


def run_stage(root, data_path: str):
    """`python -m segmentation.stages.preprocess` with engine dask (its own LocalCluster) on ``data_path``,
    in ``root``."""
    import subprocess
    import sys

    from pipeline_helpers import project_env

    params = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
    params["preprocess"]["data"]["path"] = data_path
    params["preprocess"]["engine"] = "dask"
    params["preprocess"]["dask"] = STAGE_CLUSTER
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = project_env(root.parent)  # no AWS_* variables: the DVC remote's only
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "segmentation.stages.preprocess", *STAGE_OUTPUTS],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def files_holding(root, text: str) -> list[str]:
    """Every file under ``root`` (the MLflow store, logs, outputs, params) whose bytes hold ``text``, but the
    git-ignored ``.dvc/config.local`` where it belongs."""
    return [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != ".dvc/config.local" and text.encode() in p.read_bytes()
    ]


@pytest.mark.dask
def test_the_stage_reads_s3_and_writes_the_secret_nowhere(s3, local, tmp_path):
    """The stage on ``remote://origin/raw/dataset/`` (Parquet on moto, its own LocalCluster): the local outputs;
    the secret key is in no output, log, param or MLflow record, nor on stdout/stderr. With a wrong key: one
    ``error:`` line, exit 2, nothing written."""
    from pipeline_helpers import the_error

    root = s3.project(tmp_path / "project")
    proc = run_stage(root, "remote://origin/raw/dataset/")
    assert proc.returncode == 0, proc.stderr
    pd.testing.assert_frame_equal(read_csv(root / "out" / "f.parquet"), local.features)
    matrix = read_csv(root / "out" / "m.parquet")
    np.testing.assert_allclose(matrix.iloc[:, 1:], local.matrix.iloc[:, 1:], rtol=0, atol=1e-9)
    assert (root / "mlflow.db").is_file() and list((root / "out" / "dh").iterdir())  # what the stage logged
    assert s3.secret not in proc.stdout + proc.stderr
    assert files_holding(root, s3.secret) == []

    wrong = s3.project(tmp_path / "wrong", secret="not-the-secret")
    line = the_error(run_stage(wrong, "remote://origin/raw/dataset/"), wrong)
    assert line.startswith("error: params.yaml: preprocess.data.path: remote://origin/raw/dataset/: access denied")


# -- make score on the cluster --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter(raw_full, preprocess_params):
    """preprocess and train in-process on the sample (the local engine); the segmenter built from them."""
    from segmentation.config import load_section
    from segmentation.core.search import train
    from segmentation.core.segmenter import build_segmenter

    result = preprocess(raw_full, preprocess_params, "sample.csv")
    _, model = train(result.matrix, "ID", load_section("train", REPO / FIXTURE_PARAMS))
    return build_segmenter(preprocess_params, result.transformer, model)


def local_scores(raw_full, segmenter, params, names):
    from segmentation.tools.score import score, with_names

    scored, rejects, outliers = score(raw_full, segmenter, params, "sample.csv")
    return with_names(scored, names), rejects, outliers


def csv_parts(folder) -> str:
    """The sample cut into three CSV files (each with the header); returns their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    header, *rows = (REPO / FIXTURE_DATA).read_text(encoding="utf-8").splitlines(keepends=True)
    for number, (start, stop) in enumerate([(0, 150), (150, 151), (151, len(rows))]):
        (folder / f"part-{number}.csv").write_text(header + "".join(rows[start:stop]), encoding="utf-8")
    return str(folder / "part-*.csv")


@pytest.mark.dask
def test_scoring_on_dask_gives_local_scoring_s_ids_segments_and_rejects(
    client, s3, segmenter, raw_full, preprocess_params, tmp_path, monkeypatch
):
    """The sample scored on the cluster from a glob of CSV files, a local Parquet folder and Parquet on S3 (the DVC
    remote's credentials): the same IDs in the same order, the same segments and names, the same rejects and
    outlier count as `make score` on the CSV with the local engine."""
    from segmentation.engines.dask.score import score_on_dask

    names = {k: f"segment {k}" for k in range(10)}
    scored, rejects, outliers = local_scores(raw_full, segmenter, preprocess_params, names)
    assert len(rejects) and outliers  # the sample has both
    write_parquet_parts(raw_full, tmp_path / "dataset")
    monkeypatch.chdir(s3.project(tmp_path / "project"))
    inputs = [csv_parts(tmp_path / "parts"), str(tmp_path / "dataset"), "remote://origin/raw/dataset/"]
    for number, path in enumerate(inputs):
        params = dask_params(preprocess_params, path=path)
        result = score_on_dask(client, segmenter, params, names, tmp_path / f"o{number}" / "s.parquet")
        got = read_csv(result.scored_dir)
        pd.testing.assert_frame_equal(got, scored, check_dtype=False)
        assert got["segment"].dtype == "int64"
        pd.testing.assert_frame_equal(read_csv(result.rejects_dir), rejects, check_dtype=False)
        assert (result.rows, result.scored, result.outliers) == (len(raw_full), len(scored), outliers)
        assert result.rejected == len(rejects) and result.first_rejects == rejects["ID"].head(10).tolist()


@pytest.mark.dask
def test_scoring_on_dask_without_an_id_column_numbers_rows_as_local_scoring(
    client, segmenter, raw_full, preprocess_params, tmp_path
):
    """id_column null: the scores' and the rejects' row_id, numbered per partition and shifted by the rows read
    before it, are local scoring's (1 = the file's first data row), and so are the first rejected IDs shown."""
    from segmentation.engines.dask.score import score_on_dask

    params = preprocess_params.model_copy(
        update={"data": preprocess_params.data.model_copy(update={"id_column": None})}
    )
    names = {k: f"segment {k}" for k in range(10)}
    scored, rejects, outliers = local_scores(raw_full, segmenter, params, names)
    assert len(rejects) and scored.columns[0] == "row_id"
    result = score_on_dask(client, segmenter, dask_params(params), names, tmp_path / "s.parquet")
    assert result.partitions > 5
    pd.testing.assert_frame_equal(read_csv(result.scored_dir), scored, check_dtype=False)
    pd.testing.assert_frame_equal(read_csv(result.rejects_dir), rejects, check_dtype=False)
    assert (result.rows, result.scored, result.outliers) == (len(raw_full), len(scored), outliers)
    assert result.first_rejects == rejects["row_id"].head(10).tolist()


@pytest.mark.dask
def test_make_score_on_dask_writes_parquet_and_stops_on_bad_input_with_one_line(
    segmenter, raw_full, preprocess_params, tmp_path
):
    """`make score INPUT='parts/part-*.csv'` with engine dask (its own LocalCluster): `scores/parts_segments.parquet`
    holds local scoring's rows, the rejects line is local scoring's; an ID repeated across two files: one `error:`
    line naming both lines and files, exit 2, nothing written."""
    import subprocess

    import joblib

    from pipeline_helpers import paths, project_env

    root = tmp_path / "project"
    (root / paths()["segmenter"]).parent.mkdir(parents=True)
    (root / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())  # where make score finds the segmenter
    joblib.dump(segmenter, root / paths()["segmenter"])
    params = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
    params["preprocess"]["engine"] = "dask"
    params["preprocess"]["dask"] = STAGE_CLUSTER
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = project_env(tmp_path)
    env.pop("DASK_SCHEDULER_ADDRESS", None)

    def make_score(pattern: str):
        return subprocess.run(
            ["make", "-f", str(REPO / "Makefile"), "score", f"INPUT={pattern}"],
            cwd=root, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    csv_parts(root / "parts")
    proc = make_score("parts/part-*.csv")
    assert proc.returncode == 0, proc.stderr
    output = root / "scores" / "parts_segments.parquet"
    assert f"-> {output.relative_to(root)} (" in proc.stdout
    scored, rejects, _ = local_scores(raw_full, segmenter, preprocess_params, None)
    pd.testing.assert_frame_equal(read_csv(output), scored, check_dtype=False)
    from segmentation.tools.score import rejects_line

    rejects_file = root / "scores" / "parts_segments_rejects.parquet"
    assert rejects_line(rejects, len(raw_full), rejects_file.relative_to(root)) in proc.stderr
    pd.testing.assert_frame_equal(read_csv(rejects_file), rejects, check_dtype=False)

    bad = root / "bad"
    header, *rows = (REPO / FIXTURE_DATA).read_text(encoding="utf-8").splitlines(keepends=True)
    bad.mkdir()
    (bad / "a.csv").write_text(header + "".join(rows[:100]), encoding="utf-8")
    (bad / "b.csv").write_text(header + "".join(rows[99:]), encoding="utf-8")  # row 99 in both files
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    proc = make_score("bad/*.csv")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert len(lines) == 1 and lines[0].startswith("error: bad/*.csv: ID column ID has duplicates"), proc.stderr
    assert "on lines 101 (bad/a.csv) and 2 (bad/b.csv)" in lines[0]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


# -- DVC: a folder (+ data.files) or a remote:// prefix as the stage's dependency -------------------------------------
def dask_project(tmp_path, path: str, files: str):
    """A project copy on the tests' params and sample, preprocess on Dask reading ``path`` + ``files``."""
    from pipeline_helpers import copy_project, project_env, use_fixture_data

    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    use_fixture_data(root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["preprocess"]["data"].update(path=path, files=files)
    params["preprocess"]["engine"] = "dask"
    params["preprocess"]["dask"] = STAGE_CLUSTER
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root, env


def repro_preprocess(root, env) -> tuple[bool, int]:
    """`dvc repro preprocess`: whether the stage ran, and the rows it read (metrics)."""
    import json

    from pipeline_helpers import paths, run

    proc = run(["dvc", "repro", "preprocess"], root, env)
    ran = "Running stage 'preprocess'" in proc.stdout
    assert ran or "Stage 'preprocess' didn't change, skipping" in proc.stdout, proc.stdout
    return ran, json.loads((root / paths(root)["preprocess_metrics"]).read_text())["rows_in"]


@pytest.mark.dask
@pytest.mark.pipeline
def test_dvc_reruns_preprocess_when_a_file_of_the_folder_changes_and_only_then(tmp_path):
    """data.path a folder (the DVC dependency), data.files the glob of its CSV files: `dvc repro` runs the stage,
    skips it when nothing changed, runs it again when one of the files changes."""
    root, env = dask_project(tmp_path, "data/raw/parts", "part-*.csv")
    csv_parts(root / "data" / "raw" / "parts")
    assert repro_preprocess(root, env) == (True, 428)
    assert repro_preprocess(root, env)[0] is False
    part = root / "data" / "raw" / "parts" / "part-2.csv"
    part.write_text("".join(part.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    assert repro_preprocess(root, env) == (True, 427)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["preprocess"]["deps"]
    assert any(d["path"] == "data/raw/parts" and d["md5"].endswith(".dir") for d in lock)


@pytest.mark.dask
@pytest.mark.pipeline
def test_dvc_tracks_a_remote_prefix_as_an_external_dependency(s3, tmp_path):
    """data.path ``remote://data/dvc/parts/`` (a DVC remote ``data`` on moto, its key in .dvc/config.local): DVC
    hashes the prefix (ETags) with the remote's endpoint and key, runs the stage, skips it when nothing changed and
    runs it again when an object changes; the secret is written in no file but config.local."""
    from pipeline_helpers import run

    client = s3.client()
    header, *rows = (REPO / FIXTURE_DATA).read_text(encoding="utf-8").splitlines(keepends=True)
    for number, (start, stop) in enumerate([(0, 200), (200, len(rows))]):
        body = (header + "".join(rows[start:stop])).encode("utf-8")
        client.put_object(Bucket=BUCKET, Key=f"dvc/parts/part-{number}.csv", Body=body)
    root, env = dask_project(tmp_path, "remote://data/dvc/parts/", "part-*.csv")
    run(["dvc", "remote", "add", "data", f"s3://{BUCKET}"], root, env)
    run(["dvc", "remote", "modify", "data", "endpointurl", s3.endpoint], root, env)
    run(["dvc", "remote", "modify", "--local", "data", "access_key_id", s3.key_id], root, env)
    run(["dvc", "remote", "modify", "--local", "data", "secret_access_key", s3.secret], root, env)
    assert repro_preprocess(root, env) == (True, 428)
    assert repro_preprocess(root, env)[0] is False
    body = (header + "".join(rows[200:-1])).encode("utf-8")
    client.put_object(Bucket=BUCKET, Key="dvc/parts/part-1.csv", Body=body)
    assert repro_preprocess(root, env) == (True, 427)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["preprocess"]["deps"]
    assert any(d["path"] == "remote://data/dvc/parts/" for d in lock), lock
    assert files_holding(root, s3.secret) == []

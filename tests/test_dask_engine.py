"""The Dask engine (``preprocess.engine: dask``) against the local engine, on real clusters on 127.0.0.1: a
LocalCluster of two worker processes (every server on loopback only), stopped at the end of the module; a separately
started `dask scheduler` and two `dask worker` processes, stopped likewise; the stages' own LocalClusters.

Marked ``dask``: `make test` leaves these to `make test-all`. The first tests need no cluster. The whole pipeline
on Dask: tests/test_dask_pipeline.py. Skipped whole without the dask extra; the params checks that need no Dask are
in tests/test_engines.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_helpers import FIXTURE_DATA, FIXTURE_PARAMS, REPO, project_env
from segmentation.config import PreprocessParams
from segmentation.core.transform import CATEGORIES_HINT, input_columns, preprocess
from segmentation.errors import UserError
from segmentation.files import read_csv

# Without the dask extra (`make setup` installs none) the whole file is one skip line: make setup EXTRAS=dask.
pytest.importorskip("dask", reason="the dask extra is not installed: make setup EXTRAS=dask")

from segmentation.engines.dask import params as dask_params_module
from segmentation.engines.dask.params import DaskParams, dask_params

SMALL_BLOCKS = "8kB"  # the 428-row sample (~50 kB of the columns used... ~110 kB in all) in about 14 partitions
TINY_BLOCKS = "4kB"  # the sample (a 42 kB file) in 11 partitions
PROFILE = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())["evaluate"]["profile_columns"]


# -- no cluster -----------------------------------------------------------------------------------------------------
BYTE_SIZES = ["600MiB", "600 MiB", "2GB", "1.5GiB", "1000000000", "5G", "2gi", "1PB"]  # above both minimums


@pytest.mark.parametrize("text", BYTE_SIZES)
def test_byte_sizes_read_as_dask_reads_them(text):
    assert DaskParams(blocksize=text, memory_limit=text).blocksize == text


@pytest.mark.parametrize("text", ["lots", "64 MiBs", "-1MB", "0", "", 0])
def test_a_bad_byte_size_is_an_error(text):
    from pydantic import ValidationError

    for knob in ("blocksize", "memory_limit"):
        with pytest.raises(ValidationError, match="not a byte size"):
            DaskParams(**{knob: text})


@pytest.mark.parametrize(
    ("knob", "least", "above", "below"),
    [("blocksize", "4kB", ["4000", "5 kib", "500kB", "64MiB"], ["3999", "1", "1B", "3 kib"]),
     ("memory_limit", "512MiB", ["512MiB", "2GB", "auto"], ["511MiB", "256MiB", "12B"])],
)  # fmt: skip
def test_a_size_below_its_minimum_is_an_error(knob, least, above, below):
    """A blocksize of 1 byte (a task per byte: minutes on a small file) or a memory limit smaller than a worker
    process: an error naming the minimum, before any work."""
    from pydantic import ValidationError

    for text in above:
        assert getattr(DaskParams(**{knob: text}), knob) == text
    for text in below:
        with pytest.raises(ValidationError, match=f"not a byte size of at least {least} "):
            DaskParams(**{knob: text})


@pytest.mark.parametrize(
    "address", ["tcp://10.0.0.5:8786", "tls://scheduler.example:8786", "tcp://[::1]:8786", " tcp://h:1/ "]
)
def test_a_scheduler_address_is_tcp_host_port(monkeypatch, address):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    assert dask_params_module.scheduler_address() == address.strip()
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", " ")
    assert dask_params_module.scheduler_address() is None


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "10.0.0.5:8786", "tcp://10.0.0.5", "tcp://:8786", "tcp://h:port", "tcp://h:70000", "tcp://h:0",
     "http://h:8787", "tcp://h:8786/x", "tcp://user@h:8786", "tcp://h:8786?x=1", "localhost:8786 tcp://h:1"],
)  # fmt: skip
def test_a_malformed_scheduler_address_is_one_line_before_any_work(monkeypatch, preprocess_params, address):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with pytest.raises(UserError) as bad:
        dask_params(preprocess_params.model_copy(update={"engine": "dask"}))
    assert str(bad.value) == (
        f"DASK_SCHEDULER_ADDRESS={address}: not a scheduler address tcp://host:port (e.g. tcp://10.0.0.5:8786)"
    )


def test_the_dask_knobs_are_checked_on_engine_dask_as_one_line(preprocess_params):
    """``preprocess.dask`` is the Dask engine's: checked when a stage runs on it, one line naming the knob; the
    defaults fill in what is left out."""
    base = preprocess_params.model_dump()
    params = PreprocessParams.model_validate({**base, "engine": "dask", "dask": {"blocksize": "lots"}})
    with pytest.raises(UserError) as bad:
        dask_params(params, "p.yaml")
    assert str(bad.value) == (
        "p.yaml: preprocess.dask.blocksize: not a byte size of at least 4kB (e.g. 512MiB, 2GB) (got 'lots')"
    )
    with pytest.raises(UserError, match=r"^params.yaml: preprocess.dask.n_workers: Input should be greater than"):
        dask_params(PreprocessParams.model_validate({**base, "engine": "dask", "dask": {"n_workers": 0}}))
    assert dask_params(PreprocessParams.model_validate({**base, "dask": {}})) == DaskParams()


@pytest.mark.parametrize("files", ["/abs/*.csv", "../up/*.csv", "s3://b/*.csv", ""])
def test_data_files_is_a_pattern_inside_the_folder(preprocess_params, files):
    from pydantic import ValidationError

    base = preprocess_params.model_dump()
    with pytest.raises((ValidationError, UserError), match=r"data\.files|at least 1 character"):
        params = PreprocessParams.model_validate({**base, "engine": "dask", "data": {**base["data"], "files": files}})
        dask_params(params)


# -- on a LocalCluster ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """The engine's own client context: a LocalCluster of 2 worker processes, 1 thread each, on 127.0.0.1."""
    from segmentation.engines.dask import engine as dask_engine

    saved = os.environ.pop(dask_engine.SCHEDULER_ENV, None)  # never a scheduler of the user's environment
    try:
        with dask_engine.dask_client(DaskParams(n_workers=2, threads_per_worker=1, memory_limit="1GiB")) as c:
            info = c.scheduler_info()
            assert info["address"].startswith("tcp://127.0.0.1:")
            assert len(info["workers"]) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
            assert listening_addresses() == {"127.0.0.1"}
            yield c
    finally:
        if saved is not None:
            os.environ[dask_engine.SCHEDULER_ENV] = saved


def listening_addresses() -> set[str]:
    """The addresses on which this process and its children (the LocalCluster's nannies and workers) listen."""
    import psutil

    me = psutil.Process()
    found = set()
    for proc in [me, *me.children(recursive=True)]:
        found |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    return found


def on_engine_dask(params: PreprocessParams, blocksize: str = SMALL_BLOCKS, **data) -> PreprocessParams:
    return params.model_copy(
        update={
            "engine": "dask",
            "dask": DaskParams(blocksize=blocksize),
            "data": params.data.model_copy(update=data),
        }
    )


def on_dask(client, params: PreprocessParams, tmp_path):
    """Run the engine; return its result, the features and the matrix as read back by the next stages."""
    from segmentation.engines.dask.engine import preprocess_on_dask

    result = preprocess_on_dask(
        client, params, [*input_columns(params), *PROFILE], PROFILE,
        tmp_path / "features.parquet", tmp_path / "matrix.parquet",
    )  # fmt: skip
    return result, read_csv(result.features_dir), read_csv(result.matrix_dir)


@pytest.mark.dask
@pytest.mark.parametrize("blocksize", [SMALL_BLOCKS, "64MiB"])
def test_dask_engine_gives_the_local_engine_s_outputs(client, raw_full, preprocess_params, tmp_path, blocksize):
    """Same rows in the same order, same features (exactly), same matrix up to rounding, same counts; the saved
    transformer is an ordinary scikit-learn one that maps the features onto the matrix."""
    local = preprocess(raw_full, preprocess_params, preprocess_params.data.path, profile_columns=PROFILE)
    result, features, matrix = on_dask(client, on_engine_dask(preprocess_params, blocksize), tmp_path)
    assert (result.partitions > 5) == (blocksize == SMALL_BLOCKS)
    assert result.metrics == local.metrics
    pd.testing.assert_frame_equal(features, local.features)
    assert list(matrix.columns) == list(local.matrix.columns)
    assert matrix["ID"].equals(local.matrix["ID"])
    np.testing.assert_allclose(matrix.iloc[:, 1:], local.matrix.iloc[:, 1:], rtol=0, atol=1e-9)
    again = result.transformer.transform(local.features[preprocess_params.features])
    np.testing.assert_allclose(again, matrix.iloc[:, 1:].to_numpy(), rtol=0, atol=1e-12)
    assert type(result.transformer) is type(local.transformer)


def blank_some_education(rows):
    """Education blank on a few rows spread over the partitions: imputed (or the rows dropped) like a number."""
    for number in (5, 120, 121, 260, 401):
        fields = rows[number].split("\t")
        fields[2] = ""  # Education
        rows[number] = "\t".join(fields)


ONEHOT = {"columns": ["Education", "Marital_Status"], "encoding": "onehot"}
SETTINGS = {  # each former gap of the Dask engine alone, then all of them together
    "row_id": ({}, {"id_column": None}),
    "median": ({"missing": "median"}, {}),
    "onehot": ({"categorical": ONEHOT}, {}),
    "all": ({"missing": "median", "categorical": ONEHOT, "pca_components": 4}, {"id_column": None}),
}


@pytest.mark.dask
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_row_ids_medians_and_one_hot_columns_on_dask_are_the_local_engine_s(
    client, preprocess_params, tmp_path, setting
):
    """On 11 partitions (blank Incomes, Education blank on rows of several partitions): the generated row_id
    numbered across the partitions, the medians and the most frequent category over all kept rows, the one-hot
    columns in the local encoder's order, as the local engine gives them: the same counts and features exactly, the
    matrix to 1e-9; the saved transformer has the local one's statistics and categories and maps rows with blanks
    (and unknown categories) as the local one does."""
    from segmentation.core.data import load_csv
    from segmentation.engines.dask.engine import _parts

    changes, data_changes = SETTINGS[setting]
    path = edited_sample(tmp_path, blank_some_education)
    base = preprocess_params.model_dump()
    params = PreprocessParams.model_validate(
        {**base, **changes, "data": {**base["data"], "path": path, **data_changes}}
    )
    raw = load_csv(params.data)
    local = preprocess(raw, params, path, profile_columns=PROFILE)
    result, features, matrix = on_dask(client, on_engine_dask(params, TINY_BLOCKS), tmp_path)
    assert result.partitions > 10
    assert result.metrics == local.metrics
    # as the next stages read them: the local engine's tables written as the stage writes them (text columns come
    # back as strings from Parquet)
    pd.testing.assert_frame_equal(features, as_written(local.features, tmp_path / "local_features.parquet"))
    assert list(matrix.columns) == list(local.matrix.columns)
    id_col = local.matrix.columns[0]
    assert matrix[id_col].equals(local.matrix[id_col])
    np.testing.assert_allclose(matrix.iloc[:, 1:], local.matrix.iloc[:, 1:], rtol=0, atol=1e-9)

    for ours, theirs in zip(_parts(result.transformer, params), _parts(local.transformer, params), strict=True):
        steps = getattr(ours, "named_steps", {})  # None or "passthrough": nothing fitted
        for name, fitted in (("impute", "statistics_"), ("onehot", "categories_")):
            if name in steps:
                assert _plain(getattr(steps[name], fitted)) == _plain(getattr(theirs.named_steps[name], fitted))
    assert list(result.transformer.get_feature_names_out()) == list(local.transformer.get_feature_names_out())
    used = [*params.features, *(params.categorical.columns if params.categorical.encoding == "onehot" else [])]
    rows = local.features[used].head(60).copy()  # blanks included (missing: median), and an unknown category
    if "Education" in used:
        rows.loc[rows.index[0], "Education"] = "Unheard-of"
    np.testing.assert_allclose(result.transformer.transform(rows), local.transformer.transform(rows), rtol=0, atol=1e-9)


@pytest.mark.dask
def test_too_many_categories_over_the_whole_input_is_the_local_error(client, preprocess_params, tmp_path):
    """A one-hot column with a few values in each partition but more than max_categories in all: the local engine's
    line (the distinct values counted over every row read)."""

    def rare_educations(rows):
        for number in range(0, len(rows), 40):
            fields = rows[number].split("\t")
            fields[2] = f"Rare{number}"  # Education: one new value every 40 rows, at most 2 per partition
            rows[number] = "\t".join(fields)

    params = PreprocessParams.model_validate(
        {**preprocess_params.model_dump(), "categorical": {**ONEHOT, "columns": ["Education"], "max_categories": 8}}
    )
    message = same_error(client, params, edited_sample(tmp_path, rare_educations), tmp_path)
    assert "categorical column Education has 16 distinct values (more than" in message


def as_written(frame: pd.DataFrame, path) -> pd.DataFrame:
    """``frame`` as a stage writes it (Parquet) and the next one reads it back."""
    from segmentation.files import write_parquet

    write_parquet(path, frame)
    return read_csv(path)


def _plain(fitted):
    """A fitted statistic (an array, or a list of arrays) as plain Python values, compared exactly."""
    return [a.tolist() for a in fitted] if isinstance(fitted, list) else fitted.tolist()


@pytest.mark.dask
def test_a_glob_of_csv_files_reads_as_their_concatenation(client, raw_full, preprocess_params, tmp_path):
    """The sample cut into three files (each with the header): `part-*.csv` gives the whole sample's outputs."""
    lines = (REPO / FIXTURE_DATA).read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    for number, (start, stop) in enumerate([(0, 150), (150, 151), (151, len(rows))]):
        (tmp_path / f"part-{number}.csv").write_text(header + "".join(rows[start:stop]), encoding="utf-8")
    local = preprocess(raw_full, preprocess_params, preprocess_params.data.path, profile_columns=PROFILE)
    result, features, matrix = on_dask(
        client, on_engine_dask(preprocess_params, path=str(tmp_path / "part-*.csv")), tmp_path
    )
    assert result.metrics == local.metrics
    pd.testing.assert_frame_equal(features, local.features)
    np.testing.assert_allclose(matrix.iloc[:, 1:], local.matrix.iloc[:, 1:], rtol=0, atol=1e-9)


def edited_sample(tmp_path, edit) -> str:
    """A copy of the sample with ``edit(lines)`` applied to its data lines; returns its path."""
    lines = (REPO / FIXTURE_DATA).read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    edit(rows)
    path = tmp_path / "sample.csv"
    path.write_text(header + "".join(rows), encoding="utf-8")
    return str(path)


def same_error(client, raw_params: PreprocessParams, path: str, tmp_path) -> str:
    """The one-line error of both engines on ``path``: the same text, naming the same line."""
    from segmentation.core.data import load_csv

    local_params = raw_params.model_copy(update={"data": raw_params.data.model_copy(update={"path": path})})
    with pytest.raises(UserError) as local:
        preprocess(load_csv(local_params.data), local_params, path, profile_columns=PROFILE)
    with pytest.raises(UserError) as remote:
        on_dask(client, on_engine_dask(raw_params, path=path), tmp_path)
    assert str(remote.value) == str(local.value)
    assert not list(tmp_path.glob(".*.tmp")), "a failed run leaves no partial output"
    return str(local.value)


@pytest.mark.dask
def test_a_bad_value_in_a_late_partition_names_its_line(client, preprocess_params, tmp_path):
    def bad_income(rows):
        fields = rows[300].split("\t")
        fields[4] = "58k"  # Income
        rows[300] = "\t".join(fields)

    message = same_error(client, preprocess_params, edited_sample(tmp_path, bad_income), tmp_path)
    assert "column Income must be numeric; e.g. '58k' on line 302" in message


@pytest.mark.dask
def test_an_id_repeated_across_partitions_names_both_lines(client, preprocess_params, tmp_path):
    def repeat_id(rows):
        first = rows[2].split("\t")[0]
        fields = rows[350].split("\t")
        rows[350] = "\t".join([first, *fields[1:]])

    message = same_error(client, preprocess_params, edited_sample(tmp_path, repeat_id), tmp_path)
    assert "has duplicates" in message and "on lines 4 and 352" in message


# -- train and evaluate on the cluster ------------------------------------------------------------------------------
FIXTURE_SECTIONS = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
# Below the sample's 400 kept rows: the search fits on a seeded sample, the final model is dask-ml's fit on all rows.
SEARCH_SAMPLE = 200


@pytest.mark.dask
def test_train_and_evaluate_on_dask_give_the_local_engine_s_results(client, preprocess_params, tmp_path):
    """The sample in ~14 partitions, Education profiled as a category: train searches k on the local engine's
    seeded sample and fits the final KMeans with dask-ml from its centres, an ordinary scikit-learn KMeans (predict,
    pickling) with the local model's centres, inertia and labels; evaluate on that model gives the local engine's
    sizes exactly, metrics, profile and contrasts to 1e-9, the same segments file byte for byte, the same criteria
    sample."""
    import io

    import joblib
    from sklearn.cluster import KMeans

    from segmentation.config import CategoricalParams, EvaluateParams, TrainParams
    from segmentation.core import quality as ev
    from segmentation.core import report
    from segmentation.core import search as tr
    from segmentation.core.data import load_csv
    from segmentation.engines.dask import evaluate as dask_ev
    from segmentation.engines.dask import tables as dask_tables
    from segmentation.engines.dask import train as dask_tr
    from segmentation.files import write_csv

    params = preprocess_params.model_copy(
        update={"categorical": CategoricalParams(columns=["Education"], encoding="drop")}
    )
    local = preprocess(load_csv(params.data), params, params.data.path, profile_columns=PROFILE)
    train_params = TrainParams.model_validate({**FIXTURE_SECTIONS["train"], "search_sample_size": SEARCH_SAMPLE})
    eval_params = EvaluateParams.model_validate(
        {**FIXTURE_SECTIONS["evaluate"], "silhouette_sample_size": 150, "plot_sample_size": 100,
         "criteria_sample_size": 120}
    )  # fmt: skip
    elbow, model = tr.train(local.matrix, "ID", train_params)
    X = local.matrix.drop(columns="ID").to_numpy()

    result = preprocess_on_dask_(client, on_engine_dask(params), tmp_path)
    matrix = dask_tables.load_matrix(client, result.matrix_dir)
    features = dask_tables.load(client, result.features_dir, "preprocess")
    assert len(matrix.blocks) > 5
    elbow_d, model_d, sizes = dask_tr.train_on_dask(client, matrix, train_params, "matrix")
    assert elbow_d.k_best == elbow.k_best and elbow_d.search_rows == SEARCH_SAMPLE
    assert elbow_d.scores == pytest.approx(elbow.scores, rel=1e-9)  # the matrices agree to ~1e-12
    assert type(model_d) is KMeans and not hasattr(model_d, "labels_")
    np.testing.assert_allclose(model_d.cluster_centers_, model.cluster_centers_, rtol=0, atol=1e-9)
    assert model_d.inertia_ == pytest.approx(model.inertia_, rel=1e-9) and model_d.n_iter_ == model.n_iter_
    assert (model_d.predict(X) == model.labels_).all()
    assert sizes.tolist() == np.bincount(model.labels_).tolist()
    pickled = io.BytesIO()
    joblib.dump(model_d, pickled)
    assert (joblib.load(io.BytesIO(pickled.getvalue())).predict(X) == model.labels_).all()

    categorical = ["Education"]
    numeric = [c for c in local.features.columns if c not in ("ID", *categorical)]
    expected = ev.evaluate(local.matrix, local.features, model, "ID", eval_params, categorical)
    done = dask_ev.evaluate_on_dask(client, matrix, features, model, eval_params, categorical, numeric)
    got = done.result
    assert {k: v for k, v in got.metrics.items() if k.startswith("size_")} == {
        k: v for k, v in expected.metrics.items() if k.startswith("size_")
    }
    assert got.metrics.keys() == expected.metrics.keys()
    for key, value in expected.metrics.items():
        assert got.metrics[key] == pytest.approx(value, rel=1e-9, abs=0), key
    assert any(c.startswith("Education=") for c in got.profile.columns)
    pd.testing.assert_frame_equal(got.profile, expected.profile, check_exact=False, rtol=1e-9, atol=0)
    labels = expected.segments["cluster"].to_numpy()
    z = report.contrasts(local.features[numeric], labels)
    pd.testing.assert_frame_equal(done.contrasts, z, check_exact=False, rtol=1e-9, atol=1e-12)
    assert done.kinds == {c: report.column_kind(c, local.features[c]) for c in numeric}
    assert done.overall == pytest.approx({c: float(local.features[c].mean()) for c in numeric}, rel=1e-9)
    streamed = dask_tables.stream_csv(client, done.segments, tmp_path / "segments.csv")
    write_csv(tmp_path / "local.csv", expected.segments)
    assert streamed.read_bytes() == (tmp_path / "local.csv").read_bytes()
    pd.testing.assert_frame_equal(
        ev.criteria_of(done.sample, [2, 3, 4], 42),
        ev.criteria_per_k(X, [2, 3, 4], eval_params.criteria_sample_size, 42),
    )


def preprocess_on_dask_(client, params: PreprocessParams, tmp_path):
    from segmentation.engines.dask.engine import preprocess_on_dask

    return preprocess_on_dask(
        client, params, [*input_columns(params), *PROFILE], PROFILE, tmp_path / "f.parquet", tmp_path / "m.parquet"
    )


@pytest.mark.dask
def test_scores_from_group_bys_are_scikit_learn_s():
    """Calinski-Harabasz and Davies-Bouldin from per-cluster sums (what evaluate on Dask adds up over the parts)
    equal scikit-learn's on the rows, an empty cluster left out as scikit-learn's labels leave it."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from segmentation.engines.dask.evaluate import scores_of_groups
    from segmentation.engines.dask.parts import part_groups, part_spread

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0 + c / 4, size=(150, 3)) for c in (0, 4, 9)])
    labels = np.repeat([0, 1, 3], 150)  # cluster 2 has no rows
    counts, sums = part_groups(X, labels, 4)
    spread = part_spread(X, labels, sums / np.maximum(counts, 1)[:, None])
    ch, db = scores_of_groups(counts, sums, spread)
    assert ch == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-9)
    assert db == pytest.approx(davies_bouldin_score(X, labels), rel=1e-9)


def test_train_on_dask_refuses_what_it_cannot_do(tmp_path):
    """Other algorithms, and a search on every row, are one params line before any cluster starts."""
    from pipeline_helpers import run_stage_cli, the_error

    for change, words in [
        ({"algorithm": "agglomerative"}, "train.algorithm: agglomerative runs on the local engine only"),
        ({"search_sample_size": None}, "train.search_sample_size: null"),
    ]:
        sections = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
        sections["preprocess"]["engine"] = "dask"
        sections["train"] = {**sections["train"], "search_sample_size": SEARCH_SAMPLE, **change}
        proc = run_stage_cli(
            tmp_path, "train", ["--matrix", "m.parquet", "--model", "out/m.joblib", "--elbow-plot", "out/e.png",
                                "--elbow-scores", "out/e.csv", "--metrics", "out/t.json", "--dagshub-dir", "out/dh"],
            **sections,
        )  # fmt: skip
        line = the_error(proc, tmp_path)
        assert line.startswith("error: params.yaml: ") and words in line, line


@pytest.mark.dask
def test_a_task_whose_workers_keep_dying_is_one_line():
    """A task that kills its worker process each time (the nanny restarts it, Dask retries the task until its
    allowed failures are spent): one UserError line naming the task, not distributed's KilledWorker."""
    from segmentation.engines.dask import engine as dask_engine

    saved = os.environ.pop(dask_engine.SCHEDULER_ENV, None)
    try:
        with (
            pytest.raises(UserError, match=r"^Dask: the workers running task '_exit-.*' died \d+ times"),
            dask_engine.dask_client(DaskParams(n_workers=1, memory_limit="1GiB")) as one,
        ):
            one.submit(os._exit, 1).result()
    finally:
        if saved is not None:
            os.environ[dask_engine.SCHEDULER_ENV] = saved


@pytest.mark.dask
def test_a_local_worker_that_never_starts_is_one_line_within_its_deadline(monkeypatch, tmp_path):
    """A LocalCluster worker stuck while it starts (here: in a preload that sleeps): one line once
    ``START_TIMEOUT_S`` has passed, not a wait for ever."""
    import time

    import dask

    from segmentation.engines.dask import cluster

    monkeypatch.delenv(cluster.SCHEDULER_ENV, raising=False)
    monkeypatch.setattr(cluster, "START_TIMEOUT_S", 5)
    (tmp_path / "stuck.py").write_text("import time\n\ntime.sleep(600)\n")
    started = time.monotonic()
    with (
        dask.config.set({"distributed.worker.preload": [str(tmp_path / "stuck.py")]}),
        pytest.raises(UserError, match=r"^Dask: the LocalCluster's 1 worker\(s\) did not start within 5 s \("),
        cluster.dask_client(DaskParams(n_workers=1, memory_limit="1GiB")),
    ):
        pass
    assert 5 <= time.monotonic() - started < 5 + 30  # the deadline, then a bounded close


# -- the stage's command line ---------------------------------------------------------------------------------------
STAGE_OUTPUTS = ["--features", "out/f.parquet", "--matrix", "out/m.parquet", "--transformer", "out/t.joblib",
                 "--metrics", "out/p.json", "--dagshub-dir", "out/dh"]  # fmt: skip


def run_stage(tmp_path, data_path: str, scheduler: str | None = None, **dask):
    """`python -m segmentation.stages.preprocess` with engine dask on ``data_path``, in ``tmp_path``."""
    import subprocess
    import sys

    params = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
    params["preprocess"]["data"]["path"] = data_path
    params["preprocess"]["engine"] = "dask"
    params["preprocess"]["dask"] = {"blocksize": SMALL_BLOCKS, "n_workers": 2, "memory_limit": "1GiB", **dask}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = project_env(tmp_path)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    if scheduler:
        env["DASK_SCHEDULER_ADDRESS"] = scheduler
    return subprocess.run(
        [sys.executable, "-m", "segmentation.stages.preprocess", *STAGE_OUTPUTS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.dask
def test_the_stage_on_dask_stops_on_bad_data_with_one_line(tmp_path):
    """The stage starts its LocalCluster, a worker finds the bad value: one `error:` line (no worker log, no
    traceback), exit 2, nothing written, the cluster gone with the stage."""
    from pipeline_helpers import the_error

    def bad_income(rows):
        fields = rows[300].split("\t")
        fields[4] = "58k"
        rows[300] = "\t".join(fields)

    path = edited_sample(tmp_path, bad_income)
    line = the_error(run_stage(tmp_path, "sample.csv"), tmp_path)
    assert line == f"error: sample.csv: column Income must be numeric; e.g. '58k' on line 302{CATEGORIES_HINT}", path


@pytest.mark.dask
def test_an_unreachable_scheduler_is_one_line(tmp_path):
    """DASK_SCHEDULER_ADDRESS where nothing listens (the discard port on loopback): one line within
    connect_timeout."""
    from pipeline_helpers import the_error

    (tmp_path / "sample.csv").write_bytes((REPO / FIXTURE_DATA).read_bytes())
    proc = run_stage(tmp_path, "sample.csv", scheduler="tcp://127.0.0.1:9", connect_timeout=2)
    line = the_error(proc, tmp_path)
    assert line.startswith(
        "error: DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:9: cannot reach the Dask scheduler within 2 s"
    )


@pytest.mark.dask
def test_a_scheduler_that_never_answers_is_one_line_within_connect_timeout(tmp_path):
    """A port that accepts the connection and never answers (distributed's Client alone waits for its handshake for
    ever): one line naming the address and connect_timeout, within that deadline plus the stage's start-up."""
    import time

    from pipeline_helpers import the_error
    from servers import hanging_server

    (tmp_path / "sample.csv").write_bytes((REPO / FIXTURE_DATA).read_bytes())
    with hanging_server() as url:
        address = url.replace("http://", "tcp://")
        started = time.monotonic()
        proc = run_stage(tmp_path, "sample.csv", scheduler=address, connect_timeout=3)
        elapsed = time.monotonic() - started
    line = the_error(proc, tmp_path)
    assert line.startswith(f"error: DASK_SCHEDULER_ADDRESS={address}: cannot reach the Dask scheduler within 3 s")
    assert elapsed < 3 + 60, elapsed  # the stage's imports on a loaded machine: seconds; before the deadline: hung


@pytest.mark.dask
def test_a_malformed_scheduler_address_stops_the_stage_with_one_line(tmp_path):
    from pipeline_helpers import the_error

    (tmp_path / "sample.csv").write_bytes((REPO / FIXTURE_DATA).read_bytes())
    line = the_error(run_stage(tmp_path, "sample.csv", scheduler="localhost"), tmp_path)
    assert line == (
        "error: DASK_SCHEDULER_ADDRESS=localhost: not a scheduler address tcp://host:port (e.g. tcp://10.0.0.5:8786)"
    )


# -- a cluster started separately: `dask scheduler` and two `dask worker` processes ----------------------------------
@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    """A `dask scheduler` and two `dask worker` processes (1 thread, 1 GiB each), every server on 127.0.0.1, each in
    its own process group, started in their own folder (not the stage's) and stopped at the end of the module."""
    from servers import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.address


@pytest.mark.dask
def test_the_stage_on_a_separately_started_scheduler_gives_the_local_outputs(
    scheduler_address, raw_full, preprocess_params, tmp_path
):
    """DASK_SCHEDULER_ADDRESS names the scheduler: the stage uses its two workers (no cluster of its own) and writes
    the local engine's outputs. The workers run in another folder: the data path is absolute, as it must be for a
    real cluster."""
    local = preprocess(raw_full, preprocess_params, preprocess_params.data.path, profile_columns=PROFILE)
    proc = run_stage(tmp_path, str(REPO / FIXTURE_DATA), scheduler=scheduler_address)
    assert proc.returncode == 0, proc.stderr
    assert "partition(s) on Dask" in proc.stdout
    pd.testing.assert_frame_equal(read_csv(tmp_path / "out" / "f.parquet"), local.features)
    matrix = read_csv(tmp_path / "out" / "m.parquet")
    np.testing.assert_allclose(matrix.iloc[:, 1:], local.matrix.iloc[:, 1:], rtol=0, atol=1e-9)
    assert json.loads((tmp_path / "out" / "p.json").read_text()) == local.metrics
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []  # no leftovers

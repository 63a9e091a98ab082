from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline_helpers import stage_names
from segmentation.errors import UserError
from segmentation.files import StageOutputs
from segmentation.tracking.lineage import Lineage, file_md5, pipeline_run_id, upstream_lineage
from segmentation.tracking.logger import DualLogger, plain
from segmentation.tracking.settings import TrackingSettings, redact_uri
from segmentation.tracking.store import LOCK_WAIT_S, describe_failure, local_store_lock

RAW_MD5 = "0123456789abcdef0123456789abcdef"
# What DVC records once preprocess and train have run: their deps (the raw data among them), params and outs.
LOCK = f"""\
schema: '2.0'
stages:
  preprocess:
    cmd: python -m segmentation.stages.preprocess
    deps:
    - path: data/raw/shop.csv
      hash: md5
      md5: {RAW_MD5}
    params:
      params.yaml:
        preprocess:
          data:
            path: data/raw/shop.csv
            separator: ','
          recipe: null
          features: [spend, visits]
    outs:
    - path: data/processed/matrix.csv
      md5: aaa
  train:
    cmd: python -m segmentation.stages.train
    deps:
    - path: data/processed/matrix.csv
      md5: aaa
    params:
      params.yaml:
        train:
          k_min: 2
          k_max: 7
          n_init: 3
          random_state: 1
          n_threads: 1
    outs:
    - path: models/clusterer.joblib
      md5: bbb
  evaluate:
    cmd: python -m segmentation.stages.evaluate
    deps:
    - path: data/processed/matrix.csv
      md5: aaa
    - path: models/clusterer.joblib
      md5: bbb
"""


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project directory as the working directory, with a dvc.lock as DVC leaves it mid-pipeline."""
    (tmp_path / "dvc.lock").write_text(LOCK)
    (tmp_path / "pyproject.toml").write_text('[tool.segmentation]\nexperiment_name = "demo-exp"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENTATION_PIPELINE_RUN_ID", "run-group-1")
    for var in ("DVC_EXP_NAME", "SOURCE_DATE_EPOCH"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def mlflow_runs(project: Path, pipelines: bool = False):
    """The stages' runs (with ``pipelines``: the pipeline runs, their parents), newest first."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo-exp").experiment_id])
    return client, [r for r in runs if ("stage" in r.data.tags) != pipelines]


def read_metrics_csv(path: Path) -> dict[str, str]:
    with path.open() as fh:
        return {row["Name"]: row["Value"] for row in csv.DictReader(fh)}


def test_settings_precedence(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.segmentation]\nexperiment_name = "from-project"\n')
    local = TrackingSettings.resolve(tmp_path, environ={})
    assert local.tracking_uri == local.local_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert local.experiment_name == "from-project"
    assert local.artifact_location == (tmp_path / "mlruns").as_uri()
    assert not local.is_remote and local.source == "local default"

    pyproject.write_text('[tool.segmentation]\ndagshub_owner = "acme"\ndagshub_repo = "segs"\n')
    dagshub = TrackingSettings.resolve(tmp_path, environ={})
    assert dagshub.tracking_uri == "https://dagshub.com/acme/segs.mlflow"
    assert dagshub.local_uri == local.local_uri and dagshub.is_remote
    assert TrackingSettings.resolve(tmp_path, environ={"DAGSHUB_CLIENT_HOST": "http://127.0.0.1:9/"}).tracking_uri == (
        "http://127.0.0.1:9/acme/segs.mlflow"
    )

    pyproject.write_text(
        '[tool.segmentation]\ndagshub_owner = "acme"\ndagshub_repo = "segs"\ntracking_uri = "http://h:1"\n'
    )
    assert TrackingSettings.resolve(tmp_path, environ={}).tracking_uri == "http://h:1"

    env = TrackingSettings.resolve(
        tmp_path, environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_EXPERIMENT_NAME": "from-env"}
    )
    assert (env.tracking_uri, env.experiment_name) == ("http://127.0.0.1:9", "from-env")
    assert env.source.startswith("environment")
    own = TrackingSettings.resolve(tmp_path, environ={"MLFLOW_TRACKING_URI": "sqlite:///elsewhere.db"})
    assert own.local_uri == own.tracking_uri == "sqlite:///elsewhere.db" and not own.is_remote


@pytest.mark.parametrize("where", ["env", "pyproject"])
def test_a_remote_tracker_without_the_remote_part_is_one_line_before_the_work(tmp_path, monkeypatch, where):
    """A project generated without remote tracking (``remote_tracking`` false) says how to add it."""
    monkeypatch.setitem(sys.modules, "segmentation.tracking.remote", None)  # as if absent
    if where == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://u:s3cr3t@tracker.example:5000")
    else:
        (tmp_path / "pyproject.toml").write_text('[tool.segmentation]\ndagshub_owner = "acme"\ndagshub_repo = "s"\n')
    with pytest.raises(UserError) as err:
        DualLogger("evaluate", root=tmp_path)
    message = str(err.value)
    assert "generated without remote tracking" in message and "s3cr3t" not in message and "\n" not in message
    assert "`copier update --trust --defaults --data remote_tracking=true`" in message
    undo = "unset MLFLOW_TRACKING_URI" if where == "env" else "dagshub_owner/dagshub_repo from pyproject.toml"
    assert undo in message
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert DualLogger("evaluate", root=tmp_path / "elsewhere").remote is None  # no tracker: no need of it


def test_failures_are_described_without_credentials():
    assert describe_failure(Exception("API request to x failed with 401 Unauthorized")).startswith(
        "credentials refused"
    )
    assert describe_failure(ConnectionError("[Errno 111] Connection refused")) == "unreachable (connection refused)"
    assert "s3cr3t" not in describe_failure(Exception("bad gateway at https://u:s3cr3t@h/x"))


def test_redact_uri():
    assert redact_uri("https://user:tok3n@dagshub.com/o/r.mlflow") == "https://dagshub.com/o/r.mlflow"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_plain_unwraps_numpy_scalars():
    assert type(plain(np.float64(0.5))) is float
    assert type(plain(np.int64(3))) is int
    assert plain("x") == "x"


def test_both_sinks_receive_params_and_metrics(project):
    (project / "plot.png").write_bytes(b"\x89PNG fake")
    with DualLogger("train") as log:
        log.log_params({"train.k_max": 10, "train.metric": "distortion", "train.scale": True})
        log.log_metrics({"k_best": np.int64(5), "score": np.float64(0.25)})
        log.log_artifact("plot.png")

    client, (run,) = mlflow_runs(project)
    assert run.info.run_name == "train" and run.info.status == "FINISHED"
    own = {"train.k_max": "10", "train.metric": "distortion", "train.scale": "True"}
    assert {k: v for k, v in run.data.params.items() if k.startswith("train.")} == own
    assert run.data.metrics == {"k_best": 5.0, "score": 0.25}
    assert run.data.tags["stage"] == "train"
    assert run.data.tags["pipeline_run_id"] == "run-group-1"
    # The raw data behind the stage's input, as dvc.lock records preprocess's dependency on it.
    assert run.data.tags["raw_data_md5"] == RAW_MD5 and run.data.tags["raw_data_path"] == "data/raw/shop.csv"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["plot.png"]

    dagshub = project / "metrics" / "dagshub" / "train"
    assert yaml.safe_load((dagshub / "params.yml").read_text()) == {
        "train.k_max": 10,
        "train.metric": "distortion",
        "train.scale": True,
    }
    assert read_metrics_csv(dagshub / "metrics.csv") == {"k_best": "5", "score": "0.25"}  # not 'np.float64(0.25)'


def test_stages_do_not_wipe_each_other(project):
    for stage in stage_names():
        with DualLogger(stage) as log:
            log.log_params({f"{stage}.p": 1})
            log.log_metrics({f"{stage}_m": 1.5})
    for stage in stage_names():
        files = project / "metrics" / "dagshub" / stage
        assert read_metrics_csv(files / "metrics.csv") == {f"{stage}_m": "1.5"}
        assert yaml.safe_load((files / "params.yml").read_text()) == {f"{stage}.p": 1}
    _, runs = mlflow_runs(project)
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(stage_names())
    assert {r.data.tags["pipeline_run_id"] for r in runs} == {"run-group-1"}


def test_a_failed_stage_logs_nothing_and_keeps_earlier_files(project):
    with DualLogger("train") as log:
        log.log_metrics({"k_best": 4})
    before = (project / "metrics" / "dagshub" / "train" / "metrics.csv").read_text()
    with pytest.raises(RuntimeError), DualLogger("train") as log:
        log.log_metrics({"k_best": 9})
        raise RuntimeError("stage failed")
    assert (project / "metrics" / "dagshub" / "train" / "metrics.csv").read_text() == before
    assert len(mlflow_runs(project)[1]) == 1


def test_pipeline_run_id_env_override_and_default():
    assert pipeline_run_id({"SEGMENTATION_PIPELINE_RUN_ID": "abc"}) == "abc"
    # Outside DVC: stable within one process.
    assert pipeline_run_id({}) == pipeline_run_id({})


def test_runs_carry_the_params_that_produced_their_inputs(project):
    with DualLogger("evaluate") as log:
        log.log_params({"k_best": 4, "evaluate.random_state": 3})
    _, (run,) = mlflow_runs(project)
    params = run.data.params
    assert params["k_best"] == "4" and params["evaluate.random_state"] == "3"
    # Upstream stages' params from dvc.lock, with their section prefixes; sections filled in as the stage saw them.
    assert params["train.k_max"] == "7" and params["train.metric"] == "distortion"
    assert params["preprocess.features"] == "spend,visits" and params["preprocess.pca_components"] == "None"
    assert run.data.tags["raw_data_md5"] == RAW_MD5
    # The DagsHub files hold the stage's own params only: what DVC knows as this stage's params.
    assert yaml.safe_load((project / "metrics" / "dagshub" / "evaluate" / "params.yml").read_text()) == {
        "k_best": 4,
        "evaluate.random_state": 3,
    }


def test_lineage_without_a_lock_and_for_the_first_stage(project):
    (project / "dvc.lock").unlink()
    assert upstream_lineage("train") == Lineage()
    (project / "dvc.lock").write_text(LOCK)
    # The first stage has no upstream: it tags the data it reads itself (log_data).
    assert upstream_lineage("preprocess") == Lineage()
    assert upstream_lineage("train").params["preprocess.recipe"] is None


def test_the_stage_that_reads_the_data_tags_the_file_it_read(project):
    with DualLogger("preprocess") as log:
        log.log_data("data/raw/other.csv", "f" * 32)
    _, (run,) = mlflow_runs(project)
    assert run.data.tags["raw_data_md5"] == "f" * 32 and run.data.tags["raw_data_path"] == "data/raw/other.csv"


def test_run_duration_is_the_stage_process_and_exp_name_is_tagged(project, monkeypatch):
    import psutil

    monkeypatch.setenv("DVC_EXP_NAME", "kmax8")
    with DualLogger("train") as log:
        log.log_metrics({"k_best": 3})
    _, (run,) = mlflow_runs(project)
    assert run.info.start_time == int(psutil.Process().create_time() * 1000)
    assert run.info.end_time > run.info.start_time
    assert run.data.tags["dvc_exp_name"] == "kmax8"


def test_dagshub_metrics_file_keeps_its_times_while_values_are_unchanged(project, monkeypatch):
    metrics = project / "metrics" / "dagshub" / "train" / "metrics.csv"
    with DualLogger("train") as log:
        log.log_metrics({"k_best": 5, "score": 0.25})
    first = metrics.read_bytes()
    with DualLogger("train") as log:
        log.log_metrics({"k_best": 5, "score": 0.25})
    assert metrics.read_bytes() == first  # same values: the file is kept byte for byte
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with DualLogger("train") as log:
        log.log_metrics({"k_best": 6, "score": 0.25})
    with metrics.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["Name"], r["Value"], r["Timestamp"]) for r in rows] == [
        ("k_best", "6", "1700000000000"),
        ("score", "0.25", "1700000000000"),
    ]


def test_bad_source_date_epoch_is_a_user_error_before_anything_is_written(project, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UserError, match=r"SOURCE_DATE_EPOCH='yesterday': expected whole seconds"):
        DualLogger("train")
    assert not (project / "metrics").exists()


def test_lineage_on_a_first_run_comes_from_dvc_yaml(project):
    """A first `dvc repro`: the lock holds only preprocess when train runs; dvc.yaml says train reads its output."""
    lock = yaml.safe_load(LOCK)
    lock["stages"] = {"preprocess": lock["stages"]["preprocess"]}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    (project / "dvc.yaml").write_text(
        "stages:\n"
        "  preprocess:\n    cmd: x\n    deps: [data/raw/shop.csv]\n    outs:\n    - data/processed/matrix.csv:\n"
        "        persist: true\n"
        "  train:\n    cmd: y\n    deps: [data/processed/matrix.csv]\n    outs: [models/clusterer.joblib]\n"
    )
    lineage = upstream_lineage("train")
    assert lineage.data_md5 == RAW_MD5 and lineage.params["preprocess.features"] == "spend,visits"


def test_a_pipeline_run_is_the_parent_of_its_stages_runs(project, monkeypatch):
    (project / "matrix.csv").write_text("id,x\n1,0.5\n")
    for stage in ("train", "evaluate"):
        with DualLogger(stage) as log:
            log.log_params({f"{stage}.p": 1})
            log.log_metrics({f"{stage}_m": 1.5})
            log.log_input("matrix.csv")
    client, (parent,) = mlflow_runs(project, pipelines=True)
    _, children = mlflow_runs(project)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.run_name == "pipeline" and parent.info.status == "FINISHED"  # outside git, outside DVC
    # Every stage's params (upstream ones from dvc.lock among them) and metrics on the parent.
    assert {"train.p", "evaluate.p", "train.k_max", "preprocess.features"} <= set(parent.data.params)
    assert parent.data.metrics == {"train_m": 1.5, "evaluate_m": 1.5}
    # Each run read the table: a dataset with its md5; the pipeline run lists it once.
    for run in [*children, parent]:
        (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
        assert (dataset.name, dataset.digest) == ("matrix.csv", file_md5(project / "matrix.csv"))

    # The next pipeline run, in an experiment, runs evaluate only: train is linked to the run that made its output.
    monkeypatch.setenv("SEGMENTATION_PIPELINE_RUN_ID", "run-group-2")
    monkeypatch.setenv("DVC_EXP_NAME", "kmax9")
    (project / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: y\n    deps: [data/processed/matrix.csv]\n    outs: [models/clusterer.joblib]\n"
        "  evaluate:\n    cmd: z\n    deps: [models/clusterer.joblib]\n"
    )
    (project / "models").mkdir()
    (project / "models" / "clusterer.joblib").write_bytes(b"model")
    with StageOutputs() as outputs:  # train as DVC ran it: its output's md5 is tagged
        log = DualLogger("train")
        outputs.write_text("models/clusterer.joblib", "model")
        log.log_metrics({"k_best": 4})
        log.stage_dagshub_files(outputs)
        log.log_run(outputs)
    lock = yaml.safe_load(LOCK)
    lock["stages"]["train"]["outs"][0]["md5"] = file_md5(project / "models" / "clusterer.joblib")
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    monkeypatch.setenv("SEGMENTATION_PIPELINE_RUN_ID", "run-group-3")
    with DualLogger("evaluate") as log:
        log.log_metrics({"silhouette": 0.4})
    client, pipelines = mlflow_runs(project, pipelines=True)
    latest = next(r for r in pipelines if r.data.tags["pipeline_run_id"] == "run-group-3")
    assert latest.info.run_name == "kmax9"
    made_it = next(r for r in pipelines if r.data.tags["pipeline_run_id"] == "run-group-2")
    (train_run,) = client.search_runs(
        [latest.info.experiment_id], f"tags.`mlflow.parentRunId` = '{made_it.info.run_id}'"
    )
    assert latest.data.tags["skipped.train"] == train_run.info.run_id
    assert latest.data.metrics == {"silhouette": 0.4, "k_best": 4}  # the key metrics, the skipped stage's too


@pytest.mark.parametrize("uri", ["nonsense://x", "s3://bucket/runs"])
def test_an_unusable_tracking_uri_is_one_line_naming_it(tmp_path, uri):
    with pytest.raises(UserError, match=rf"^MLFLOW_TRACKING_URI='{uri}': not a tracking URI MLflow can use; give"):
        TrackingSettings.resolve(tmp_path, environ={"MLFLOW_TRACKING_URI": uri})
    for usable in ("http://127.0.0.1:5000", "sqlite:///x.db", "postgresql+psycopg2://u@h/db", "./mlruns"):
        assert TrackingSettings.resolve(tmp_path, environ={"MLFLOW_TRACKING_URI": usable}).tracking_uri == usable


def test_the_store_lock_gives_up_after_its_deadline_in_one_line(tmp_path):
    """Another stage holding the local store's lock: the wait ends at its deadline (LOCK_WAIT_S in stages; the stage
    then keeps its run in mlruns-pending/ with one warning line), and a released lock is taken at once."""
    import fcntl
    import time

    assert LOCK_WAIT_S == 120
    with open(tmp_path / ".mlflow.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file: as another process holds it
        start = time.monotonic()
        locked = r"^the store was locked by another stage for over 1 s$"
        with pytest.raises(TimeoutError, match=locked), local_store_lock(tmp_path, wait_s=1):
            pass
        assert 1 <= time.monotonic() - start < 5
    start = time.monotonic()
    with local_store_lock(tmp_path, wait_s=1):
        assert time.monotonic() - start < 0.5


def test_a_git_that_hangs_is_given_up_in_one_line(tmp_path, monkeypatch, capsys):
    """The lineage asks git for the commit; a git that does not answer (a hung credential helper, a network drive) is
    left after its deadline with one warning line, and the run is recorded without a commit."""
    import time

    from segmentation.tracking import lineage

    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 30\n")  # exec: the timeout's kill reaches it
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(lineage, "GIT_TIMEOUT_S", 1)
    start = time.monotonic()
    assert lineage.git_commit(tmp_path) is None
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert err == "warning: `git rev-parse` gave no answer in 1 s; went on without it\n"
    assert lineage.git("--literal-pathspecs", "ls-files", cwd=tmp_path) == b""  # named by its command, not an option
    assert capsys.readouterr().err == "warning: `git ls-files` gave no answer in 1 s; went on without it\n"

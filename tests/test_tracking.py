from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from segmentation.tracking import (
    DualLogger,
    TrackingSettings,
    apply_dagshub_credentials,
    bound_http_requests,
    describe_failure,
    pipeline_run_id,
    plain,
    redact_uri,
)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project directory as the working directory, with a raw.dvc to hash."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.dvc").write_text("outs:\n- md5: 3b624fc2bdbe29fa5fb01bdd577f78cd\n  path: raw/x.csv\n")
    (tmp_path / "pyproject.toml").write_text('[tool.segmentation]\nexperiment_name = "demo-exp"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENTATION_PIPELINE_RUN_ID", "run-group-1")
    return tmp_path


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


def test_dagshub_token_becomes_mlflow_credentials_only_in_the_environment(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.segmentation]\ndagshub_owner = "acme"\ndagshub_repo = "s"\n')
    env = {"DAGSHUB_USER_TOKEN": "t0ken"}
    apply_dagshub_credentials(tmp_path, env)
    assert env == {
        "DAGSHUB_USER_TOKEN": "t0ken",
        "MLFLOW_TRACKING_USERNAME": "acme",
        "MLFLOW_TRACKING_PASSWORD": "t0ken",
    }
    explicit = {"DAGSHUB_USER_TOKEN": "t0ken", "MLFLOW_TRACKING_PASSWORD": "other"}
    apply_dagshub_credentials(tmp_path, explicit)
    assert explicit["MLFLOW_TRACKING_PASSWORD"] == "other"  # explicit MLflow credentials win


def test_http_bounds_respect_user_values():
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    bound_http_requests(env)
    assert env == {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }


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

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo-exp")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "train" and run.info.status == "FINISHED"
    assert run.data.params == {"train.k_max": "10", "train.metric": "distortion", "train.scale": "True"}
    assert run.data.metrics == {"k_best": 5.0, "score": 0.25}
    assert run.data.tags["stage"] == "train"
    assert run.data.tags["pipeline_run_id"] == "run-group-1"
    assert run.data.tags["raw_data_md5"] == "3b624fc2bdbe29fa5fb01bdd577f78cd"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["plot.png"]

    dagshub = project / "metrics" / "dagshub" / "train"
    assert yaml.safe_load((dagshub / "params.yml").read_text()) == {
        "train.k_max": 10,
        "train.metric": "distortion",
        "train.scale": True,
    }
    assert read_metrics_csv(dagshub / "metrics.csv") == {"k_best": "5", "score": "0.25"}  # not 'np.float64(0.25)'


def test_stages_do_not_wipe_each_other(project):
    for stage in ("preprocess", "train", "evaluate"):
        with DualLogger(stage) as log:
            log.log_params({f"{stage}.p": 1})
            log.log_metrics({f"{stage}_m": 1.5})
    for stage in ("preprocess", "train", "evaluate"):
        files = project / "metrics" / "dagshub" / stage
        assert read_metrics_csv(files / "metrics.csv") == {f"{stage}_m": "1.5"}
        assert yaml.safe_load((files / "params.yml").read_text()) == {f"{stage}.p": 1}
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo-exp").experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == ["evaluate", "preprocess", "train"]
    assert {r.data.tags["pipeline_run_id"] for r in runs} == {"run-group-1"}


def test_a_failed_stage_logs_nothing_and_keeps_earlier_files(project):
    with DualLogger("train") as log:
        log.log_metrics({"k_best": 4})
    before = (project / "metrics" / "dagshub" / "train" / "metrics.csv").read_text()
    with pytest.raises(RuntimeError), DualLogger("train") as log:
        log.log_metrics({"k_best": 9})
        raise RuntimeError("stage failed")
    assert (project / "metrics" / "dagshub" / "train" / "metrics.csv").read_text() == before
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("demo-exp").experiment_id])) == 1


def test_pipeline_run_id_env_override_and_default():
    assert pipeline_run_id({"SEGMENTATION_PIPELINE_RUN_ID": "abc"}) == "abc"
    # Outside DVC: stable within one process.
    assert pipeline_run_id({}) == pipeline_run_id({})

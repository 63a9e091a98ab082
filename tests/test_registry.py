"""The registered, self-contained model: train registers its segmenter under the project's name; the alias
`champion` follows `dvc repro`, not `dvc exp run`; `models:/<name>@champion` is served by `mlflow models serve
--env-manager local` from a folder where the project's package cannot be imported (its code travels in the model)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.request import Request, urlopen

import joblib
import pandas as pd
import pytest

from pipeline_helpers import REPO, paths, project_env, run
from segmentation.core.segmenter import requirements
from segmentation.tracking.logger import DualLogger
from segmentation.tracking.registry import CHAMPION, register_segmenter
from segmentation.tracking.settings import TrackingSettings
from servers import HOST, free_port, process_group, server_env, wait_http

P = paths()


def model_name(root: Path) -> str:
    return TrackingSettings.resolve(root, environ={}).model_name


def client_for(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def train_runs(client) -> list:
    """The train runs of the project's store, oldest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "attributes.run_name = 'train'", order_by=["attributes.start_time ASC"])


def test_model_name_is_model_name_else_the_project_name(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop-segments"\n')
    assert model_name(tmp_path) == "shop-segments"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "a"\n[tool.segmentation]\nmodel_name = "b"\n')
    assert model_name(tmp_path) == "b"


def test_only_a_champion_moves_the_alias_and_a_registry_error_is_one_warning(tmp_path, capsys):
    client = client_for(tmp_path)
    assert register_segmenter(client, "run1", "shop", champion=True) == "1"
    assert register_segmenter(client, "run2", "shop", champion=False) == "2"  # an experiment's version
    champion = client.get_model_version_by_alias("shop", CHAMPION)
    assert (str(champion.version), champion.run_id, champion.source) == ("1", "run1", "runs:/run1/segmenter")


def test_a_registry_error_is_one_warning_and_the_run_is_recorded(tmp_path, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    def refuse(*args, **kwargs):
        raise MlflowException("the registry is away")

    monkeypatch.setattr("segmentation.tracking.store.register_segmenter", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    with DualLogger("train", root=tmp_path) as log:
        log.log_artifact_dir(tmp_path / "model", "segmenter")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(err) == 1 and err[0].startswith("warning: MLflow model registry: segmenter of run ")
    assert "the registry is away" in err[0]
    (train,) = [r for r in train_runs(client_for(tmp_path)) if "stage" in r.data.tags]
    assert train.info.status == "FINISHED"


def test_requirements_are_the_declared_dependencies_pinned():
    pinned = dict(r.split("==") for r in requirements())
    from importlib.metadata import version

    assert pinned["pydantic"] == version("pydantic") and pinned["pyyaml"] == version("pyyaml")
    assert {"scikit-learn", "pandas", "numpy", "mlflow", "cloudpickle"} <= set(pinned)
    assert not any(name.startswith("dask") for name in pinned)  # the optional engine's extra


@pytest.mark.pipeline
def test_champion_is_the_pipeline_run_and_an_experiment_does_not_move_it(trained_project, tmp_path):
    root, _ = trained_project
    name = model_name(root)
    (train,) = train_runs(client_for(root))
    champion = client_for(root).get_model_version_by_alias(name, CHAMPION)
    assert champion.run_id == train.info.run_id and champion.source == f"runs:/{train.info.run_id}/segmenter"

    copy = tmp_path / "project"  # an experiment in a copy: the shared project keeps its one train run
    shutil.copytree(root, copy, symlinks=True)
    run(["dvc", "exp", "run", "-S", "train.k_max=4", "-n", "k4"], copy, project_env(tmp_path))
    client = client_for(copy)
    runs = train_runs(client)
    assert len(runs) == 2 and runs[1].data.tags.get("dvc_exp_name") == "k4"
    versions = {str(v.version): v.run_id for v in client.search_model_versions(f"name = '{name}'")}
    assert versions == {"1": train.info.run_id, "2": runs[1].info.run_id}
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"  # not moved


@pytest.mark.pipeline
def test_champion_is_served_where_the_project_package_is_not_importable(trained_project, tmp_path):
    root, _ = trained_project
    name = model_name(root)
    champion = client_for(root).get_model_version_by_alias(name, CHAMPION)
    model = Path(client_for(root).download_artifacts(champion.run_id, "segmenter", str(tmp_path)))
    names = {line.split("==")[0] for line in (model / "requirements.txt").read_text().split()}
    assert {"pydantic", "pyyaml", "scikit-learn", "cloudpickle"} <= names
    example = (model / "serving_input_example.json").read_bytes()  # one typical row, no customer's own
    assert len(json.loads(example)["dataframe_split"]["data"]) == 1

    # The editable install is a path in a .pth file: a sitecustomize takes it out of sys.path again.
    site, outside = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    outside.mkdir()
    src = str((REPO / "src").resolve())
    (site / "sitecustomize.py").write_text(
        f"import os, sys\nsys.path[:] = [p for p in sys.path if os.path.realpath(p or '.') != {src!r}]\n"
    )
    venv = Path(sys.executable).parent
    env = server_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        PYTHONPATH=str(site),
        PATH=f"{venv}:/usr/bin:/bin",  # uvicorn
        PIP_NO_INDEX="1",  # nothing may be installed: --env-manager local uses this environment as it is
    )
    probe = subprocess.run([sys.executable, "-c", "import segmentation"], cwd=outside, env=env, capture_output=True)
    assert probe.returncode != 0 and b"No module named 'segmentation'" in probe.stderr

    raw = pd.read_csv(root / "new_customers.csv", sep="\t")
    rows = raw.dropna().head(20)  # raw rows, every column of the file (ID included)
    segmenter = joblib.load(root / P["segmenter"])
    expected = segmenter.predict(rows).tolist()
    example_expected = segmenter.predict(pd.DataFrame(**json.loads(example)["dataframe_split"])).tolist()
    body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
    port = free_port()
    cmd = [
        str(venv / "mlflow"), "models", "serve", "-m", f"models:/{name}@{CHAMPION}",
        "--env-manager", "local", "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with process_group(cmd, outside, env, log) as proc:
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/ping", timeout=120, proc=proc, log=log)
        request = Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        request = Request(f"{url}/invocations", data=example, headers={"Content-Type": "application/json"})
        with urlopen(request, timeout=60) as response:
            example_answer = json.loads(response.read())
    assert answer["predictions"] == expected
    assert example_answer["predictions"] == example_expected
    assert proc.returncode is not None  # stopped

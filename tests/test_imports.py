"""Every library entry point the project relies on imports, each in a fresh interpreter of this environment.

A lock can be consistent on paper and still broken: graphene 2.0 next to graphql-core 3.3 passed `uv pip check`
(graphene 2.0 declares no upper bound) while `import graphene` failed and the MLflow UI's /graphql answered 500.
Importing in a subprocess shows such an import-time failure on its own, with its traceback.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The project's environment (Makefile, .ci/run, the .pth written by `make setup`): no telemetry, no metadata probes.
PROJECT_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

ENTRY_POINTS = [
    "mlflow.server",  # `mlflow server` / `mlflow ui`
    "mlflow.server.fastapi_app",  # the app `mlflow ui` serves
    "mlflow.server.graphql.graphql_schema_extensions",  # the UI's /graphql schema (imports graphene)
    "mlflow.server.auth",  # `mlflow server --app-name basic-auth` (the remote tests' DagsHub stand-in)
    "graphene",
    "gql",
    "gql.transport.requests",
    "dagshub.logger",  # DAGsHubLogger, written by every stage
    "dagshub.data_engine.client.data_client",  # the dagshub client's gql user
    "dvc.cli",
    "dvc.api",
    "dvc_s3",
    "copier",
    "kneed",  # the knee of the elbow curve (train stage)
    "yellowbrick.cluster",  # dev: tests compare the search with KElbowVisualizer
    "sklearn.cluster",
    "vl_convert",
]
# The dask extra's (preprocess.engine: dask, README "Scaling out"), installed by `make setup EXTRAS=dask` only; none
# in a project generated without the Dask engine.
HAS_DASK_ENGINE = (Path(__file__).resolve().parents[1] / "src/segmentation/engines/dask").is_dir()
DASK_ENTRY_POINTS = [
    "dask.dataframe",
    "distributed",
    "dask_ml.preprocessing",
    "dask_ml.decomposition",
] if HAS_DASK_ENGINE else []  # fmt: skip
WITHOUT_DASK = pytest.mark.skipif(
    importlib.util.find_spec("dask") is None, reason="the dask extra is not installed: make setup EXTRAS=dask"
)


@pytest.mark.parametrize("module", [*ENTRY_POINTS, *(pytest.param(m, marks=WITHOUT_DASK) for m in DASK_ENTRY_POINTS)])
def test_entry_point_imports(module):
    env = {**os.environ, **PROJECT_ENV}
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr[-3000:]}"

"""Shared fixtures. The no-telemetry variables are set before anything imports mlflow or dvc."""

from __future__ import annotations

import os

os.environ.update(
    {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)
# Tests choose their own tracking store: never the user's environment or the repo's mlflow.db.
for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "SEGMENTATION_PIPELINE_RUN_ID"):
    os.environ.pop(_var, None)

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pipeline_helpers import FIXTURE_DATA, FIXTURE_PARAMS, REPO  # noqa: E402
from segmentation.config import PreprocessParams, load_section  # noqa: E402


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def preprocess_params() -> PreprocessParams:
    """The tests' own preprocess params (tests/fixtures/params.yaml), never the project's: those are the user's."""
    params = load_section("preprocess", REPO / FIXTURE_PARAMS)
    data = params.data.model_copy(update={"path": str(REPO / FIXTURE_DATA)})
    return params.model_copy(update={"data": data})


@pytest.fixture(scope="session")
def raw_full(preprocess_params) -> pd.DataFrame:
    """The marketing-campaign sample (428 rows: 400 complete, 24 blank Incomes, 4 outliers), as read by the stage."""
    from segmentation.data import load_csv

    return load_csv(preprocess_params.data)


@pytest.fixture
def raw(raw_full) -> pd.DataFrame:
    """A fresh copy of the sample for tests that modify it."""
    return raw_full.copy()

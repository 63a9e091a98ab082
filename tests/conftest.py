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

from pipeline_helpers import HAS_EXAMPLE, NO_EXAMPLE  # noqa: E402
from segmentation.config import PreprocessParams, load_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CSV = REPO / "data" / "example" / "marketing_campaign.csv"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def preprocess_params() -> PreprocessParams:
    """The project's own preprocess params, with the data path pointing at the example copy."""
    if not HAS_EXAMPLE:
        pytest.skip(NO_EXAMPLE)
    params = load_section("preprocess", REPO / "params.yaml")
    data = params.data.model_copy(update={"path": str(EXAMPLE_CSV)})
    return params.model_copy(update={"data": data})


@pytest.fixture(scope="session")
def raw_full(preprocess_params) -> pd.DataFrame:
    from segmentation.data import load_csv

    return load_csv(preprocess_params.data)


@pytest.fixture
def raw(raw_full) -> pd.DataFrame:
    """A fresh copy of the example data for tests that modify it."""
    return raw_full.copy()

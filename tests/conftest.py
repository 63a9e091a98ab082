"""Shared fixtures. The no-telemetry variables are set before anything imports mlflow or dvc."""

from __future__ import annotations

import fcntl
import os
import sys

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

from pipeline_helpers import (  # noqa: E402
    FIXTURE_DATA,
    FIXTURE_PARAMS,
    HELD_BACK,
    REPO,
    copy_project,
    held_back_ids,
    project_env,
    run,
    sample_lines,
    use_fixture_data,
)
from segmentation.config import PreprocessParams, load_section  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    """Close the figures a test drew (train's elbow, evaluate's plots): matplotlib warns past 20 open ones."""
    yield
    if "matplotlib.pyplot" in sys.modules:  # never import it for a test that did not
        sys.modules["matplotlib.pyplot"].close("all")


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
    from segmentation.core.data import load_csv

    return load_csv(preprocess_params.data)


@pytest.fixture
def raw(raw_full) -> pd.DataFrame:
    """A fresh copy of the sample for tests that modify it."""
    return raw_full.copy()


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """One real pipeline run shared by the fast suite's scoring and report tests (test_score, test_report_ui): a
    project copy on the tests' params, trained (``dvc repro``) on the sample without the held-back rows; its
    ``new_customers.csv`` is the whole sample (training rows, held-back rows, blank and outlier rows). Tests read it
    and write only beside it (``scores/``, their own files).

    Under pytest-xdist each worker has its own session: the run is made once, in the folder the workers share, by the
    first worker that asks (the others wait on a lock). (xdist's ``--dist loadgroup`` would keep the two files on one
    worker, but xdist 3.8 does not tag the groups' tests under pytest 9.2.)"""
    base = tmp_path_factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # inherited too by a pytest that a worker's test starts
    shared = base.parent if worker and base.name == f"popen-{worker}" else base
    tmp = shared / "trained"
    root, env = tmp / "project", project_env(tmp)
    with open(shared / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not (tmp / "done").exists():
            tmp.mkdir(exist_ok=True)
            copy_project(root)
            use_fixture_data(root, env)
            header, lines = sample_lines()
            held = {str(i) for i in held_back_ids()}
            training = [line for line in lines if line.split("\t", 1)[0] not in held]
            assert len(training) == len(lines) - HELD_BACK
            data = root / "data" / "raw" / "marketing_sample.csv"
            data.write_bytes((header + "".join(training)).encode("utf-8"))
            run(["dvc", "add", "--quiet", "data/raw/marketing_sample.csv"], root, env)
            run(["dvc", "repro"], root, env)
            (root / "new_customers.csv").write_bytes((header + "".join(lines)).encode("utf-8"))
            (tmp / "done").touch()
    return root, env

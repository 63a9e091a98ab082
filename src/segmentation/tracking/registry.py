"""The model registry of the local store: each train run's segmenter becomes a version of the project's registered
model; the alias ``champion`` follows the pipeline's own runs (``dvc repro``), never an experiment's."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from segmentation.tracking.settings import project_config
from segmentation.tracking.store import describe_failure

SEGMENTER = "segmenter"  # the train run's MLflow model: runs:/<run id>/segmenter
CHAMPION = "champion"
ENV_EXP_NAME = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs


def model_name(root: Path) -> str:
    """``[tool.segmentation] model_name`` of the project's pyproject.toml, else its ``[project] name``."""
    if name := project_config(root).get("model_name"):
        return name
    with (root / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]["name"]


def register_segmenter(client, run_id: str, name: str, champion: bool) -> str:
    """A new version of model ``name`` (created if missing) from the run's segmenter; ``champion``: the alias moves to
    it. Returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = str(client.create_model_version(name, f"runs:/{run_id}/{SEGMENTER}", run_id=run_id).version)
    if champion:
        client.set_registered_model_alias(name, CHAMPION, version)
    return version


def register_run(client, run_id: str, root: Path) -> None:
    """Register the train run's segmenter; the champion outside a DVC experiment. A failure is one warning line:
    the run and the stage's outputs are what matter."""
    try:
        register_segmenter(client, run_id, model_name(root), champion=not os.environ.get(ENV_EXP_NAME))
    except Exception as exc:
        why = describe_failure(exc)
        print(f"warning: MLflow model registry: segmenter of run {run_id} not registered: {why}", file=sys.stderr)

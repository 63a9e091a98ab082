"""The model registry: each train run's segmenter becomes a version of the project's registered model (in the local
store, and on a remote tracker it is delivered to); the alias ``champion`` follows the pipeline's own runs
(``dvc repro``), never an experiment's."""

from __future__ import annotations

SEGMENTER = "segmenter"  # the train run's MLflow model: runs:/<run id>/segmenter
CHAMPION = "champion"


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

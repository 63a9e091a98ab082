"""Where MLflow runs go: the project's settings (pyproject.toml ``[tool.segmentation]``, environment variables)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from segmentation.errors import UserError

ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "customer-segmentation"
DAGSHUB_DEFAULT_HOST = "https://dagshub.com"
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlruns"
# The stores MLflow can track to (a dialect may name its driver: postgresql+psycopg2); no scheme: a folder.
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", "")


def project_root(cwd: Path | None = None) -> Path:
    """The project's root: the working directory, or the repo that owns a DVC temporary experiment copy."""
    cwd = (cwd or Path.cwd()).resolve()
    # `dvc exp run --temp` and queued experiments run in a copy under .dvc/tmp/exps/: track into the real repo.
    root, copy, _ = str(cwd).partition(f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}")
    return Path(root) if copy else cwd


@dataclass(frozen=True)
class TrackingSettings:
    """Where MLflow runs go: ``MLFLOW_TRACKING_URI`` > ``tracking_uri`` in pyproject.toml's ``[tool.segmentation]``
    > DagsHub's endpoint when ``dagshub_owner`` and ``dagshub_repo`` are set there > the local store. Runs go to the
    local store (``local_uri``) first; a remote ``tracking_uri`` then receives a copy."""

    tracking_uri: str
    experiment_name: str
    local_uri: str
    artifact_location: str | None = None  # only for the embedded local store
    source: str = "local default"
    model_name: str = DEFAULT_EXPERIMENT  # the registered model: [tool.segmentation] model_name, else [project] name

    @classmethod
    def resolve(cls, root: Path, environ: Mapping[str, str] | None = None) -> TrackingSettings:
        """Resolve the settings for the project at ``root``."""
        env = os.environ if environ is None else environ
        project = project_config(root)
        name = env.get(ENV_EXPERIMENT) or project.get("experiment_name") or DEFAULT_EXPERIMENT
        model = project.get("model_name") or project_config(root, "project").get("name") or DEFAULT_EXPERIMENT
        local = f"sqlite:///{root / LOCAL_STORE}"
        artifacts = (root / LOCAL_ARTIFACTS).as_uri()
        if env.get(ENV_TRACKING_URI):
            uri, source = env[ENV_TRACKING_URI], "environment (MLFLOW_TRACKING_URI)"
        elif project.get("tracking_uri"):
            uri, source = project["tracking_uri"], "pyproject.toml [tool.segmentation] tracking_uri"
        elif project.get("dagshub_owner") and project.get("dagshub_repo"):
            uri = dagshub_url(project["dagshub_owner"], project["dagshub_repo"], ".mlflow", env)
            source = "pyproject.toml [tool.segmentation] dagshub_owner/dagshub_repo"
        else:
            return cls(local, name, local, artifacts, model_name=model)
        if urlsplit(uri).scheme.partition("+")[0] not in SCHEMES:
            where = "MLFLOW_TRACKING_URI" if source.startswith("env") else source.removeprefix("pyproject.toml ")
            raise UserError(
                f"{where}={redact_uri(uri)[:80]!r}: not a tracking URI MLflow can use; give http(s)://host:port, "
                "sqlite:///path/mlflow.db or postgresql://..., or unset it for the project's local store"
            )
        if urlsplit(uri).scheme in ("http", "https"):
            return cls(uri, name, local, artifacts, source, model)
        return cls(uri, name, uri, None, source, model)  # a store of the user's own here: the local one, no copy

    @property
    def is_remote(self) -> bool:
        """True when runs are copied to a tracking server after the local write."""
        return self.tracking_uri != self.local_uri

    @property
    def display_uri(self) -> str:
        """The tracking URI without any credentials, safe to print."""
        return redact_uri(self.tracking_uri)


def dagshub_url(owner: str, repo: str, suffix: str, environ: Mapping[str, str] | None = None) -> str:
    """``https://dagshub.com/<owner>/<repo><suffix>`` (suffix ``.dvc`` or ``.mlflow``); ``DAGSHUB_CLIENT_HOST`` (read
    by the DagsHub client too) points elsewhere."""
    host = (os.environ if environ is None else environ).get("DAGSHUB_CLIENT_HOST") or DAGSHUB_DEFAULT_HOST
    return f"{host.rstrip('/')}/{owner}/{repo}{suffix}"


def project_config(root: Path, table: str = "tool.segmentation") -> dict[str, Any]:
    """A table (``[tool.segmentation]``, ``[project]``) of the project's pyproject.toml (empty when absent)."""
    path = root / "pyproject.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key in table.split("."):
        data = data.get(key, {})
    return data


def redact_uri(text: object) -> str:
    """``text`` (a URI, or a message holding some) without any ``user:password@``, even where it does not parse."""
    return re.sub(r"//[^/\s?#]*@", "//", str(text))

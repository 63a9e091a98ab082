"""The engines a pipeline runs on (``preprocess.engine``): ``local``, the stages' own code, and optional ones, one
package each here (``dask``: ``make setup EXTRAS=dask``), imported only through :func:`engine_module`."""

from __future__ import annotations

import importlib
from types import ModuleType

from segmentation.errors import UserError

PARAM = "preprocess.engine"
LOCAL = "local"
# The packages each optional engine needs: its extra in pyproject.toml ([project.optional-dependencies]).
EXTRA_PACKAGES = {"dask": ("dask", "distributed", "dask_ml")}


def engine_module(name: str, stage: str) -> ModuleType:
    """``segmentation.engines.<name>.<stage>``; an engine whose extra is not installed, or that this project does
    not have, is a :class:`UserError` saying what to do."""
    try:
        return importlib.import_module(f"{__name__}.{name}.{stage}")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing.partition(".")[0] in EXTRA_PACKAGES.get(name, ()):
            raise UserError(f"{PARAM}: {name} needs the {name} extra: make setup EXTRAS={name}") from None
        if missing == f"{__name__}.{name}":
            raise UserError(
                f"{PARAM}: {name}: this project has no such engine (src/segmentation/engines/{name}: it was "
                f"generated without it); set {PARAM}: {LOCAL}"
            ) from None
        raise

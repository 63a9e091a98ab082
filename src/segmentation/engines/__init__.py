"""The engines a pipeline runs on (``preprocess.engine``): ``local``, the stages' own code (pandas in each stage's
process), and the optional ones, one package each here: ``dask`` (:mod:`segmentation.engines.dask`, the ``dask``
extra: ``make setup EXTRAS=dask``).

A stage (and ``make score``) picks its engine once, at the top of its work, with :func:`engine_module`: nothing else
imports an optional engine, so a stage's own code, and its deps in ``dvc.yaml``, hold none of it. ``dvc.yaml`` lists
the chosen engine's folder, ``src/segmentation/engines/${preprocess.engine}``, among each stage's deps: an edit of
the Dask engine re-runs the stages on ``engine: dask``, none on ``engine: local`` (whose folder,
:mod:`segmentation.engines.local`, holds no code).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from segmentation.errors import UserError

PARAM = "preprocess.engine"
LOCAL = "local"
# The packages each optional engine needs: its extra in pyproject.toml ([project.optional-dependencies]).
EXTRA_PACKAGES = {"dask": ("dask", "distributed", "dask_ml")}


def engine_module(name: str, stage: str) -> ModuleType:
    """``segmentation.engines.<name>.<stage>``: the engine's code for ``stage`` (its ``work`` or ``run``).

    An engine whose extra is not installed is one :class:`UserError` line (``error:``, exit 2) with the command that
    installs it; an engine this project does not have (generated without it) one line too.
    """
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

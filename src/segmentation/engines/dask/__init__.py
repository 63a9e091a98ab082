"""The Dask engine (``preprocess.engine: dask``): an optional extra (``make setup EXTRAS=dask``).

The stages and ``make score`` load it through :func:`segmentation.engines.engine_module` only, one module per stage
(:mod:`.preprocess`, :mod:`.train`, :mod:`.evaluate`, :mod:`.score`, each with the stage's ``work``); it may import
the stages' and the core's functions, never the other way round. Its packages are checked here, when it is loaded:
without the extra a stage stops at once with one line, not with a traceback halfway through its work.
"""

from __future__ import annotations

import importlib.util

from segmentation.engines import EXTRA_PACKAGES

for _package in EXTRA_PACKAGES["dask"]:
    if importlib.util.find_spec(_package) is None:
        raise ModuleNotFoundError(f"No module named {_package!r}", name=_package)

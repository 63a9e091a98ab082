"""The local engine (``preprocess.engine: local``, the default) is the stages' own code: nothing here.

This folder is what ``dvc.yaml``'s per-engine dep ``src/segmentation/engines/${preprocess.engine}`` names on the
local engine (DVC needs a path that exists); on ``engine: dask`` the same dep is the Dask engine's folder.
"""

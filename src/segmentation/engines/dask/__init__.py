"""The Dask engine (``preprocess.engine: dask``): an optional extra (``make setup EXTRAS=dask``)."""

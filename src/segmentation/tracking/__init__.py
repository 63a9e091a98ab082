"""Tracking: the dual logger (MLflow + DagsHub's logger files), the local store; remote/, optional: delivery to a
tracker."""

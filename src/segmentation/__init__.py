"""Reproducible customer segmentation: preprocess -> train -> evaluate."""

import os

# No outside traffic from the tools the stages import (MLflow's telemetry, DVC's analytics, botocore's
# metadata probe), unless the user explicitly set these variables.
for _name, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_name, _value)

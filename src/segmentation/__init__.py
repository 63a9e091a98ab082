"""Reproducible customer segmentation: preprocess -> train -> evaluate."""

import os
import signal
import sys
import threading

# No outside traffic from the tools the stages import (telemetry, analytics, metadata probes) unless the user asks.
for _name, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_name, _value)


def _interrupted_while_loading(signum, frame) -> None:
    # Nothing has been written yet: leave at once, with one line instead of an import traceback.
    sys.stderr.write("interrupted: stopped while loading\n")
    os._exit(130)


# `python -m segmentation.<stage>` imports this package first (sys.argv[0] is "-m" then): Ctrl-C while the libraries
# load gets one line; the stage's entry point then takes over (errors.py).
if sys.argv[:1] == ["-m"] and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _interrupted_while_loading)

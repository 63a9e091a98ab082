"""Atomic output writers: a failed stage leaves no half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from segmentation.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (keys in insertion order, for readable diffs)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    """Write ``df`` as comma-separated CSV without the index (floats round-trip exactly)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def dump_model(path: str | Path, obj: Any) -> None:
    """Pickle a fitted estimator with joblib."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        joblib.dump(obj, fh)


def save_figure(path: str | Path, fig: Any, dpi: int) -> None:
    """Save a matplotlib figure as PNG, then close it."""
    import matplotlib.pyplot as plt

    # PNG metadata without a Software version keeps the bytes identical across matplotlib patch releases.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV written by a previous stage; a missing file is a :class:`~segmentation.errors.UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run the earlier stages first (dvc repro)")
    return pd.read_csv(path)


def load_model(path: str | Path) -> Any:
    """Load a joblib pickle written by a previous stage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run the earlier stages first (dvc repro)")
    return joblib.load(path)

"""The Dask engine's checks of ``preprocess.dask`` (declared once, with its defaults, by config.DaskSection) and of
the ``preprocess`` section: read with ``engine: dask`` only, as one-line errors naming the parameter."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from dask.utils import parse_bytes
from pydantic import field_validator

from segmentation.config import PARAMS_FILE, DaskSection, PreprocessParams, parse_section
from segmentation.errors import UserError

TABLE_SCHEMES = ("s3://", "remote://")
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"  # a running scheduler, e.g. tcp://10.0.0.5:8786; unset: a LocalCluster
# Sizes below which a run is all overhead or never ends: Dask spends about a millisecond per task and a CSV block is
# a task (a blocksize of 1 byte: a task per byte); a worker holds ~230 MiB once it has imported pandas and
# scikit-learn, and Dask pauses it at 80% of its memory limit (a limit of 256MiB: paused for ever).
MIN_SIZES = {"blocksize": "4kB", "memory_limit": "512MiB"}


def byte_size(value: Any, least: str = "1B") -> Any:
    """``value`` when it is a byte size of at least ``least`` as Dask reads it ("64MiB", "2 GB", 1000000)."""
    try:
        size = parse_bytes(value) if str(value).strip() and not isinstance(value, bool) else 0
    except (ValueError, TypeError):
        size = 0
    if size < parse_bytes(least):
        raise ValueError(f"not a byte size of at least {least} (e.g. 512MiB, 2GB)")
    return value


def scheduler_address() -> str | None:
    """``DASK_SCHEDULER_ADDRESS`` when set, checked up front: a malformed one is one line, not a traceback."""
    address = os.environ.get(SCHEDULER_ENV, "").strip()
    if not address:
        return None
    try:
        url = urlsplit(address)
        ok = url.scheme in ("tcp", "tls") and url.hostname and url.port and url.path in ("", "/")
        ok = ok and not (url.username or url.query or url.fragment)
    except ValueError:  # a port that is not a number in 0-65535, a broken [IPv6] host
        ok = False
    if not ok:
        raise UserError(
            f"{SCHEDULER_ENV}={address}: not a scheduler address tcp://host:port (e.g. tcp://10.0.0.5:8786)"
        )
    return address


class DaskParams(DaskSection):
    """``preprocess.dask``, checked."""

    @field_validator("blocksize", "memory_limit")
    @classmethod
    def _byte_size(cls, value: Any, info: Any) -> Any:
        auto = info.field_name == "memory_limit" and value == "auto"
        return value if auto else byte_size(value, MIN_SIZES[info.field_name])

    @field_validator("n_workers", "threads_per_worker", "connect_timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("Input should be greater than 0")
        return value

    @field_validator("tables")
    @classmethod
    def _tables(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = next((s for s in TABLE_SCHEMES if value.startswith(s)), None)
        location, _, prefix = value.removeprefix(scheme or "").partition("/")
        if scheme is None or not location or not prefix.strip("/"):
            raise ValueError(f"{value!r}: expected s3://<bucket>/<prefix>, remote://<dvc remote>/<prefix> or null")
        if any(c in value for c in "*?["):
            raise ValueError(f"{value!r}: a prefix, not a glob")
        return value


def dask_params(params: PreprocessParams, source: str = PARAMS_FILE) -> DaskParams:
    """``preprocess.dask`` checked (its defaults filled in), after ``DASK_SCHEDULER_ADDRESS`` and
    ``preprocess.data.files``: a pattern of file names inside the folder ``data.path`` (the folder stays a valid DVC
    dependency, a glob is not one)."""
    scheduler_address()
    files = params.data.files
    if files is not None and (files.startswith("/") or "://" in files or ".." in files.split("/")):
        raise UserError(
            f"{source}: preprocess.data.files: {files!r}: a pattern of file names inside data.path, e.g. part-*.csv"
        )
    return parse_section("preprocess.dask", params.dask.model_dump(), source, DaskParams)

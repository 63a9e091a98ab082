"""The Dask engine's checks of ``preprocess.dask`` (declared once, with its defaults, by config.DaskSection) and of
the ``preprocess`` section: read with ``engine: dask`` only, as one-line errors naming the parameter."""

from __future__ import annotations

from typing import Any

from dask.utils import parse_bytes
from pydantic import field_validator

from segmentation.config import PARAMS_FILE, DaskSection, PreprocessParams, parse_section
from segmentation.errors import UserError

TABLE_SCHEMES = ("s3://", "remote://")


def byte_size(value: Any) -> Any:
    """``value`` when it is a byte size of at least 1 byte as Dask reads it ("64MiB", "2 GB", 1000000)."""
    try:
        size = parse_bytes(value) if str(value).strip() and not isinstance(value, bool) else 0
    except (ValueError, TypeError):
        size = 0
    if size < 1:
        raise ValueError("not a byte size of at least 1 byte (e.g. 64MiB, 2GB, 500kB)")
    return value


class DaskParams(DaskSection):
    """``preprocess.dask``, checked."""

    @field_validator("blocksize", "memory_limit")
    @classmethod
    def _byte_size(cls, value: Any, info: Any) -> Any:
        return value if info.field_name == "memory_limit" and value == "auto" else byte_size(value)

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
    """``preprocess.dask`` checked (its defaults filled in), after ``preprocess.data.files``: a pattern of file
    names inside the folder ``data.path`` (the folder stays a valid DVC dependency, a glob is not one)."""
    files = params.data.files
    if files is not None and (files.startswith("/") or "://" in files or ".." in files.split("/")):
        raise UserError(
            f"{source}: preprocess.data.files: {files!r}: a pattern of file names inside data.path, e.g. part-*.csv"
        )
    return parse_section("preprocess.dask", params.dask.model_dump(), source, DaskParams)

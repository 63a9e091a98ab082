"""The Dask engine's large tables on object storage (``preprocess.dask.tables``), recorded by paths and hashes.

With ``preprocess.dask.tables`` null, the workers write the features and the matrix as Parquet folders at the
dvc.yaml paths (a file system the workers share with the stage's machine). Set to ``s3://bucket/prefix`` or
``remote://<dvc remote>/prefix``, the workers write the parts to object storage instead, with the storage options
(endpoint, keys) that :mod:`segmentation.engines.dask.sources` gives the inputs, and the stage writes at each
dvc.yaml path a
small JSON manifest that DVC versions like any other output: the format, each part's URL, size, ETag and md5, its
rows, and the table's schema.

Why a manifest and not a DVC output on the bucket: DVC 3.0 removed external outputs. Why a run-unique sub-prefix
(``<prefix>/<run id>/features/part.NNNNN.parquet``): a rerun never overwrites the parts that an earlier manifest,
still committed in git with its ``dvc.lock``, points at, so ``dvc checkout`` of an older commit stays readable.
Old runs' parts are not deleted by the pipeline (their lifetime is the bucket's: a lifecycle rule, or by hand).

Readers (train and evaluate on Dask: :func:`segmentation.engines.dask.tables.load`) check each part's size
and ETag against
the manifest before reading it and its md5 after: a part changed since the manifest was written is one error line.
No credential is ever written into a manifest: parts are named by the user's URL form (``remote://`` resolves to
the DVC remote's endpoint and keys again when read).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from segmentation.engines.dask import sources as dask_sources
from segmentation.errors import UserError
from segmentation.files import PARQUET

PART_NAME = "part.{:05d}" + PARQUET  # zero-padded: the parts' name order is the rows' order

TABLES_PARAM = "params.yaml: preprocess.dask.tables"
# The manifest's format name and version: a reader refuses one it does not know rather than guess.
MANIFEST_FORMAT = "segmentation-dask-tables"
MANIFEST_VERSION = 1
# A Parquet file starts with these bytes; a manifest (JSON) never does: how a reader tells them apart at the
# dvc.yaml path (the path keeps its .parquet name: dvc.yaml is the same for both kinds).
PARQUET_MAGIC = b"PAR1"
JSON_START = b"{"


@dataclass(frozen=True)
class Destination:
    """Where one table's parts go: the user's URL form (in the manifest) and the resolved URL + options (not)."""

    shown: str  # remote://... or s3://..., no secret
    url: str  # s3://...
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # may hold secrets


def run_destinations(tables: str, names: list[str]) -> list[Destination]:
    """One run-unique destination per table name under ``tables`` (a new random run id: a rerun writes beside, never
    over, the parts an earlier manifest points at)."""
    run = uuid.uuid4().hex
    base = tables.rstrip("/")
    source = dask_sources.resolve(base, param=TABLES_PARAM)
    return [
        Destination(f"{base}/{run}/{name}", f"{source.url.rstrip('/')}/{run}/{name}", source.options) for name in names
    ]


def write_remote_part(table: pd.DataFrame, where: Destination, number: int) -> dict[str, Any]:
    """On a worker: one partition as Parquet at ``where/part.NNNNN.parquet``; its record for the manifest."""
    import fsspec

    from segmentation.files import write_parquet

    buffer = io.BytesIO()
    write_parquet(buffer, table)
    body = buffer.getvalue()
    name = PART_NAME.format(number)
    url = f"{where.url}/{name}"
    fs, key = fsspec.core.url_to_fs(url, **where.options)
    try:
        fs.pipe_file(key, body)
        info = fs.info(key)
    except Exception as exc:
        if dask_sources.storage_failure(exc):
            raise _storage_error(exc, where.shown) from None
        raise
    return {
        "url": f"{where.shown}/{name}",
        "size": len(body),
        "etag": _etag(info),
        "md5": hashlib.md5(body).hexdigest(),
        "rows": len(table),
    }


def _etag(info: dict[str, Any]) -> str:
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


def _storage_error(exc: BaseException, shown: str, named: str = TABLES_PARAM) -> UserError:
    """The one-line error for a failure of the storage at ``shown``; ``named``: what the message starts with (the
    param when writing, the manifest when reading)."""
    scheme = dask_sources.REMOTE_SCHEME
    remote = shown.removeprefix(scheme).split("/", 1)[0] if shown.startswith(scheme) else None
    return UserError(
        f"{named}: {shown}: {dask_sources.describe(exc, dask_sources.Source(shown, shown, remote=remote))}"
    )


def manifest_text(where: Destination, parts: list[dict[str, Any]], schema: pd.DataFrame) -> str:
    """The manifest of one table (JSON, stable key order): format, prefix, parts, rows, schema (column -> dtype)."""
    body = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "prefix": where.shown,
        "rows": int(sum(p["rows"] for p in parts)),
        "schema": {str(c): str(t) for c, t in schema.dtypes.items()},
        "parts": parts,
    }
    return json.dumps(body, indent=2) + "\n"


def remove_run(where: Destination) -> None:
    """Best effort, after a failed run: the parts this run wrote (no manifest points at them)."""
    import fsspec

    try:
        fs, key = fsspec.core.url_to_fs(where.url, **where.options)
        if fs.exists(key):
            fs.rm(key, recursive=True)
    except Exception:
        pass


# -- reading --------------------------------------------------------------------------------------------------------
def is_manifest(path: str | Path) -> bool:
    """Whether the table at ``path`` is a manifest (a file starting with ``{``) rather than Parquet."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(len(JSON_START)) == JSON_START


def read_manifest(path: str | Path, stage: str) -> dict[str, Any]:
    """The manifest at ``path``, checked for its format; anything else is one line with the fix."""
    rebuild = f"rebuild it: dvc repro -f -s {stage}"
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{path}: not a table manifest written by the pipeline; {rebuild}") from None
    if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT or body.get("version") != MANIFEST_VERSION:
        raise UserError(f"{path}: not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} manifest; {rebuild}")
    if not body.get("parts"):
        raise UserError(f"{path}: its manifest lists no parts; {rebuild}")
    return body


@dataclass(frozen=True)
class RemotePart:
    """One part a manifest lists, as a worker reads it."""

    url: str  # resolved s3://...
    shown: str  # as the manifest names it
    size: int
    etag: str
    md5: str
    manifest: str  # the manifest's path (messages)
    stage: str
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def remote_parts(path: str | Path, stage: str) -> tuple[list[RemotePart], list[int]]:
    """The parts the manifest at ``path`` lists (resolved with the storage's current options) and their rows."""
    body = read_manifest(path, stage)
    prefix = str(body["prefix"])
    source = dask_sources.resolve(prefix, param=str(path))
    parts = []
    for part in body["parts"]:
        shown = str(part["url"])
        url = source.url.rstrip("/") + shown.removeprefix(prefix.rstrip("/"))
        parts.append(
            RemotePart(url, shown, int(part["size"]), str(part["etag"]), str(part["md5"]), str(path), stage,
                       source.options)
        )  # fmt: skip
    return parts, [int(p["rows"]) for p in body["parts"]]


def read_remote_part(part: RemotePart) -> pd.DataFrame:
    """On a worker: one part, refused in one line when its size, ETag or md5 differ from the manifest's."""
    import fsspec
    import pyarrow.parquet as pq

    rebuild = f"rebuild it: dvc repro -f -s {part.stage}"
    fs, key = fsspec.core.url_to_fs(part.url, **part.options)
    try:
        info = fs.info(key)
        if int(info.get("size") or 0) != part.size or _etag(info) != part.etag:
            raise UserError(
                f"{part.manifest}: {part.shown} changed since the manifest was written (size {info.get('size')} vs "
                f"{part.size}, ETag {_etag(info)!r} vs {part.etag!r}); {rebuild}"
            )
        body = fs.cat_file(key)
    except FileNotFoundError:
        raise UserError(f"{part.manifest}: {part.shown} is missing from the storage; {rebuild}") from None
    except UserError:
        raise
    except Exception as exc:
        if dask_sources.storage_failure(exc):
            raise _storage_error(exc, part.shown, part.manifest) from None
        raise
    if hashlib.md5(body).hexdigest() != part.md5:
        raise UserError(f"{part.manifest}: {part.shown} changed since the manifest was written (md5); {rebuild}")
    return pq.read_table(io.BytesIO(body)).to_pandas()

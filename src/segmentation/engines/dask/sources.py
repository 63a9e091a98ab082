"""Where the Dask engine reads its input: local files or S3-compatible storage, CSV or Parquet, in partitions.

``preprocess.data.path`` (and ``make score``'s input on Dask) may name

- one file, a folder (every data file under it, names starting with ``_`` or ``.`` skipped: a Parquet dataset's
  ``_SUCCESS``, ``_metadata``), or a glob of files;
- on local disk, at ``s3://bucket/key...``, or at ``remote://<dvc remote>/key...``: the DVC remote's own location,
  endpoint and credentials (the form DVC also reads as an external dependency, see README "Scaling out").

S3 credentials are the DVC remote's: its ``endpointurl``, ``access_key_id``, ``secret_access_key`` (and
``session_token``, ``region``, ``profile``) from ``.dvc/config`` and the git-ignored ``.dvc/config.local`` (where
``make dagshub`` puts the DagsHub token), for ``remote://`` the remote named, for ``s3://`` the DVC remote of that
bucket if there is one; missing values come from the ``AWS_*`` environment variables of the process that starts the
stage. They reach the workers as fsspec ``storage_options`` inside the partitions' descriptions, never in a param,
a message, a log or a file (the dataclasses below do not show them).

The format: ``preprocess.data.format`` (``csv``, ``parquet``), or ``auto``: Parquet for files named ``*.parquet``,
``*.parq``, ``*.pq``, CSV for any other name; a mix of both is an error. A CSV is cut into ``blocksize`` blocks at
line ends (:class:`Block`, read by :mod:`segmentation.engines.dask.engine`); a Parquet file gives one
partition per row group
(:class:`ParquetPart`), read with only the columns used.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import pandas as pd

from segmentation.config import DataParams
from segmentation.core import data
from segmentation.errors import UserError

T = TypeVar("T")

PATH_PARAM = "params.yaml: preprocess.data.path"
FORMAT_PARAM = "preprocess.data.format"
CSV, PARQUET = "csv", "parquet"
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
SKIPPED = ("_", ".")  # in a folder: markers and metadata of the tools that wrote it, not data
REMOTE_SCHEME, S3_SCHEME, LOCAL_URL = "remote://", "s3://", "file://"
GLOB_CHARS = frozenset("*?[")
# Dask spends about a millisecond scheduling each task: beyond this many CSV blocks the overhead is minutes
MAX_PARTITIONS = 100_000
# Bounded waits for S3 (botocore's defaults: 60 s per connect and read, retried): an unreachable endpoint is one
# line within about a minute, not a stall.
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 60
S3_MAX_ATTEMPTS = 3
# DVC remote settings -> s3fs storage options (the same meaning in both).
_DVC_TO_S3FS = {"access_key_id": "key", "secret_access_key": "secret", "session_token": "token", "profile": "profile"}
_AWS_ENV = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"}


@dataclass(frozen=True)
class Source:
    """An input resolved to an fsspec URL (a path, a folder or a glob) and the options to open it with."""

    shown: str  # as the user wrote it: what messages name
    url: str
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # may hold secrets
    remote: str | None = None  # the DVC remote whose settings were used


@dataclass(frozen=True)
class DataFile:
    """One file of the input: its URL (``file://``, ``s3://``) and size."""

    url: str
    size: int


@dataclass(frozen=True)
class Block:
    """One partition of the raw CSV: the lines that start in ``[offset, offset + length)`` of file ``path``."""

    path: str  # a URL (file://..., s3://...)
    offset: int
    length: int
    number: int  # its place among all partitions of the input (0 = the first file's first lines)
    # fsspec storage options (S3 endpoint and credentials, below); never shown
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The file as messages name it: a local one relative to the working directory when it is under it."""
        return shown_url(self.path)


@dataclass(frozen=True)
class ParquetPart:
    """One partition of a Parquet input: row group ``row_group`` of file ``path``."""

    path: str  # a URL
    row_group: int
    rows_before: int  # rows of the same file before this row group
    number: int  # its place among all partitions of the input
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The file as messages name it: a local one relative to the working directory when it is under it."""
        return shown_url(self.path)


def shown_url(url: str) -> str:
    """A file's URL as messages show it (a local file relative to the working directory when it is under it)."""
    if not url.startswith(LOCAL_URL):
        return url
    local = Path(url.removeprefix(LOCAL_URL))
    with contextlib.suppress(ValueError):
        return str(local.relative_to(Path.cwd()))
    return str(local)


# -- credentials ----------------------------------------------------------------------------------------------------
def dvc_remotes(root: Path | None = None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The DVC remotes (``.dvc/config`` merged with ``.dvc/config.local``) and the default remote's name."""
    from dvc.config import Config, ConfigError

    dvc_dir = (root or Path.cwd()) / ".dvc"
    if not dvc_dir.is_dir():
        return {}, None
    try:
        config = Config(dvc_dir=str(dvc_dir))
    except ConfigError as exc:  # DVC's message names the key, not its value
        raise UserError(f".dvc/config or .dvc/config.local: {exc}; fix it with dvc remote modify") from None
    return dict(config.get("remote", {})), config.get("core", {}).get("remote")


def s3_options(remote: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs ``storage_options`` from a DVC remote's settings, missing credentials from ``AWS_*`` variables; bounded
    timeouts."""
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    for dvc_key, s3fs_key in _DVC_TO_S3FS.items():
        if remote.get(dvc_key):
            options[s3fs_key] = str(remote[dvc_key])
    for key, var in _AWS_ENV.items():
        if key not in options and env.get(var):
            options[key] = env[var]
    endpoint = remote.get("endpointurl") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = str(endpoint)
    region = remote.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": str(region)}
    options["config_kwargs"] = {
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
        "read_timeout": S3_READ_TIMEOUT_S,
        "retries": {"max_attempts": S3_MAX_ATTEMPTS},
    }
    return options


def bucket(url: str) -> str:
    """The bucket of an ``s3://bucket/key`` URL."""
    return url.removeprefix(S3_SCHEME).split("/", 1)[0]


def resolve(
    path: str, root: Path | None = None, environ: Mapping[str, str] | None = None, param: str = PATH_PARAM
) -> Source:
    """``path`` as an fsspec URL with its storage options: ``remote://name/key`` -> the DVC remote's URL + key with
    its endpoint and credentials; ``s3://bucket/key`` with the DVC remote of that bucket's (else ``AWS_*``); a local
    path as an absolute path (a worker elsewhere has its own working directory). Messages name ``param``."""
    if path.startswith(REMOTE_SCHEME):
        name, _, key = path.removeprefix(REMOTE_SCHEME).partition("/")
        remotes, _ = dvc_remotes(root)
        if name not in remotes:
            known = ", ".join(sorted(remotes)) or "none"
            raise UserError(f"{param}: {path}: no DVC remote {name!r} (remotes: {known}; dvc remote add)")
        remote = remotes[name]
        url = str(remote.get("url", ""))
        if not url.startswith(S3_SCHEME):
            raise UserError(f"{param}: {path}: DVC remote {name!r} is not on S3 ({url.split('://')[0]}://)")
        return Source(path, url.rstrip("/") + "/" + key.lstrip("/"), s3_options(remote, environ), name)
    if path.startswith(S3_SCHEME):
        remotes, default = dvc_remotes(root)
        ordered = sorted(remotes.items(), key=lambda item: item[0] != default)  # the default remote first
        same = [(n, r) for n, r in ordered if str(r.get("url", "")).startswith(S3_SCHEME)]
        same = [(n, r) for n, r in same if bucket(str(r["url"])) == bucket(path)]
        name, remote = same[0] if same else (None, {})
        return Source(path, path, s3_options(remote, environ), name)
    if "://" in path:
        raise UserError(f"{param}: {path}: only local paths, s3:// and remote://<dvc remote>/ are read")
    return Source(path, str(Path(path).absolute()))


# -- listing --------------------------------------------------------------------------------------------------------
def describe(exc: BaseException, source: Source) -> str:
    """What went wrong talking to the storage, in words (never the options)."""
    where = f" (DVC remote {source.remote})" if source.remote else ""
    if isinstance(exc, PermissionError):
        return f"access denied: check the credentials{where} (access_key_id, secret_access_key in .dvc/config.local)"
    if isinstance(exc, FileNotFoundError):
        return "not found (no such bucket, key or file)"
    text = " ".join(str(exc).split())
    for marker in ("Could not connect", "Connect timeout", "Read timeout", "Connection refused"):
        if marker in text:
            return f"storage unreachable{where}: {marker.lower()}; check its endpointurl"
    return f"cannot read it{where} ({type(exc).__name__})"


def storage_error(exc: BaseException, source: Source) -> UserError:
    """The one-line error for a failure of the storage while reading ``source``."""
    return UserError(f"{PATH_PARAM}: {source.shown}: {describe(exc, source)}")


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the storage's doing (refused, missing, unreachable) rather than a bug."""
    return isinstance(exc, OSError | ValueError) or type(exc).__module__.startswith(("botocore", "aiobotocore"))


def missing_bucket(fs: Any, target: str, source: Source) -> str:
    """`` (no bucket B)`` when ``source`` is on S3 and its bucket does not exist (asked only on the way to an error)."""
    if not source.url.startswith(S3_SCHEME):
        return ""
    name = bucket(source.url)
    try:
        fs.info(name)
    except FileNotFoundError:
        return f" (no bucket {name!r} at the storage's endpoint)"
    except Exception as exc:
        if not storage_failure(exc):
            raise
    return ""


def _skipped(path: str, folder: str) -> bool:
    rel = PurePosixPath(path).relative_to(PurePosixPath(folder)) if path.startswith(folder) else PurePosixPath(path)
    return any(part.startswith(SKIPPED) for part in rel.parts)


def list_files(source: Source) -> list[DataFile]:
    """The data files ``source`` names, in name order (a folder: every file under it but hidden and ``_`` ones);
    none found is a :class:`UserError` naming the param and the path."""
    from fsspec.core import url_to_fs

    files: dict[str, int] = {}
    fs, target = url_to_fs(source.url, **source.options)  # no I/O yet
    try:
        if GLOB_CHARS & set(target):
            found = fs.glob(target, detail=True)
            files = {p: int(i.get("size") or 0) for p, i in found.items() if i.get("type") == "file"}
        else:
            info = fs.info(target)
            if info.get("type") == "directory":
                found = fs.find(target, detail=True)
                files = {p: int(i.get("size") or 0) for p, i in found.items() if not _skipped(p, target)}
            else:
                files = {target: int(info.get("size") or 0)}
    except FileNotFoundError:
        files = {}
    except Exception as exc:
        if storage_failure(exc):
            raise storage_error(exc, source) from None
        raise
    if not files:
        raise UserError(f"{PATH_PARAM}: {source.shown}: no data file found{missing_bucket(fs, target, source)}")
    return [DataFile(fs.unstrip_protocol(p), size) for p, size in sorted(files.items())]


def file_format(files: list[DataFile], fmt: str, source: Source) -> str:
    """``csv`` or ``parquet``: ``fmt`` when set, else by the files' names; a mix of both is an error."""
    if fmt != "auto":
        return fmt
    kinds = {PARQUET if f.url.endswith(PARQUET_SUFFIXES) else CSV: f for f in files}
    if len(kinds) > 1:
        raise UserError(
            f"{PATH_PARAM}: {source.shown}: mixes Parquet and CSV files (e.g. {shown_url(kinds[PARQUET].url)} and "
            f"{shown_url(kinds[CSV].url)}); name one kind, or set {FORMAT_PARAM}"
        )
    return next(iter(kinds))


def parquet_parts(files: list[DataFile], source: Source) -> list[ParquetPart]:
    """One partition per row group of each Parquet file (read from the files' footers)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts: list[ParquetPart] = []
    for file in files:
        try:
            with fsspec.open(file.url, "rb", **source.options) as fh:
                meta = pq.ParquetFile(fh).metadata
        except pa.ArrowInvalid as exc:
            raise UserError(f"{shown_url(file.url)}: not a Parquet file ({exc}); set {FORMAT_PARAM}") from None
        except Exception as exc:
            if storage_failure(exc):
                raise storage_error(exc, source) from None
            raise
        before = 0
        for group in range(meta.num_row_groups):
            parts.append(ParquetPart(file.url, group, before, len(parts), source.options))
            before += meta.row_group(group).num_rows
    if not parts:
        raise UserError(f"{PATH_PARAM}: {source.shown}: no rows in its Parquet files")
    return parts


def data_path(params: DataParams) -> str:
    """The input as one path or glob: ``path``, or ``path/files`` when ``files`` names a pattern in the folder."""
    return params.path if params.files is None else params.path.rstrip("/") + "/" + params.files


def partitions(params: DataParams, blocksize: int, root: Path | None = None) -> tuple[str, list[Any]]:
    """The input's format and partitions: CSV blocks of ``blocksize`` bytes at line ends, or Parquet row groups."""
    source = resolve(data_path(params), root)
    files = list_files(source)
    fmt = file_format(files, params.format, source)
    if fmt == PARQUET:
        return fmt, parquet_parts(files, source)
    count = sum(-(-max(file.size, 1) // blocksize) for file in files)
    if count > MAX_PARTITIONS:
        raise UserError(
            f"params.yaml: preprocess.dask.blocksize: {blocksize} bytes cut {source.shown} into {count} partitions "
            f"(at most {MAX_PARTITIONS}); raise it (e.g. 64MiB)"
        )
    blocks: list[Any] = []
    for file in files:
        for offset in range(0, max(file.size, 1), blocksize):
            blocks.append(Block(file.url, offset, blocksize, len(blocks), source.options))
    return fmt, blocks


# -- reading a Parquet partition, on a worker ------------------------------------------------------------------------
def read_parquet_part(part: ParquetPart, columns: list[str] | None) -> pd.DataFrame:
    """The rows of ``part`` with only ``columns`` of the file (all when it has none of them), labelled from 0."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fsspec.open(part.path, "rb", **part.options) as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            usecols = [c for c in names if data.matches(c, columns)] if columns is not None else None
            table = pf.read_row_group(part.row_group, columns=usecols or None)
    except pa.ArrowException as exc:
        raise UserError(f"{part.name}: cannot read row group {part.row_group} as Parquet: {exc}") from None
    except OSError as exc:
        raise UserError(f"{part.name}: cannot read it ({type(exc).__name__})") from None
    return table.to_pandas()


_LINES = re.compile(r"\blines (\d+)( \([^)]*\))? and (\d+)( \([^)]*\))?")  # with each one's file, for several
_LINE = re.compile(r"\bline (\d+)")


def on_partitions(params: DataParams, blocksize: int, work: Callable[[list[Any]], T]) -> T:
    """``work`` on the input's :func:`partitions`; on a Parquet input, its one-line errors name rows, not lines."""
    fmt, parts = partitions(params, blocksize)
    try:
        return work(parts)
    except UserError as exc:
        if fmt != PARQUET:
            raise
        raise UserError(rows_not_lines(str(exc))) from None  # a Parquet file has rows, not lines


def rows_not_lines(message: str) -> str:
    """A message of the CSV checks about a Parquet input: its row numbers (1 = a file's first row) for the lines
    the CSV would have had (line = row + 1: the header)."""
    message = _LINES.sub(lambda m: f"rows {int(m[1]) - 1}{m[2] or ''} and {int(m[3]) - 1}{m[4] or ''}", message)
    return _LINE.sub(lambda m: f"row {int(m[1]) - 1}", message)

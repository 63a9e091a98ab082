"""A stage's outputs, each written atomically; readers of the files between stages; CSV rows' lines for messages."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmentation.errors import UserError

# data.load_csv leaves in DataFrame.attrs the LineLocator of the file a frame came from.
SOURCE_ATTR = "segmentation_csv"
_NEWLINE = re.compile(r"\r\n|\r|\n")
PARQUET = ".parquet"
FAST_CSV_ROWS = 100_000


def temp_file_beside(path: str | Path, folder: bool = False) -> Path:
    """A new empty file (a folder if ``folder``) named like ``path``, in a new hidden folder ``.<name>.*.tmp`` beside
    it: the same filesystem, so that a rename puts it in place; the same name, so that it can be logged first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    tmp.mkdir() if folder else tmp.touch()  # the usual permissions (umask), not mkdtemp's 0o700
    return tmp


temp_dir_beside = functools.partial(temp_file_beside, folder=True)  # a folder, put in place by StageOutputs.adopt


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_temp(tmp: str | Path) -> None:
    """Remove a temporary output of :func:`temp_file_beside` and its hidden folder."""
    tmp = Path(tmp)
    with contextlib.suppress(OSError):  # gone already (committed)
        _remove(tmp)
    with contextlib.suppress(OSError):  # not empty: someone else's file, left alone
        tmp.parent.rmdir()


def _rebuild(stage: str | None) -> str:
    return f"dvc repro -f -s {stage}" if stage else "dvc repro -f"


class StageOutputs:
    """A stage's outputs, each written to a temporary file beside its target (readable, e.g. to log it, through
    :meth:`staged`), then renamed into place by :meth:`commit`: no file is ever half-written. A context manager."""

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # target -> temporary file
        self._scratch: list[Path] = []

    def __enter__(self) -> StageOutputs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()
        for folder in self._scratch:
            shutil.rmtree(folder, ignore_errors=True)

    def scratch(self, prefix: str) -> Path:
        """A temporary folder for files logged but not outputs (an MLflow model), removed when this context ends."""
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        self._scratch.append(folder)
        return folder

    def path(self, target: str | Path, replaces_folder: bool = False) -> Path:
        """A temporary file for ``target``'s new content; a folder there is an error unless ``replaces_folder``."""
        target = Path(target)
        if target in self._staged:
            return self._staged[target]
        if target.is_dir() and not replaces_folder:
            raise UserError(f"{target}: is a directory, expected a file; remove it and run again")
        try:
            self._staged[target] = temp_file_beside(target)
        except OSError as exc:
            raise UserError(f"{target}: cannot write ({exc.strerror})") from None
        return self._staged[target]

    def write_json(self, target: str | Path, data: dict[str, Any]) -> None:
        """Indented JSON (keys in insertion order, for readable diffs)."""
        self.write_text(target, json.dumps(data, indent=2) + "\n")

    def write_text(self, target: str | Path, text: str, replaces_folder: bool = False) -> None:
        """A text file (UTF-8, ``\\n`` line ends on every platform)."""
        self._write(target, lambda tmp: tmp.write_bytes(text.encode("utf-8")), replaces_folder)

    def write_manifest(self, target: str | Path, text: str) -> None:
        """A table's manifest (the Dask engine's object storage); it may replace a partitioned table."""
        self.write_text(target, text, replaces_folder=True)

    def write_csv(self, target: str | Path, df: pd.DataFrame) -> None:
        """CSV without the index (floats round-trip exactly)."""
        self._write(target, lambda tmp: write_csv(tmp, df))

    def write_table(self, target: str | Path, df: pd.DataFrame) -> None:
        """A table between stages: Parquet for a ``.parquet`` target (it may replace a partitioned table), else CSV."""
        if Path(target).suffix == PARQUET:
            self._write(target, lambda tmp: write_parquet(tmp, df), replaces_folder=True)
        else:
            self.write_csv(target, df)

    def adopt(self, target: str | Path, folder: str | Path) -> None:
        """Put ``folder`` (from :func:`temp_dir_beside` or :func:`temp_file_beside`) in place as ``target``."""
        target = Path(target)
        if target in self._staged:
            remove_temp(self._staged[target])
        self._staged[target] = Path(folder)

    def dump_model(self, target: str | Path, obj: Any) -> None:
        """A fitted estimator, pickled with joblib."""
        import joblib

        self._write(target, lambda tmp: joblib.dump(obj, str(tmp)))

    def save_figure(self, target: str | Path, fig: Any, dpi: int) -> None:
        """A matplotlib figure as PNG (then closed)."""
        import matplotlib.pyplot as plt

        def save(tmp: Path) -> None:
            # bbox_inches="tight" draws the figure once to measure it: the same box measured without drawing.
            fig.set_dpi(dpi)
            box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
            # No Software version in the PNG: the same bytes across matplotlib patch releases.
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=box, metadata={"Software": None})

        try:
            self._write(target, save)
        finally:
            plt.close(fig)

    def _write(self, target: str | Path, write, replaces_folder: bool = False) -> None:
        tmp = self.path(target, replaces_folder)
        try:
            write(tmp)
        except OSError as exc:  # a full disk, a quota, an I/O error: the user's to fix
            raise UserError(f"{target}: cannot write ({exc.strerror or exc})") from None

    def commit(self) -> None:
        """Rename each staged file into place (a folder where one is involved: the old one removed first)."""
        for target, tmp in list(self._staged.items()):
            try:
                if (tmp.is_dir() or target.is_dir()) and (target.exists() or target.is_symlink()):
                    _remove(target)  # os.replace cannot replace a folder, nor a file by a folder
                os.replace(tmp, target)
            except OSError as exc:
                raise UserError(f"{target}: cannot replace ({exc.strerror})") from None
            remove_temp(tmp)
            del self._staged[target]

    def discard(self) -> None:
        """Remove the temporary files that were not committed."""
        for tmp in self._staged.values():
            remove_temp(tmp)
        self._staged.clear()

    def staged(self, target: str | Path) -> Path | None:
        """The file holding ``target``'s new content until the commit (None if ``target`` is not an output)."""
        return self._staged.get(Path(target))


@dataclass(frozen=True)
class LineLocator:
    """Physical lines of a raw CSV's rows (label 0 = first data row) and values, for messages: the file (as pandas
    read it) is scanned when a message needs one; without a file, row ``label`` is on line ``label + 2``."""

    path: str | None = None
    separator: str = ","
    encoding: str = "utf-8"
    rows: int = 0  # as many as pandas read

    @classmethod
    def of(cls, df: pd.DataFrame) -> LineLocator:
        """The locator :func:`segmentation.core.data.load_csv` left in ``df.attrs`` (index + 2 for any other)."""
        found = df.attrs.get(SOURCE_ATTR)
        return found if isinstance(found, LineLocator) else cls()

    def line(self, label: Any, column: str | None = None) -> int:
        """The physical line of row ``label`` (of its value in ``column`` when given)."""
        row = int(label)
        if self._scan is None or not 0 <= row < len(self._scan[0]):
            return row + 2
        starts, header, extra = self._scan
        return starts[row] + (extra[row][header.index(column)] if row in extra and column in header else 0)

    @functools.cached_property
    def _scan(self) -> tuple[list[int], list[str], dict[int, list[int]]] | None:
        """Each row's first line, the header, and for a row spanning lines the newlines before each of its fields."""
        if self.path is None or len(self.separator) != 1:  # a regex separator: pandas' python engine, not csv's
            return None
        starts: list[int] = []
        header: list[str] | None = None
        extra: dict[int, list[int]] = {}
        try:
            with open(self.path, encoding=self.encoding, newline="") as fh:
                reader = csv.reader(fh, delimiter=self.separator, quotechar='"', doublequote=True)
                before = 0
                for fields in reader:
                    first, before = before + 1, reader.line_num
                    if not fields or (len(fields) == 1 and not fields[0].strip()):
                        continue  # pandas skips blank lines
                    if header is None:
                        header = fields
                        continue
                    if before > first:
                        extra[len(starts)] = np.cumsum([0, *(len(_NEWLINE.findall(f)) for f in fields[:-1])]).tolist()
                    starts.append(first)
        except (OSError, UnicodeError, csv.Error):
            return None
        return (starts, header or [], extra) if len(starts) == self.rows else None  # else not read as pandas read it


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    """``df`` as CSV without the index, ``\\n`` line ends; a large all-integer table (segments) by pyarrow's writer,
    ~7x faster than pandas and byte-identical."""
    simple_names = all(isinstance(c, str) and not any(ch in c for ch in ',"\n\r') for c in df.columns)
    if len(df) >= FAST_CSV_ROWS and simple_names and all(pd.api.types.is_integer_dtype(t) for t in df.dtypes):
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        table = pa.Table.from_pandas(df, preserve_index=False)
        with open(path, "wb") as fh:
            fh.write((",".join(df.columns) + "\n").encode("utf-8"))
            options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
            pa_csv.write_csv(table, fh, write_options=options)
        return
    df.to_csv(path, index=False, lineterminator="\n")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    """``df`` as Parquet without its index; the same frame gives the same bytes (no timestamps in the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain_df = df.copy(deep=False)
    plain_df.attrs = {}  # pandas would try to store them (a LineLocator) in the file's metadata
    pq.write_table(pa.Table.from_pandas(plain_df, preserve_index=False), path, compression="zstd")


def plain(value: Any) -> Any:
    """A numpy scalar (or 0-d array) as the Python value it holds: ``5524``, not ``np.int64(5524)``."""
    return value.item() if isinstance(value, np.generic) or getattr(value, "shape", None) == () else value


def _existing_file(path: str | Path, stage: str | None, folder_ok: bool = False) -> Path:
    """``path``; missing, or a directory (unless ``folder_ok``), it is a :class:`UserError` saying how to rebuild it."""
    path = Path(path)
    if path.is_dir() and not folder_ok:
        rebuild = f"dvc repro -f -s {stage}" if stage else "dvc repro"
        raise UserError(f"{path}: is a directory, not a file written by the pipeline; remove it, then: {rebuild}")
    if not (path.is_file() or (folder_ok and path.is_dir())):
        raise UserError(f"{path}: not found; run the earlier stages first (dvc repro)")
    return path


def read_csv(path: str | Path, stage: str | None = None) -> pd.DataFrame:
    """Read a table a previous stage (``stage``, named in the fix) wrote: Parquet (a folder: partitioned) for a
    ``.parquet`` path, else CSV; a missing or unreadable file is a :class:`UserError`."""
    path = _existing_file(path, stage, folder_ok=Path(path).suffix == PARQUET)
    if path.suffix == PARQUET:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # A partitioned table: its parts in order (their names are zero-padded numbers).
            parts = sorted(path.glob(f"*{PARQUET}")) if path.is_dir() else [path]
            return pa.concat_tables([pq.read_table(part) for part in parts]).to_pandas()
        except (pa.ArrowException, OSError, ValueError):  # ArrowInvalid: a folder without parts
            raise UserError(
                f"{path}: not a Parquet file written by the pipeline; rebuild it: {_rebuild(stage)}"
            ) from None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = "empty" if isinstance(exc, pd.errors.EmptyDataError) else "not a CSV file written by the pipeline"
        raise UserError(f"{path}: {reason}; rebuild it: {_rebuild(stage)}") from None


def read_matrix(path: str | Path, stage: str = "preprocess") -> pd.DataFrame:
    """Read the model matrix (an ID column, then numbers); a value that is no finite number is a :class:`UserError`."""
    matrix = read_csv(path, stage)
    rebuild = f"rebuild it: dvc repro -f -s {stage}"
    if matrix.shape[1] < 2 or matrix.empty:
        raise UserError(f"{path}: expected an ID column and model columns with rows; {rebuild}")
    for column in matrix.columns[1:]:
        series = matrix[column]
        if pd.api.types.is_float_dtype(series) and not pd.api.types.is_extension_array_dtype(series):
            values = series.to_numpy()  # already numbers: no conversion, no copy (10M rows: 80 MB a column)
        else:
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if np.isfinite(values).all():
            continue
        bad = np.flatnonzero(~np.isfinite(values))[0]
        value = "a blank" if pd.isna(series.iloc[bad]) else repr(plain(series.iloc[bad]))
        lines = LineLocator(str(path), rows=len(matrix))
        where = f"row {bad + 1}" if Path(path).suffix == PARQUET else f"line {lines.line(bad, str(column))}"
        raise UserError(
            f"{path}: column {column} has {value} on {where} (the model matrix must be finite numbers); {rebuild}"
        )
    return matrix


def load_model(path: str | Path, stage: str | None = None) -> Any:
    """Load a joblib pickle written by a previous stage (``stage``, named in the fix when it cannot be read)."""
    import joblib

    path = _existing_file(path, stage)
    try:
        return joblib.load(path)
    except Exception as exc:  # a corrupt or foreign file fails in many ways (EOFError, KeyError, UnpicklingError...)
        raise UserError(
            f"{path}: cannot be read as a model file ({type(exc).__name__}); rebuild it: {_rebuild(stage)}"
        ) from None

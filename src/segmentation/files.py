"""Files: atomic output writers (a failed stage leaves no half-written file behind), readers of intermediate files,
physical line numbers of CSV rows for messages."""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from segmentation.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
# data.load_csv notes in DataFrame.attrs which file a frame came from; LineLocator reads it to name physical lines.
SOURCE_ATTR = "segmentation_csv"
_NEWLINE = re.compile(r"\r\n|\r|\n")


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


@dataclass(frozen=True)
class CsvSource:
    """The file a frame was read from, as ``load_csv`` read it (kept in ``DataFrame.attrs``)."""

    path: str
    separator: str
    encoding: str
    rows: int


@dataclass
class LineLocator:
    """Physical line numbers of a raw CSV's rows and values, for error messages.

    Row labels are the positions ``load_csv`` gave them (0 = first data row). Without a known file, or when the file
    cannot be re-read the way pandas read it, a row is on line ``label + 2`` (header on line 1, one line per row).
    With the file, quoted fields that hold newlines and skipped blank lines are counted: the file is re-scanned once,
    only when a message needs a line.
    """

    source: CsvSource | None = None
    _starts: list[int] | None = field(default=None, repr=False)
    _header: list[str] = field(default_factory=list, repr=False)
    _extra: dict[int, list[int]] = field(default_factory=dict, repr=False)  # row -> newlines before each field
    _scanned: bool = field(default=False, repr=False)

    @classmethod
    def of(cls, df: pd.DataFrame) -> LineLocator:
        """The locator for a frame returned by :func:`load_csv` (index + 2 for any other frame)."""
        source = df.attrs.get(SOURCE_ATTR)
        return cls(source if isinstance(source, CsvSource) else None)

    def line(self, label: Any, column: str | None = None) -> int:
        """The physical line of row ``label`` (of its value in ``column`` when given)."""
        row = int(label)
        starts = self._scan()
        if starts is None or not 0 <= row < len(starts):
            return row + 2
        offset = 0
        if column is not None and row in self._extra and column in self._header:
            offset = self._extra[row][self._header.index(column)]
        return starts[row] + offset

    def _scan(self) -> list[int] | None:
        if self._scanned or self.source is None:
            return self._starts
        self._scanned = True
        src = self.source
        if len(src.separator) != 1:  # a regex separator: pandas' python engine, not the csv module's dialect
            return None
        starts: list[int] = []
        header: list[str] | None = None
        try:
            with open(src.path, encoding=src.encoding, newline="") as fh:
                reader = csv.reader(fh, delimiter=src.separator, quotechar='"', doublequote=True)
                before = 0
                for fields in reader:
                    first, before = before + 1, reader.line_num
                    if not fields or (len(fields) == 1 and not fields[0].strip()):
                        continue  # pandas skips blank lines
                    if header is None:
                        header = fields
                        continue
                    if before > first:  # the row spans lines: remember where each field starts
                        breaks = np.cumsum([0, *(len(_NEWLINE.findall(f)) for f in fields[:-1])])
                        self._extra[len(starts)] = [int(b) for b in breaks]
                    starts.append(first)
        except (OSError, UnicodeError, csv.Error):
            return None
        if len(starts) != src.rows:  # not read as pandas read it: do not guess
            return None
        self._header, self._starts = header or [], starts
        return starts


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, so that messages show ``5524``, not ``np.int64(5524)``."""
    return value.item() if isinstance(value, np.generic) else value


def _existing_file(path: str | Path, stage: str | None) -> Path:
    """``path`` as a Path; a missing path or a directory is a :class:`UserError` that says how to rebuild it."""
    path = Path(path)
    if path.is_dir():
        rebuild = f"dvc repro -f -s {stage}" if stage else "dvc repro"
        raise UserError(f"{path}: is a directory, not a file written by the pipeline; remove it, then: {rebuild}")
    if not path.is_file():
        raise UserError(f"{path}: not found; run the earlier stages first (dvc repro)")
    return path


def read_csv(path: str | Path, stage: str | None = None) -> pd.DataFrame:
    """Read a CSV written by a previous stage (``stage``, named in the fix); a missing or unreadable file is a
    :class:`~segmentation.errors.UserError`."""
    path = _existing_file(path, stage)
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = "empty" if isinstance(exc, pd.errors.EmptyDataError) else "not a CSV file written by the pipeline"
        rebuild = f"dvc repro -f -s {stage}" if stage else "dvc repro -f"
        raise UserError(f"{path}: {reason}; rebuild it: {rebuild}") from None


def read_matrix(path: str | Path, stage: str = "preprocess") -> pd.DataFrame:
    """Read the model matrix (an ID column, then numeric columns); a blank, text or infinite value is a
    :class:`~segmentation.errors.UserError` naming the column and the line, with the fix."""
    matrix = read_csv(path, stage)
    rebuild = f"rebuild it: dvc repro -f -s {stage}"
    if matrix.shape[1] < 2 or matrix.empty:
        raise UserError(f"{path}: expected an ID column and model columns with rows; {rebuild}")
    for column in matrix.columns[1:]:
        values = pd.to_numeric(matrix[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            lines = LineLocator(CsvSource(str(path), ",", "utf-8", len(matrix)))
            shown = matrix[column].iloc[bad[0]]
            value = "a blank" if pd.isna(shown) else repr(plain(shown))
            raise UserError(
                f"{path}: column {column} has {value} on line {lines.line(bad[0], str(column))} "
                f"(the model matrix must be finite numbers); {rebuild}"
            )
    return matrix


def load_model(path: str | Path, stage: str | None = None) -> Any:
    """Load a joblib pickle written by a previous stage (``stage``, named in the fix when it cannot be read)."""
    path = _existing_file(path, stage)
    try:
        return joblib.load(path)
    except Exception as exc:  # a corrupt or foreign file fails in many ways (EOFError, KeyError, UnpicklingError...)
        rebuild = f"dvc repro -f -s {stage}" if stage else "dvc repro -f"
        raise UserError(
            f"{path}: cannot be read as a model file ({type(exc).__name__}); rebuild it: {rebuild}"
        ) from None

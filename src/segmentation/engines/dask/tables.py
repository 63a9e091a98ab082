"""The pipeline's partitioned tables on a Dask cluster, for the train and evaluate stages on ``preprocess.engine:
dask``: the features and the model matrix as the preprocess stage's Dask engine writes them (a Parquet folder, one
part per partition, parts in the rows' order), loaded part by part into the workers' memory, never whole into the
stage's process.

The stage's process sees a table as a list of futures (one pandas frame or numpy array per part) and the parts' row
counts: from them a dask array (for dask-ml's fits and ``dask.array`` reductions) or a dask DataFrame (for
group-bys), the rows of a seeded sample (the same global row numbers as the local engine draws), or a CSV file
written from the parts in order, one part at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmentation.errors import UserError
from segmentation.files import PARQUET, plain, remove_temp, temp_file_beside

# A distributed drop_duplicates (or value_counts) keeps its result in one partition per this many input parts: the
# distinct rows of 10^8 customers do not fit in one.
PARTS_PER_SPLIT = 8


@dataclass
class Parts:
    """A partitioned table in the cluster's memory: one future per part (a pandas frame), in the rows' order."""

    path: str  # as the stage names it (messages)
    frames: list[Any]  # distributed futures
    rows: list[int]  # rows per part
    meta: pd.DataFrame  # no rows, the columns and their types

    @property
    def columns(self) -> list[str]:
        """The table's columns."""
        return [str(c) for c in self.meta.columns]

    @property
    def total(self) -> int:
        """All rows."""
        return int(sum(self.rows))

    @property
    def offsets(self) -> np.ndarray:
        """The global row number of each part's first row."""
        return np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64)


def part_files(path: str | Path, stage: str) -> list[Path]:
    """The Parquet files of a table written by ``stage``: a folder's parts in name order (zero-padded numbers: the
    rows' order), or the one file; a missing or empty one is a one-line error with the fix."""
    path = Path(path)
    rebuild = f"dvc repro -f -s {stage}"
    if path.suffix != PARQUET:
        raise UserError(f"{path}: preprocess.engine dask reads the tables as Parquet: name it *.parquet in dvc.yaml")
    if path.is_dir():
        parts = sorted(path.glob(f"*{PARQUET}"))
        if not parts:
            raise UserError(f"{path}: not a Parquet file written by the pipeline; rebuild it: {rebuild}")
        return parts
    if not path.is_file():
        raise UserError(f"{path}: not found; run the earlier stages first (dvc repro)")
    return [path]


def read_part(path: str, shown: str, stage: str) -> pd.DataFrame:
    """One part, on a worker (``path`` absolute: a worker has its own working directory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError):
        raise UserError(
            f"{shown}: not a Parquet file written by the pipeline; rebuild it: dvc repro -f -s {stage}"
        ) from None


def load(client: Any, path: str | Path, stage: str) -> Parts:
    """The table at ``path`` (written by ``stage``) read by the workers, one task per part: a Parquet folder or file,
    or a manifest of parts on object storage (``preprocess.dask.tables``:
    :mod:`segmentation.engines.dask.store`, each part
    checked against the manifest's size, ETag and md5)."""
    from segmentation.engines.dask import store as dask_store

    if dask_store.is_manifest(path):
        parts, listed = dask_store.remote_parts(path, stage)
        frames = client.map(dask_store.read_remote_part, parts, pure=False)
    else:
        files = part_files(path, stage)
        frames = client.map(read_part, [str(f.resolve()) for f in files], shown=str(path), stage=stage, pure=False)
        listed = None
    rows = client.gather(client.map(len, frames))
    if listed is not None and [int(n) for n in rows] != listed:
        raise UserError(f"{path}: its parts' rows differ from the manifest's; rebuild it: dvc repro -f -s {stage}")
    meta = client.submit(_empty, frames[0]).result()
    return Parts(str(path), frames, [int(n) for n in rows], meta)


def _empty(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:0]


def dataframe(table: Parts):
    """The table as a dask DataFrame, a partition per part (for Dask's group-bys and reductions)."""
    import dask.dataframe as dd

    return dd.from_delayed(table.frames, meta=table.meta, verify_meta=False)


def distinct_rows(table: Parts) -> int:
    """How many distinct rows the table's columns but the first (the ID) hold: Dask's ``drop_duplicates``."""
    frame = dataframe(table)[table.columns[1:]]
    return len(frame.drop_duplicates(split_out=max(1, len(table.frames) // PARTS_PER_SPLIT)))


# -- the model matrix -----------------------------------------------------------------------------------------------
def _matrix_values(frame: pd.DataFrame) -> np.ndarray:
    return frame.iloc[:, 1:].to_numpy(dtype=float)


def _first_bad(frame: pd.DataFrame) -> tuple[int, str, Any] | None:
    """The first value of a part's model columns that is not a finite number: (row in the part, column, value)."""
    for column in frame.columns[1:]:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            return int(bad[0]), str(column), plain(frame[column].iloc[bad[0]])
    return None


@dataclass
class Matrix:
    """The model matrix in the cluster: its table (ID + model columns) and one float array per part."""

    table: Parts
    blocks: list[Any]  # futures of float64 arrays (the model columns)

    @property
    def width(self) -> int:
        """Model columns."""
        return len(self.table.columns) - 1

    def array(self):
        """The model columns as one dask array, a block per non-empty part."""
        import dask
        import dask.array as da

        pieces = [
            da.from_delayed(dask.delayed(block), shape=(n, self.width), dtype="float64")
            for block, n in zip(self.blocks, self.table.rows, strict=True)
            if n
        ]
        return da.concatenate(pieces)


def load_matrix(client: Any, path: str | Path, stage: str = "preprocess") -> Matrix:
    """The model matrix, checked as :func:`segmentation.files.read_matrix` checks it (an ID column and model
    columns with rows, every value a finite number; the message names the column and the row)."""
    table = load(client, path, stage)
    rebuild = f"rebuild it: dvc repro -f -s {stage}"
    if len(table.columns) < 2 or not table.total:
        raise UserError(f"{path}: expected an ID column and model columns with rows; {rebuild}")
    for offset, found in zip(table.offsets, client.gather(client.map(_first_bad, table.frames)), strict=True):
        if found is not None:
            row, column, value = found
            shown = "a blank" if pd.isna(value) else repr(value)
            raise UserError(
                f"{path}: column {column} has {shown} on row {offset + row + 1} (the model matrix must be finite "
                f"numbers); {rebuild}"
            )
    return Matrix(table, client.map(_matrix_values, table.frames))


# -- rows by number, labels, CSV ------------------------------------------------------------------------------------
def _take(block: Any, positions: np.ndarray) -> Any:
    return block.iloc[positions] if isinstance(block, pd.DataFrame) else block[positions]


def take(client: Any, blocks: list[Any], rows: Sequence[int], idx: np.ndarray | None) -> Any:
    """The rows at the sorted global positions ``idx`` (None: every row) of a table held as ``blocks`` (arrays or
    frames of ``rows`` rows each), concatenated in order: only those rows come to the stage's process."""
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    wanted = []
    for i, block in enumerate(blocks):
        if idx is None:
            positions = np.arange(rows[i])
        else:
            lo, hi = np.searchsorted(idx, [offsets[i], offsets[i + 1]])
            positions = idx[lo:hi] - offsets[i]
        if len(positions):
            wanted.append(client.submit(_take, block, positions, pure=False))
    pieces = client.gather(wanted)
    if isinstance(pieces[0], pd.DataFrame):
        return pd.concat(pieces, ignore_index=True)
    return np.concatenate(pieces)


def sum_of(client: Any, results: list[Any]) -> Any:
    """The sum of the parts' results (numbers or arrays of the same shape), added as they arrive."""
    total = None
    for value in client.gather(results):
        total = value if total is None else total + value
    return total


def _csv_text(frame: pd.DataFrame, header: bool) -> bytes:
    return frame.to_csv(index=False, header=header, lineterminator="\n").encode("utf-8")


def stream_csv(client: Any, frames: list[Any], target: str | Path) -> Path:
    """A CSV file of the parts ``frames`` (pandas frames) in order, as :func:`segmentation.files.write_csv` writes
    the whole table (header once, no index, ``\\n`` line ends): each part's text is made on a worker and appended
    here in order, one part in this process's memory at a time. Written to a new temporary file beside ``target``
    (to adopt as an output); removed if anything fails."""
    texts = [client.submit(_csv_text, frame, header=i == 0, pure=False) for i, frame in enumerate(frames)]
    tmp = temp_file_beside(target)
    try:
        with tmp.open("wb") as fh:
            for i, text in enumerate(texts):
                fh.write(text.result())
                texts[i] = None  # released: the cluster frees the part's text
    except BaseException:
        remove_temp(tmp)
        raise
    return tmp

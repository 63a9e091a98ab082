"""Loading the raw CSV and checking its schema."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from segmentation.config import ROW_ID_COLUMN, DataParams
from segmentation.errors import UserError


def load_csv(params: DataParams) -> pd.DataFrame:
    """Read the raw CSV described by ``params``; a missing, empty or undecodable file is a :class:`UserError`."""
    path = Path(params.path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found (set preprocess.data.path in params.yaml)")
    try:
        df = pd.read_csv(path, sep=params.separator, encoding=params.encoding, quoting=csv.QUOTE_MINIMAL)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: cannot decode as {params.encoding} (byte {exc.start}); set preprocess.data.encoding"
        ) from None
    except LookupError:
        raise UserError(f"{path}: unknown encoding {params.encoding!r} in preprocess.data.encoding") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: cannot parse as CSV with separator {params.separator!r}: {exc}") from None
    if len(df.columns) == 1 and len(params.separator) == 1 and params.separator not in df.columns[0]:
        # One column usually means the wrong separator: say so rather than "column X missing".
        header = str(df.columns[0])[:60]
        if any(sep in header for sep in ("\t", ",", ";", "|")):
            raise UserError(
                f"{path}: only one column found with separator {params.separator!r} "
                f"(header starts {header!r}); set preprocess.data.separator"
            )
    if df.empty:
        raise UserError(f"{path}: no data rows")
    return df


def require_columns(df: pd.DataFrame, columns: Iterable[str], source: str, what: str = "required") -> None:
    """Fail with the list of ``columns`` that ``df`` lacks."""
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise UserError(f"{source}: {what} column(s) missing: {', '.join(missing)}")


def require_numeric(df: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """Fail naming the first non-numeric column and one offending value (blanks are allowed: they are missing)."""
    for col in columns:
        series = df[col]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            continue
        coerced = pd.to_numeric(series, errors="coerce")
        bad = series[coerced.isna() & series.notna()]
        # +2: one for the header line, one because lines count from 1.
        example = f"; e.g. {bad.iloc[0]!r} on line {bad.index[0] + 2}" if len(bad) else ""
        raise UserError(f"{source}: column {col} must be numeric{example}")


def require_unique(df: pd.DataFrame, column: str, source: str) -> None:
    """Fail when ``column`` (the customer ID) has blanks or duplicates."""
    ids = df[column]
    if ids.isna().any():
        raise UserError(f"{source}: ID column {column} has {int(ids.isna().sum())} blank value(s)")
    dupes = ids[ids.duplicated()]
    if len(dupes):
        raise UserError(f"{source}: ID column {column} has duplicates, e.g. {dupes.iloc[0]!r}")


def with_row_id(df: pd.DataFrame, source: str, column: str = ROW_ID_COLUMN) -> pd.DataFrame:
    """Add a ``row_id`` column (1 = the first data row) for a CSV without an ID column (``id_column: null``)."""
    if column in df.columns:
        raise UserError(
            f"{source}: the file already has a column {column}; set preprocess.data.id_column: {column} to use it"
        )
    out = df.copy()
    out.insert(0, column, range(1, len(df) + 1))
    return out


def as_categories(series: pd.Series) -> pd.Series:
    """A categorical column as strings (blanks stay NaN); integral numbers read as floats become '2', not '2.0'."""
    values = series
    if pd.api.types.is_float_dtype(values):
        present = values.dropna()
        if len(present) and (present == present.round()).all():
            values = values.astype("Int64")
    out = values.astype("string").astype(object)
    return out.where(series.notna(), np.nan)


def require_few_categories(df: pd.DataFrame, columns: Iterable[str], limit: int, source: str) -> None:
    """Fail when a column to one-hot encode has more than ``limit`` distinct values (an ID-like column, say)."""
    for col in columns:
        n = df[col].nunique(dropna=True)
        if n > limit:
            raise UserError(
                f"{source}: categorical column {col} has {n} distinct values (more than "
                f"preprocess.categorical.max_categories = {limit}); drop it or raise the limit"
            )

"""Loading the raw CSV and checking its schema."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from segmentation.config import DataParams
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

"""Loading the raw CSV, checking its schema and values; the outlier filter."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmentation.errors import UserError
from segmentation.files import SOURCE_ATTR, LineLocator, plain

ROW_ID_COLUMN = "row_id"  # identifies the rows of a table without an ID column (1 = first data row)
GLOB_CHARS = frozenset("*?[")  # a column pattern with one of them is a glob
BLOCK = 1 << 24  # bytes counted at a time by malformed_rows


def load_csv(
    params: Any, columns: Collection[str] | None = None, *, separator_fix: Callable | None = None, bad_rows_fix=""
) -> pd.DataFrame:
    """Read the raw CSV of ``params`` (a config.DataParams; only the ``columns`` it has); a missing, empty, undecodable
    or malformed file is a :class:`UserError`; ``separator_fix(guess)``, ``bad_rows_fix``: advice for those cases."""
    path = Path(params.path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a CSV file (set preprocess.data.path in params.yaml)")
    if not path.is_file():
        raise UserError(f"{path}: data file not found (set preprocess.data.path in params.yaml)")
    options = {"sep": params.separator, "encoding": params.encoding, "quoting": csv.QUOTE_MINIMAL, "index_col": False}

    def read() -> pd.DataFrame:
        header = [] if columns is None else pd.read_csv(path, nrows=0, **options).columns
        return pd.read_csv(path, usecols=[c for c in header if matches(c, columns)] or None, **options)

    try:
        # The field count is checked beside the read (numpy and pandas' tokenizer release the GIL: 10M rows, 2.6 s
        # of the scan hidden); a file with malformed rows is read again without them, or refused.
        with ThreadPoolExecutor(1) as pool:
            scan = pool.submit(malformed_rows, path, params.separator, params.encoding)
            try:
                df = read()
            except pd.errors.ParserError:  # at a malformed row: the scan names it
                if not scan.result():
                    raise
            bad = scan.result()
        if bad and params.bad_rows == "error":
            line, found, expected = bad[0]
            raise UserError(
                f"{path}: line {line} has {found} fields where the header has {expected} ({len(bad)} such row(s)); fix "
                f"the file, {bad_rows_fix or 'or set preprocess.data.bad_rows: skip to skip them'}"
            )
        if bad:
            options["skiprows"] = [line - 1 for line, *_ in bad]
            df = read()
    except UnicodeDecodeError:
        where = decode_error_position(path, params.encoding)  # pandas' exc.start is an offset into a chunk
        raise UserError(
            f"{path}: cannot decode as {params.encoding}: {where}; set preprocess.data.encoding (e.g. latin-1)"
        ) from None
    except LookupError:
        raise UserError(f"{path}: unknown encoding {params.encoding!r} in preprocess.data.encoding") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: cannot parse as CSV with separator {params.separator!r}: {exc}") from None
    # One column usually means the wrong separator: say so rather than "column X missing".
    if len(df.columns) == 1 and len(params.separator) == 1 and params.separator not in df.columns[0]:
        header = str(df.columns[0])[:60]
        if (guess := next((sep for sep in ("\t", ",", ";", "|") if sep in header), None)) is not None:
            fix = separator_fix(guess) if separator_fix else "set preprocess.data.separator"
            raise UserError(
                f"{path}: only one column found with separator {params.separator!r} (header starts {header!r}); {fix}"
            )
    if df.empty:
        raise UserError(f"{path}: no data rows")
    df.attrs[SOURCE_ATTR] = LineLocator(str(path), params.separator, params.encoding, len(df))
    df.attrs["rows_malformed"] = len(bad)  # skipped (bad_rows: skip)
    return df


def malformed_rows(path: Path, separator: str, encoding: str) -> list[tuple[int, int, int]]:
    """(line, fields, header's fields) of each row whose field count is not the header's: separators counted with
    numpy; the csv module reads the file only when a count differs (quoted separators and newlines)."""
    if len(sep := separator.encode(encoding)) != 1 or "\n".encode(encoding) != b"\n":
        return []  # a regex or wide separator: pandas checks what it can
    counts, rest = [], b""
    with open(path, "rb") as fh:
        while chunk := fh.read(BLOCK):
            end = (block := rest + chunk).rfind(b"\n") + 1
            block, rest = block[:end], block[end:]
            counts.append(line_fields(np.frombuffer(block, np.uint8), sep[0]))
    lines = np.concatenate([*counts, line_fields(np.frombuffer(rest, np.uint8), sep[0])])
    if not (rows := np.flatnonzero(lines)).size or (lines[rows] == lines[rows[0]]).all():
        return []
    bad, header, before = [], None, 0
    with contextlib.suppress(csv.Error), open(path, encoding=encoding, newline="") as fh:  # the exact count, rarely
        for fields in (reader := csv.reader(fh, delimiter=separator, quotechar='"')):
            first, before = before + 1, reader.line_num
            if fields and (len(fields) > 1 or fields[0].strip()):  # pandas skips blank lines
                header = header or len(fields)
                bad += [(first, len(fields), header)] if len(fields) != header else []
    return bad


def line_fields(block: np.ndarray, sep: int) -> np.ndarray:
    """The field count of each line of ``block`` (bytes), 0 for a blank line; a last -1 if some count is unsure."""
    newlines, seps = np.flatnonzero(block == 10), block == sep
    starts = np.r_[0, newlines + 1][: len(newlines) + (block[-1] != 10)] if len(block) else newlines
    ends = np.r_[newlines, len(block)][: len(starts)]
    blank = ends - starts - (block[np.maximum(ends - 1, 0)] == 13) <= 0  # empty but for a \r
    counts = np.add.reduceat(seps.view(np.uint8), starts) if len(starts) else starts  # modulo 256: 5x faster
    fields = np.where(blank, 0, counts.astype(np.int64) + 1)
    return fields if counts.sum(dtype=np.int64) == np.count_nonzero(seps) else np.r_[fields, -1]


def matches(column: str, patterns: Collection[str]) -> bool:
    """True when ``column`` is one of ``patterns`` or matches one of its globs (``Mnt*``; case-sensitive)."""
    return column in patterns or any(GLOB_CHARS & set(p) and fnmatchcase(column, p) for p in patterns)


def expand_columns(patterns: Iterable[str], columns: Iterable[str], setting: str, source: str) -> list[str]:
    """The ``columns`` that ``patterns`` (names or globs) name, each once, in order; one matching none is an error."""
    columns, found = list(columns), []
    for pattern in patterns:
        if not (hits := [c for c in columns if matches(c, [pattern])]):
            raise UserError(f"params.yaml: {setting}: no column {pattern!r} in {source}")
        found += hits
    return list(dict.fromkeys(found))


def decode_error_position(path: Path, encoding: str) -> str:
    """Where the first undecodable byte of ``path`` is: ``byte 0xe9 at offset 1234 (line 17)``."""
    raw = path.read_bytes()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        return f"byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line})"
    return "an undecodable byte"  # pandas failed where a whole-file decode does not: no position to give


def require_columns(df: pd.DataFrame, columns: Iterable[str], source: str, what: str = "required") -> None:
    """Fail with the list of ``columns`` that ``df`` lacks."""
    if missing := [c for c in dict.fromkeys(columns) if c not in df.columns]:
        raise UserError(f"{source}: {what} column(s) missing: {', '.join(missing)}")


def require_numeric(
    df: pd.DataFrame, columns: Iterable[str], source: str, lines: LineLocator | None = None, hint: str = ""
) -> None:
    """Fail naming the first non-numeric column, its first offending value and how many (blanks are missing), then
    ``hint``."""
    lines = lines or LineLocator()
    for col in columns:
        if pd.api.types.is_numeric_dtype(series := df[col]):  # bools too
            continue
        bad = series[pd.to_numeric(series, errors="coerce").isna() & series.notna()]
        example = f"; e.g. {plain(bad.iloc[0])!r} on line {lines.line(bad.index[0], col)}" if len(bad) else ""
        count = f" ({len(bad)} such value(s))" if len(bad) > 1 else ""  # one: the message as it always was
        raise UserError(f"{source}: column {col} must be numeric{example}{count}{hint}")


def require_finite(df: pd.DataFrame, columns: Iterable[str], source: str, lines: LineLocator | None = None,
                   derived: Collection[str] = ()) -> None:  # fmt: skip
    """Fail naming the first column holding ``inf`` or ``-inf`` and the line of one (``derived``: computed columns)."""
    lines = lines or LineLocator()
    for col in columns:
        values = df[col]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            continue
        if len(bad := values[np.isinf(values.to_numpy(dtype=float, na_value=np.nan))]):
            what = f"{col} (derived from other columns: they overflow)" if col in derived else col
            raise UserError(
                f"{source}: column {what} must be finite; {plain(bad.iloc[0])!r} on line "
                f"{lines.line(bad.index[0], None if col in derived else col)} ({len(bad)} such value(s)); "
                "fix or blank the value"
            )


def identify_rows(
    raw: pd.DataFrame, id_column: str | None, source: str, lines: LineLocator
) -> tuple[pd.DataFrame, str]:
    """``raw`` with its ID column (checked: present, no blanks or duplicates) or an added ``row_id``, and its name."""
    if id_column is None:
        return with_row_id(raw, source), ROW_ID_COLUMN
    require_columns(raw, [id_column], source, what="ID")
    ids = raw[id_column]
    if ids.isna().any():
        raise UserError(
            f"{source}: ID column {id_column} has {int(ids.isna().sum())} blank value(s), "
            f"e.g. on line {lines.line(ids.index[ids.isna()][0], id_column)}"
        )
    if len(dupes := ids[ids.duplicated()]):
        first = ids.index[ids == dupes.iloc[0]][0]
        raise UserError(
            f"{source}: ID column {id_column} has duplicates, e.g. {plain(dupes.iloc[0])!r} on lines "
            f"{lines.line(first, id_column)} and {lines.line(dupes.index[0], id_column)}"
        )
    return raw, id_column


def with_row_id(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """``df`` with a first column ``row_id`` (1 = the first data row), for a CSV without an ID column."""
    if ROW_ID_COLUMN in df.columns:
        raise UserError(
            f"{source}: the file already has a column {ROW_ID_COLUMN}; set preprocess.data.id_column: {ROW_ID_COLUMN}"
            " to use it"
        )
    out = df.copy()
    out.insert(0, ROW_ID_COLUMN, range(1, len(df) + 1))
    return out


def as_categories(series: pd.Series) -> pd.Series:
    """A categorical column as strings (blanks stay NaN); integral numbers read as floats become '2', not '2.0'."""
    values = series
    if pd.api.types.is_float_dtype(series) and len(present := series.dropna()) and (present == present.round()).all():
        values = series.astype("Int64")
    return values.astype("string").astype(object).where(series.notna(), np.nan)


def outlier_rows(df: pd.DataFrame, bounds: dict[str, Any]) -> dict[str, pd.Series]:
    """One boolean mask per bounded column: rows outside the inclusive [min, max] range (blanks are not outliers)."""
    masks = {}
    for column, rule in bounds.items():
        values, mask = df[column], pd.Series(False, index=df.index)
        mask |= (values < rule.min) if rule.min is not None else False
        mask |= (values > rule.max) if rule.max is not None else False
        masks[column] = mask.fillna(False).astype(bool)
    return masks


def require_few_categories(df: pd.DataFrame, columns: Iterable[str], limit: int, source: str) -> None:
    """Fail when a column to one-hot encode has more than ``limit`` distinct values (an ID-like column, say)."""
    for col in columns:
        if (n := df[col].nunique(dropna=True)) > limit:
            raise UserError(
                f"{source}: categorical column {col} has {n} distinct values (more than "
                f"preprocess.categorical.max_categories = {limit}); drop it or raise the limit"
            )

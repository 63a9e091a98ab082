"""The Dask engine (``preprocess.engine: dask``): the preprocess stage's steps on partitions, on a Dask cluster.

The same pure functions as the local engine do the work: each partition of the raw CSV (a block of lines, cut where
a line ends, with the header) is parsed by pandas and goes through :func:`segmentation.core.transform.select_rows`
(checks, recipe, missing and outlier filters) on a worker. What only the whole table can tell is then checked from
the partitions' summaries (row counts summed exactly, blank columns, too few rows) or with Dask (unique IDs, by a
distributed ``value_counts``). A generated ``row_id`` (``id_column: null``) is numbered within each partition, then
shifted by the rows read in the partitions before it. The medians (``missing: median``) come from Dask sorts, the
one-hot columns' categories from a distributed ``value_counts``; dask-ml fits the scaler and the PCA; all these
statistics are put into the ordinary scikit-learn transformer that the local engine fits
(``models/preprocessor.joblib``: the segmenter and ``make score`` transform pandas rows with it), and the workers
compute the model matrix with that transformer. The features and the matrix are written as partitioned Parquet: a
folder at the output's path, one part per partition.

The cluster is the one at ``DASK_SCHEDULER_ADDRESS`` or, when it is unset, a ``LocalCluster`` of worker processes
listening on 127.0.0.1 only, started for the stage and stopped after it
(:mod:`segmentation.engines.dask.cluster`, shared
with the train and evaluate stages).
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dask.utils import parse_bytes

from segmentation import recipes
from segmentation.config import ROW_ID_COLUMN, DataParams, PreprocessParams
from segmentation.core import data
from segmentation.core.transform import (
    build_transformer,
    matrix_names,
    model_columns,
    onehot_columns,
    output_table,
    require_enough_rows,
    require_values,
    select_rows,
    single_value_message,
)
from segmentation.engines.dask import sources as dask_sources
from segmentation.engines.dask import store as dask_store
from segmentation.engines.dask.cluster import SCHEDULER_ENV as SCHEDULER_ENV  # re-exported: the engine's public names
from segmentation.engines.dask.cluster import dask_client as dask_client
from segmentation.engines.dask.params import dask_params
from segmentation.engines.dask.sources import Block as Block  # re-exported: the engine's public names
from segmentation.engines.dask.store import PART_NAME as PART_NAME  # re-exported: make score's parts are named alike
from segmentation.errors import UserError
from segmentation.files import PARQUET, LineLocator, plain, temp_dir_beside, write_parquet

LOCAL_URL = "file://"


# -- the raw CSV in partitions --------------------------------------------------------------------------------------
def _open(block: Block):
    import fsspec

    try:
        return fsspec.open(block.path, "rb", **block.options).open()
    except OSError as exc:  # a file gone or storage refusing a worker: one line, without the options
        raise UserError(f"{block.name}: cannot read it ({type(exc).__name__})") from None


def read_block(block: Block, params: DataParams, columns: list[str] | None) -> pd.DataFrame:
    """The rows of ``block`` as pandas reads them (``params``' separator and encoding; only ``columns`` of the
    header, all when it has none of them), with row labels counted from 0 within the block."""
    from fsspec.utils import read_block as fs_read_block

    with _open(block) as fh:
        header = fh.readline()
        body = fs_read_block(fh, block.offset, block.length, delimiter=b"\n")
    text = body if block.offset == 0 else header + body
    options = {"sep": params.separator, "encoding": params.encoding, "quoting": csv.QUOTE_MINIMAL}
    where = f"{block.name} (partition {block.number})"
    try:
        usecols = None
        if columns is not None:  # as data.load_csv: only the columns used, all when the header has none of them
            names = pd.read_csv(io.BytesIO(header), nrows=0, **options).columns
            usecols = [c for c in names if data.matches(c, columns)] or None
        return pd.read_csv(io.BytesIO(text), usecols=usecols, **options)
    except UnicodeDecodeError:
        raise UserError(f"{where}: cannot decode as {params.encoding}; set preprocess.data.encoding") from None
    except LookupError:
        raise UserError(f"{block.name}: unknown encoding {params.encoding!r} in preprocess.data.encoding") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{block.name}: file is empty") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{where}: cannot parse as CSV with separator {params.separator!r}: {exc}") from None


def rows_before(block: Block) -> int:
    """How many data rows of its file come before ``block`` (lines before its first line, less the header).

    Only on the way to an error message: it reads the file up to the block."""
    from fsspec.utils import seek_delimiter

    if isinstance(block, dask_sources.ParquetPart):
        return block.rows_before
    if block.offset == 0:
        return 0
    with _open(block) as fh:
        fh.seek(block.offset)
        seek_delimiter(fh, b"\n", 2**16)
        start, count = fh.tell(), 0
        fh.seek(0)
        while fh.tell() < start:
            chunk = fh.read(min(2**20, start - fh.tell()))
            if not chunk:
                break
            count += chunk.count(b"\n")
    return count - 1


# -- one partition, on a worker -------------------------------------------------------------------------------------
@dataclass
class PartSummary:
    """What the driver learns of one partition (small): the row-wise part's counts and what the global checks need."""

    metrics: dict[str, int]
    blank: list[str]  # model columns blank on every row read
    profiled: list[str]
    dtypes: dict[str, str]  # the kept table's column types (reconciled across partitions before writing)
    id_dtype: str  # the raw ID column's type
    present: dict[str, int]  # model column -> non-blank values among the kept rows
    low: dict[str, Any]  # model column -> smallest kept value (a float or a one-hot column's text; None when none)
    high: dict[str, Any]
    square_sums: dict[str, float]  # feature -> sum of squared kept values (inf: too large to compute with)
    rows_read: int  # the partition's raw rows: the generated row_id of the next partition's rows starts after them
    # one-hot column -> its distinct values on the rows read (before any filter, as the local engine's limit counts
    # them); at most max_categories each, checked per partition
    categories: dict[str, list[Any]]


def prepare_block(
    block: Block, params: PreprocessParams, columns: list[str], profile_columns: list[str], source: str
) -> tuple[pd.DataFrame, pd.Series, PartSummary]:
    """One partition through the row-wise part of preprocess: its kept rows, its raw IDs, its summary.

    A check that fails is one :class:`UserError` naming the file's physical line: the partition is then labelled
    with its rows' numbers in the file (read up to the block) and checked again for the message.
    """
    if isinstance(block, dask_sources.ParquetPart):
        raw = dask_sources.read_parquet_part(block, columns)
    else:
        raw = read_block(block, params.data, columns)
    if raw.empty:  # a block in which no line starts: its columns typed as a non-empty part's would be
        text = set(params.categorical.columns)
        if params.recipe is not None:
            text.update(recipes.get(params.recipe).text_inputs(params.recipe_params))
        raw = raw.astype({c: "float64" for c in raw.columns if c not in text})
    try:
        return _prepare(raw, params, profile_columns, source)
    except UserError:
        raw.index = pd.RangeIndex(rows_before(block), rows_before(block) + len(raw))
        _prepare(raw, params, profile_columns, source)  # raises again, now naming the file's line
        raise


def _prepare(
    raw: pd.DataFrame, params: PreprocessParams, profile_columns: list[str], source: str
) -> tuple[pd.DataFrame, pd.Series, PartSummary]:
    lines = LineLocator()  # row label + 2 = the line (header on line 1)
    # The data's ID (present, no blanks, unique within the partition) or a row_id numbered 1.. within the partition:
    # the driver shifts it by the rows of the partitions before (number_rows) once every partition has been read.
    raw, id_col = data.identify_rows(raw, params.data.id_column, source, lines)
    rows = select_rows(raw, params, id_col, source, lines, profile_columns, distinct=True)
    table = rows.table
    used = model_columns(params)
    with np.errstate(over="ignore", invalid="ignore"):
        squares = {c: float(np.nansum(np.square(table[c].to_numpy(dtype=float)))) for c in params.features}
    summary = PartSummary(
        metrics=rows.metrics,
        blank=rows.blank,
        profiled=rows.profiled,
        dtypes={c: str(t) for c, t in table.dtypes.items()},
        id_dtype=str(raw[id_col].dtype),
        present={c: int(table[c].notna().sum()) for c in used},
        low={c: _extreme(table[c], "min") for c in used},
        high={c: _extreme(table[c], "max") for c in used},
        square_sums=squares,
        rows_read=len(raw),
        categories=rows.categories,
    )
    return table, raw[id_col], summary


def _extreme(column: pd.Series, which: str) -> Any:
    """The smallest or largest present value of ``column`` (a number as float, text as is), None when none."""
    present = column.dropna()
    if present.empty:
        return None
    value = getattr(present, which)()
    return float(value) if pd.api.types.is_numeric_dtype(present) else value


def reconcile(table: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """``table`` with the column types every partition gets (:func:`common_dtypes`)."""
    out = table.copy(deep=False)
    for column, dtype in dtypes.items():
        if str(out[column].dtype) == dtype:
            continue
        out[column] = data.as_categories(out[column]) if dtype == "object" else out[column].astype(dtype)
    return out


def common_dtypes(summaries: list[PartSummary]) -> dict[str, str]:
    """One type per column for all partitions, as pandas would infer it for the whole file: the one type they
    share; numbers of several kinds (integers in one part, floats where another has blanks) as float64; text in any
    part as text (object). Empty partitions have no say."""
    voters = [s for s in summaries if s.metrics["rows_out"]] or summaries[:1]
    common: dict[str, str] = {}
    for column in voters[0].dtypes:
        kinds = {s.dtypes[column] for s in voters}
        if len(kinds) == 1:
            common[column] = kinds.pop()
        elif all(_numeric(k) for k in kinds):
            common[column] = "float64"
        else:
            common[column] = "object"
    return common


def _numeric(dtype: str) -> bool:
    """A numpy number type (bool aside: pandas reads a column of true/false and numbers as text)."""
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return False
    return kind in "iuf"


def transform_part(
    table: pd.DataFrame, block: Block, transformer: Any, used: list[str], id_col: str, names: list[str], source: str
) -> pd.DataFrame:
    """The model matrix of one partition's kept rows: its IDs and the fitted transformer's output."""
    if table.empty:
        return pd.concat([table[[id_col]], pd.DataFrame(columns=names, dtype="float64")], axis=1)
    values = transformer.transform(table[used])
    bad = ~np.isfinite(values)
    if bad.any():  # not expected after the checks: a clear stop rather than NaN in the matrix
        row, col = np.argwhere(bad)[0]
        line = rows_before(block) + int(table.index[row]) + 2
        raise UserError(
            f"{source}: preprocessing the row on line {line} of {block.name} gave a non-finite value "
            f"(column {col + 1} of the model matrix); check that row's values"
        )
    return pd.concat([table[[id_col]].reset_index(drop=True), pd.DataFrame(values, columns=names)], axis=1)


def write_part(table: pd.DataFrame, folder: str, number: int) -> int:
    """Write one partition as ``folder/part.NNNNN.parquet`` (as the local engine writes a whole table)."""
    write_parquet(Path(folder) / PART_NAME.format(number), table)
    return len(table)


# -- the whole input, from the driver -------------------------------------------------------------------------------
@dataclass
class DaskPreprocess:
    """The Dask engine's outputs: the features and the matrix written as Parquet folders (to commit), the fitted
    scikit-learn transformer, the row counts, the matrix's columns."""

    features_dir: Path | None
    matrix_dir: Path | None
    transformer: Any
    metrics: dict[str, int]
    matrix_columns: int
    partitions: int
    # preprocess.dask.tables set: the features' and the matrix's manifests (the parts are on object storage) instead
    # of the folders
    manifests: tuple[str, str] | None = None


def write_to_store(client: Any, tables: str, features: list[Any], matrices: list[Any]) -> tuple[str, str]:
    """The workers write the features' and the matrix's parts under a new run-unique prefix of ``tables``
    (:mod:`segmentation.engines.dask.store`); the two manifests. On any failure the run's parts are removed (no manifest
    points at them) and nothing is left to commit."""
    destinations = dask_store.run_destinations(tables, ["features", "matrix"])
    try:
        texts = []
        for where, frames in zip(destinations, (features, matrices), strict=True):
            records = client.gather(
                client.map(dask_store.write_remote_part, frames, [where] * len(frames), range(len(frames)), pure=False)
            )
            schema = client.submit(_empty_frame, frames[0]).result()
            texts.append(dask_store.manifest_text(where, records, schema))
    except BaseException:
        for where in destinations:
            dask_store.remove_run(where)
        raise
    return texts[0], texts[1]


def _empty_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:0]


def preprocess_on_dask(
    client: Any,
    params: PreprocessParams,
    columns: list[str],
    profile_columns: list[str],
    features_path: str | Path,
    matrix_path: str | Path,
) -> DaskPreprocess:
    """Preprocess ``params.data.path`` (CSV or Parquet: a file, a folder or a glob, local or on S3, see
    :mod:`segmentation.engines.dask.sources`) on the cluster of ``client``; write the features
    and the matrix into new folders beside ``features_path`` and ``matrix_path`` (removed on any failure)."""
    for target in (features_path, matrix_path):
        if Path(target).suffix != PARQUET:
            raise UserError(
                f"{target}: preprocess.engine dask writes partitioned Parquet: name the output *.parquet in dvc.yaml"
            )
    return dask_sources.on_partitions(
        params.data,
        parse_bytes(dask_params(params).blocksize),
        lambda blocks: _preprocess_blocks(client, params, columns, profile_columns, features_path, matrix_path, blocks),
    )


def _preprocess_blocks(
    client: Any,
    params: PreprocessParams,
    columns: list[str],
    profile_columns: list[str],
    features_path: str | Path,
    matrix_path: str | Path,
    blocks: list[Any],
) -> DaskPreprocess:
    source = params.data.path
    parts = client.map(
        prepare_block, blocks, params=params, columns=columns, profile_columns=profile_columns, source=source,
        pure=False,
    )  # fmt: skip
    summaries: list[PartSummary] = client.gather(client.map(_third, parts))
    metrics = {key: sum(s.metrics[key] for s in summaries) for key in summaries[0].metrics}
    id_col = params.data.id_column or ROW_ID_COLUMN
    if params.data.id_column is not None:  # a generated row_id is unique by construction
        id_dtype = next((s.id_dtype for s in summaries if s.metrics["rows_in"]), summaries[0].id_dtype)
        require_unique_ids(client, client.map(_second, parts), blocks, id_col, id_dtype, source)
    require_few_categories(summaries, params, source)
    check_whole(summaries, metrics, params, source)

    used = model_columns(params)
    tables = client.map(reconcile, client.map(_first, parts), dtypes=common_dtypes(summaries))
    if params.data.id_column is None:
        # The local engine numbers the rows read 1..n over the whole input; each partition numbered its own 1..:
        # shifted by the rows read in the partitions before it (a cumulative sum of their counts).
        offsets = np.cumsum([0, *(s.rows_read for s in summaries[:-1])]).tolist()
        tables = client.map(number_rows, tables, offsets)
    outputs = client.map(output_table, tables, params=params, id_col=id_col, profiled=summaries[0].profiled)
    transformer = fit_transformer(client, outputs, [s.metrics["rows_out"] for s in summaries], params)
    names = matrix_names(params, transformer)
    matrices = client.map(
        transform_part, tables, blocks, transformer=transformer, used=used, id_col=id_col, names=names, source=source
    )
    tables = dask_params(params).tables
    if tables is not None:
        manifests = write_to_store(client, tables, outputs, matrices)
        return DaskPreprocess(None, None, transformer, metrics, len(names), len(blocks), manifests)
    features_dir, matrix_dir = temp_dir_beside(features_path), temp_dir_beside(matrix_path)
    try:
        numbers = list(range(len(blocks)))
        # absolute: a worker of a cluster started elsewhere has its own working directory
        client.gather(client.map(write_part, outputs, [str(features_dir.resolve())] * len(blocks), numbers))
        client.gather(client.map(write_part, matrices, [str(matrix_dir.resolve())] * len(blocks), numbers))
    except BaseException:
        for folder in (features_dir, matrix_dir):
            shutil.rmtree(folder.parent, ignore_errors=True)
        raise
    return DaskPreprocess(features_dir, matrix_dir, transformer, metrics, len(names), len(blocks))


def check_whole(summaries: list[PartSummary], metrics: dict[str, int], params: PreprocessParams, source: str) -> None:
    """The local engine's checks of the whole table, from the partitions' summaries: a model column blank on every
    row (before and after dropping outliers), too few rows left, values too large to compute with, one distinct
    row."""
    used = model_columns(params)
    blank = [c for c in used if all(c in s.blank for s in summaries)]
    require_values(used, blank, metrics["rows_in"], params, source)
    require_enough_rows(metrics["rows_out"], params, source)
    if metrics["dropped_outliers"]:
        empty = [c for c in used if sum(s.present[c] for s in summaries) == 0]
        require_values(used, empty, metrics["rows_out"], params, source, after=" left after dropping outliers")
    require_computable_sums(summaries, params.features, source)
    low = {c: min((s.low[c] for s in summaries if s.low[c] is not None), default=None) for c in used}
    high = {c: max((s.high[c] for s in summaries if s.high[c] is not None), default=None) for c in used}
    if all(low[c] == high[c] for c in used):
        raise UserError(single_value_message(used, metrics["rows_out"], source))


def number_rows(table: pd.DataFrame, offset: int) -> pd.DataFrame:
    """``table`` with its generated ``row_id`` (1.. within its partition) shifted by ``offset`` rows."""
    return table.assign(**{ROW_ID_COLUMN: table[ROW_ID_COLUMN] + offset})


def require_few_categories(summaries: list[PartSummary], params: PreprocessParams, source: str) -> None:
    """As the local engine, fail when a one-hot column has more than ``max_categories`` distinct values on the rows
    read: each partition checked its own, here the union of theirs (each at most ``max_categories`` values)."""
    for column in onehot_columns(params):
        union = list(dict.fromkeys(v for s in summaries for v in s.categories[column]))
        data.require_few_categories(
            pd.DataFrame({column: pd.Series(union, dtype=object)}), [column], params.categorical.max_categories, source
        )


def _first(part):
    return part[0]


def _second(part):
    return part[1]


def _third(part):
    return part[2]


def require_unique_ids(client: Any, ids: list[Any], blocks: list[Block], column: str, dtype: str, source: str) -> None:
    """Fail, as the local engine does, when an ID appears in more than one partition (each partition has checked
    its own): a distributed ``value_counts``; the message names the first duplicate and its two lines."""
    import dask.dataframe as dd

    series = dd.from_delayed(ids, meta=pd.Series(name=column, dtype=dtype), verify_meta=False)
    counts = series.value_counts(split_out=max(1, len(ids) // 8))  # stays partitioned: IDs may be 10^8
    dupes = client.compute(counts[counts > 1].head(1, npartitions=-1, compute=False)).result()
    if dupes.empty:
        return
    value = dupes.index[0]
    found = client.gather(client.map(_positions, ids, value=value))
    where = [(i, p) for i, positions in enumerate(found) for p in positions][:2]
    several = blocks[0].path != blocks[-1].path  # a glob of files: each line with its file
    lines = [f"{rows_before(blocks[i]) + p + 2}" + (f" ({blocks[i].name})" if several else "") for i, p in where]
    raise UserError(
        f"{source}: ID column {column} has duplicates, e.g. {plain(value)!r} on lines {lines[0]} and {lines[1]}"
    )


def _positions(ids: pd.Series, value: Any) -> list[int]:
    return [int(p) for p in np.flatnonzero((ids == value).to_numpy())]


def _values(table: pd.DataFrame, columns: list[str], imputer: Any = None) -> np.ndarray:
    if imputer is not None:  # the fitted SimpleImputer: blanks replaced by the medians, as in the transformer
        return np.asarray(imputer.transform(table[columns]), dtype="float64")
    return table[columns].to_numpy(dtype="float64")


def require_computable_sums(summaries: list[PartSummary], columns: list[str], source: str) -> None:
    """As :func:`segmentation.core.transform.require_computable`, from the partitions' sums of squares (without the
    line of the largest value: finding it would take another pass)."""
    with np.errstate(over="ignore"):
        for col in columns:
            if not np.isfinite(sum(s.square_sums[col] for s in summaries)):
                raise UserError(
                    f"{source}: column {col}: values too large to compute with (their squares overflow float64); "
                    "fix them or bound the column in preprocess.outliers"
                )


def fit_transformer(client: Any, tables: list[Any], sizes: list[int], params: PreprocessParams):
    """The local engine's scikit-learn transformer (:func:`build_transformer`), its statistics computed on all kept
    rows: the medians (``missing: median``, :func:`exact_medians`), the one-hot columns' categories and most frequent
    values (:func:`category_counts`), then by dask-ml ``StandardScaler`` (mean, variance) and ``PCA`` (exact SVD by
    tall-skinny QR).

    The transformer is first fitted on a few partitions' rows for its structure (column names, shapes; every
    category put in, so the encoder finds the whole input's categories in its own order), then given the whole
    input's statistics; PCA's component signs follow scikit-learn's rule (each component's largest coefficient
    positive), so the matrix matches the local engine's up to rounding.
    """
    used, onehot = model_columns(params), onehot_columns(params)
    nonempty = [(t, n) for t, n in zip(tables, sizes, strict=True) if n]
    futures = [t for t, _ in nonempty]
    medians = exact_medians(client, futures, list(params.features)) if params.missing == "median" else None
    counts = category_counts(client, futures, onehot)
    categories = {c: sorted(counts[c].index) for c in onehot}  # OneHotEncoder's order: sorted(set(values))

    # enough rows for the PCA's shapes and for every category of each one-hot column
    needed = max([params.pca_components or 1, *(len(v) for v in categories.values())])
    first, rows = 0, 0
    while first < len(nonempty) and rows <= needed:
        rows += nonempty[first][1]
        first += 1
    head = pd.concat(client.gather(futures[:first]))[used]
    if medians is not None:  # no column blank in the structure's rows: the imputer would drop it from the shapes
        head = head.fillna(dict(zip(params.features, medians, strict=True)))
    head = head.assign(**{c: [v[i % len(v)] for i in range(len(head))] for c, v in categories.items()})
    transformer = build_transformer(params)
    transformer.fit(head)
    numeric, categorical = _parts(transformer, params)
    if medians is not None:
        numeric.named_steps["impute"].statistics_ = np.asarray(medians, dtype="float64")
        if onehot:
            categorical.named_steps["impute"].statistics_ = np.array(
                [most_frequent(counts[c]) for c in onehot], dtype=object
            )

    # The model columns as one dask array, a block per partition (a dask DataFrame made from futures loses them on
    # the way to an array in dask 2026.8: "lost dependencies"). Blanks imputed by the fitted imputer.
    imputer = numeric.named_steps["impute"] if medians is not None else None
    values = client.map(_values, futures, columns=list(params.features), imputer=imputer)
    x = _dask_array(values, [n for _, n in nonempty], len(params.features))
    if params.scale:
        from dask_ml.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        step = numeric.named_steps["scale"]
        step.mean_, step.var_, step.scale_ = (np.asarray(a) for a in (scaler.mean_, scaler.var_, scaler.scale_))
        step.n_samples_seen_ = int(x.shape[0])
        x = (x - step.mean_) / step.scale_
    if params.pca_components is not None:
        from dask_ml.decomposition import PCA

        if onehot:  # the PCA's input: the scaled numbers beside the 0/1 columns, by the transformer fitted so far
            inputs = client.map(_before_pca, futures, transformer=transformer[:-1], columns=used)
            x = _dask_array(inputs, [n for _, n in nonempty], transformer.named_steps["pca"].n_features_in_)
        pca = PCA(n_components=params.pca_components, svd_solver="tsqr").fit(x)
        step = transformer.named_steps["pca"]
        components = np.asarray(pca.components_)
        signs = np.sign(components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)])
        step.components_ = components * signs[:, None]
        for name in ("explained_variance_", "explained_variance_ratio_", "singular_values_", "mean_"):
            setattr(step, name, np.asarray(getattr(pca, name)))
        step.noise_variance_ = float(np.asarray(pca.noise_variance_))
        step.n_samples_ = int(x.shape[0])
    return transformer


def _parts(transformer: Any, params: PreprocessParams) -> tuple[Any, Any]:
    """The steps of :func:`build_transformer`'s pipeline on the numeric features (a pipeline with ``impute`` and
    ``scale`` as configured) and on the one-hot columns (``impute``, ``onehot``; None without them)."""
    if not onehot_columns(params):
        return transformer, None
    columns = transformer.named_steps["columns"]
    return columns.named_transformers_["numeric"], columns.named_transformers_["categorical"]


def _dask_array(blocks: list[Any], heights: list[int], width: int):
    """One dask array of the partitions' arrays (futures), in row blocks tall enough for tall-and-skinny QR."""
    import dask
    import dask.array as da

    x = da.concatenate(
        [
            da.from_delayed(dask.delayed(b), shape=(n, width), dtype="float64")
            for b, n in zip(blocks, heights, strict=True)
        ]
    )
    # tall-and-skinny QR wants tall row blocks: the largest partition's height (at least the matrix's width)
    return x.rechunk({0: max(max(heights), width), 1: -1})


def _before_pca(table: pd.DataFrame, transformer: Any, columns: list[str]) -> np.ndarray:
    return np.asarray(transformer.transform(table[columns]), dtype="float64")


def _column(table: pd.DataFrame, column: str) -> pd.Series:
    return table[column]


def column_series(client: Any, tables: list[Any], column: str, dtype: str):
    """Column ``column`` of the partitions' kept rows (futures) as a Dask Series."""
    import dask.dataframe as dd

    meta = pd.Series(name=column, dtype=dtype)
    return dd.from_delayed(client.map(_column, tables, column=column), meta=meta, verify_meta=False)


def exact_medians(client: Any, tables: list[Any], columns: list[str]) -> list[float]:
    """Each column's median over the kept rows, blanks skipped, as scikit-learn's ``SimpleImputer(strategy=
    "median")`` computes it on the whole table (the local engine fits it after the outlier filter, on these rows).

    Exact, and no value goes to the driver but the middle ones: each column's present values are sorted by Dask
    (``sort_values``: divisions from sampled quantiles, then a shuffle across the workers; the columns' sorts run
    together), then its one or two middle values are fetched by their global position (the sorted partitions'
    lengths added up). One sort per column: a sort by (column, value) would partition by the column alone, each
    column's values in one partition. Dask's ``quantile`` is approximate; ``value_counts`` would be exact but bring
    every distinct value to the driver, up to one per row for a continuous column such as an income.
    """
    ordered = [column_series(client, tables, c, "float64").dropna().to_frame().sort_values(c)[c] for c in columns]
    ordered = client.persist(ordered)  # read twice: the partitions' lengths, then the middle values
    lengths = client.gather(client.compute([s.map_partitions(len) for s in ordered]))
    picks = []
    for series, counts in zip(ordered, lengths, strict=True):
        starts = np.cumsum([0, *counts.tolist()])
        n = int(starts[-1])
        for position in ((n - 1) // 2, n // 2):  # the same position twice for an odd count
            part = int(np.searchsorted(starts, position, side="right")) - 1
            picks.append((series.partitions[part], position - int(starts[part])))
    parts = client.gather(client.compute([p for p, _ in picks]))
    middle = np.array([part.iloc[i] for part, (_, i) in zip(parts, picks, strict=True)], dtype="float64")
    # scikit-learn's own arithmetic (np.ma.median of the column): the two middle values summed, then halved (an odd
    # count: the middle value twice); the same call on the two gives the same float.
    return np.ma.getdata(np.ma.median(middle.reshape(len(columns), 2).T, axis=0)).tolist()


def category_counts(client: Any, tables: list[Any], columns: list[str]) -> dict[str, pd.Series]:
    """Each one-hot column's values on the kept rows and their counts, blanks left out: Dask's ``value_counts``
    over all partitions (exact; at most ``max_categories`` values per column, checked before)."""
    counts = [column_series(client, tables, c, "object").dropna().value_counts() for c in columns]
    return dict(zip(columns, client.gather(client.compute(counts)), strict=True))


def most_frequent(counts: pd.Series) -> Any:
    """scikit-learn's ``SimpleImputer(strategy="most_frequent")`` on text: the most frequent value, the smallest
    of those tied."""
    return min(v for v, n in counts.items() if n == counts.max())

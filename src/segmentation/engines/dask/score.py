"""``make score`` on a Dask cluster (``preprocess.engine: dask``): new customers in partitions, scored by workers.

The input is anything the Dask engine reads (:mod:`segmentation.engines.dask.sources`: a CSV, a folder or glob of CSV or
Parquet files, local or on S3 with the DVC remote's credentials). Each partition is read on a worker and goes
through :func:`segmentation.tools.score.score` (the same checks, rejects and segments as local scoring) with the saved
segmenter, an ordinary scikit-learn ``Pipeline`` shipped to the workers. IDs must be unique across the whole input
(a distributed ``value_counts``, as preprocess checks them).

The output is partitioned Parquet, a folder ``<output>.parquet`` with one part per partition in the input's order
(``ID``, ``segment``, ``segment_name``; :func:`segmentation.files.read_csv` or any Parquet reader reads it whole),
and the rows that cannot be scored likewise in ``<output stem>_rejects.parquet`` (``ID``, ``reason``), only when
there are some. Written by the workers into a temporary folder beside the output and committed at the end, or not
at all.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dask.utils import parse_bytes

from segmentation import algorithms
from segmentation.config import ROW_ID_COLUMN, DataParams, PreprocessParams
from segmentation.engines.dask import sources as dask_sources
from segmentation.engines.dask.cluster import dask_client
from segmentation.engines.dask.params import dask_params
from segmentation.errors import UserError
from segmentation.files import PARQUET, StageOutputs, temp_dir_beside
from segmentation.tools import score


@dataclass
class PartScores:
    """What the driver learns of one scored partition (small)."""

    rows: int
    scored: int
    outliers: int
    reasons: dict[str, int]  # reason -> rejected rows, in order of first appearance
    first_rejects: list[Any]  # the first rejected IDs (at most score.SHOWN_IDS)
    id_dtype: str


@dataclass
class DaskScores:
    """The outcome: the folders written (to commit), the counts and the summary of the rejects."""

    scored_dir: Path
    rejects_dir: Path | None
    rows: int
    scored: int
    outliers: int
    rejected: int
    reasons: dict[str, int]
    first_rejects: list[Any]
    id_column: str
    partitions: int


def default_output(input_path: str) -> Path:
    """``scores/<name>_segments.parquet``: ``<name>`` is the input file's stem, or its folder's name for a folder
    or a glob of file names."""
    parts = [p for p in input_path.split("://")[-1].rstrip("/").split("/") if p]
    name = parts[-1] if parts else "input"
    if dask_sources.GLOB_CHARS & set(name) and len(parts) > 1:
        name = parts[-2]
    return score.OUTPUT_DIR / f"{Path(name).stem or 'input'}_segments{PARQUET}"


def rejects_dir(output: Path) -> Path:
    """``<output stem>_rejects.parquet`` beside the output."""
    return output.with_name(f"{output.stem}_rejects{PARQUET}")


def _read(part: Any, params: DataParams) -> pd.DataFrame:
    from segmentation.engines.dask.engine import read_block

    if isinstance(part, dask_sources.ParquetPart):
        return dask_sources.read_parquet_part(part, None)
    return read_block(part, params, None)


def score_part(
    part: Any, segmenter: Any, params: PreprocessParams, names: dict[int, str] | None, source: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, PartScores]:
    """One partition scored as :func:`segmentation.tools.score.score` scores a file: its ``ID, segment, segment_name``
    rows, its rejects, its raw IDs, its summary. A check that fails names the row's line in its file."""
    from segmentation.engines.dask.engine import rows_before

    raw = _read(part, params.data)
    # id_column null: score.score numbers the partition's rows 1..; _score_parts shifts them by the rows before it
    id_col = params.data.id_column or ROW_ID_COLUMN
    if raw.empty:  # a block in which no line starts
        empty = pd.DataFrame({id_col: pd.Series(dtype="int64")})
        return empty, empty, raw.get(id_col, pd.Series(dtype="int64")), PartScores(0, 0, 0, {}, [], "int64")
    try:
        scored, rejects, outliers = score.score(raw, segmenter, params, source)
    except UserError:
        raw.index = pd.RangeIndex(rows_before(part), rows_before(part) + len(raw))
        score.score(raw, segmenter, params, source)  # raises again, now naming the file's line
        raise
    reasons = rejects[score.REASON_COLUMN].value_counts(sort=False)
    summary = PartScores(
        rows=len(raw),
        scored=len(scored),
        outliers=outliers,
        reasons={str(k): int(v) for k, v in reasons.items()},
        first_rejects=rejects[id_col].head(score.SHOWN_IDS).tolist(),
        id_dtype=str(raw[id_col].dtype) if id_col in raw else "int64",
    )
    return score.with_names(scored, names), rejects, raw.get(id_col, pd.Series(dtype="int64")), summary


def _write(part: tuple, which: int, folder: str, number: int) -> int:
    from segmentation.engines.dask.engine import write_part

    table = part[which]
    return write_part(table, folder, number) if len(table) else 0


def _number_rows(part: tuple, offset: int) -> tuple:
    """A scored partition with its generated ``row_id`` (in the scores and the rejects) shifted by ``offset``."""
    scored, rejects, *rest = part
    shift = {ROW_ID_COLUMN: lambda t: t[ROW_ID_COLUMN] + offset}
    return (scored.assign(**shift), rejects.assign(**shift), *rest)


def _item(part: tuple, which: int) -> Any:
    return part[which]


def score_on_dask(
    client: Any, segmenter: Any, params: PreprocessParams, names: dict[int, str] | None, output: Path
) -> DaskScores:
    """Score ``params.data.path`` on the cluster of ``client``; the scores (and rejects, if any) written into new
    folders beside ``output`` (removed on any failure), to be committed by the caller."""
    source = params.data.path
    return dask_sources.on_partitions(
        params.data,
        parse_bytes(dask_params(params).blocksize),
        lambda parts: _score_parts(client, segmenter, params, names, output, parts, source),
    )


def _score_parts(
    client: Any,
    segmenter: Any,
    params: PreprocessParams,
    names: dict[int, str] | None,
    output: Path,
    parts: list[Any],
    source: str,
) -> DaskScores:
    from segmentation.engines.dask.engine import require_unique_ids

    futures = client.map(score_part, parts, segmenter=segmenter, params=params, names=names, source=source, pure=False)
    summaries: list[PartScores] = client.gather(client.map(_item, futures, which=3))
    id_col = params.data.id_column or ROW_ID_COLUMN
    offsets = [0] * len(parts)
    if params.data.id_column is not None:
        id_dtype = next((s.id_dtype for s in summaries if s.rows), "int64")
        require_unique_ids(client, client.map(_item, futures, which=2), parts, id_col, id_dtype, source)
    else:  # local scoring numbers the rows read 1..n over the file: each partition shifted by the rows before it
        offsets = np.cumsum([0, *(s.rows for s in summaries[:-1])]).tolist()
        futures = client.map(_number_rows, futures, offsets)

    numbers = list(range(len(parts)))
    rejected = sum(sum(s.reasons.values()) for s in summaries)
    scored_dir = temp_dir_beside(output)
    folders = [scored_dir]
    try:
        client.gather(client.map(_write, futures, [0] * len(parts), [str(scored_dir.resolve())] * len(parts), numbers))
        reject_folder = None
        if rejected:
            reject_folder = temp_dir_beside(rejects_dir(output))
            folders.append(reject_folder)
            where = [str(reject_folder.resolve())] * len(parts)
            client.gather(client.map(_write, futures, [1] * len(parts), where, numbers))
    except BaseException:
        for folder in folders:
            shutil.rmtree(folder.parent, ignore_errors=True)
        raise
    reasons: dict[str, int] = {}
    for s in summaries:
        for reason, count in s.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    first = [i + o for s, o in zip(summaries, offsets, strict=True) for i in s.first_rejects][: score.SHOWN_IDS]
    return DaskScores(
        scored_dir=scored_dir,
        rejects_dir=reject_folder,
        rows=sum(s.rows for s in summaries),
        scored=sum(s.scored for s in summaries),
        outliers=sum(s.outliers for s in summaries),
        rejected=rejected,
        reasons=reasons,
        first_rejects=first,
        id_column=id_col,
        partitions=len(parts),
    )


def run(args: argparse.Namespace, params: PreprocessParams) -> None:
    """``make score`` with ``preprocess.engine: dask`` (:func:`segmentation.tools.score.main` hands over to it, its
    options parsed): the same checks, segments and rejects as local scoring, the output a Parquet folder."""
    output = Path(args.output) if args.output else default_output(args.input)
    if output.suffix != PARQUET:
        raise UserError(f"--output {output}: scoring on Dask writes partitioned Parquet: name it *{PARQUET}")
    update = {"path": args.input, **({"separator": args.separator} if args.separator else {})}
    params = params.model_copy(update={"data": params.data.model_copy(update=update)})
    source = Path(args.input) if Path(args.input).exists() else None  # not a glob, nor on S3
    protected = score.protected_paths(source)
    for target in (output, rejects_dir(output)):
        what = score.what_it_is(target, protected)
        if what is not None:
            raise UserError(f"score: --output {output}: {target} is {what}; choose another --output")
    segmenter = score.load_segmenter(args.model)
    k = algorithms.n_clusters(segmenter.named_steps["cluster"])
    names = score.segment_names(Path(args.profile), k)
    rejects = rejects_dir(output)
    with StageOutputs() as out:
        with dask_client(dask_params(params, args.params)) as client:
            result = score_on_dask(client, segmenter, params, names, output)
        out.adopt(output, result.scored_dir)
        if result.rejects_dir is not None:
            out.adopt(rejects, result.rejects_dir)
        out.commit()
    if result.rejects_dir is None and rejects.is_dir():
        shutil.rmtree(rejects)  # from an earlier run of the same output
    print(
        f"score: {result.scored} of {result.rows} row(s) scored -> {output} ({result.partitions} partition(s) on Dask)"
    )
    if result.rejected:
        line = score.rejects_summary(
            result.id_column, result.rejected, result.first_rejects, result.reasons, result.rows, rejects
        )
        print(line, file=sys.stderr)
    if names is None:
        print(
            f"note: no segment names in {args.profile} for these {k} "
            "segments (run dvc repro: evaluate writes them); segment_name left blank",
            file=sys.stderr,
        )
    if result.outliers:
        print(
            f"note: {result.outliers} scored row(s) are outside preprocess.outliers (training left such rows out of "
            "the fit)",
            file=sys.stderr,
        )

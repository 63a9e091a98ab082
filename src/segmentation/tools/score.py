"""Score new customers: a raw CSV (the training data's columns) -> ID, segment, with the trained segmenter.

``python -m segmentation.tools.score --input new_customers.csv [--output scores/new_customers_segments.csv]``, or
``make score INPUT=new_customers.csv [OUTPUT=...]``. Not a DVC stage: it reads the segmenter (``paths.segmenter`` in
``dvc.yaml``, the train stage's one artifact: feature recipe, preprocessing and the clusterer as one scikit-learn
``Pipeline``) and the ``preprocess.data`` params (separator, encoding, ID column).

- The file is checked as preprocess checks the training data (columns, numbers, DD-MM-YYYY dates, unique IDs...):
  a bad file is one ``error:`` line naming the column and the line, exit status 2, nothing written.
- Rows the segmenter cannot score (a blank in a model column when training dropped such rows, ``missing: drop``)
  are not lost: they are counted with their IDs in one ``score:`` line and listed with the reason in
  ``<output>_rejects.csv`` (``ID,reason``); a run without rejects removes a stale rejects file.
- Every customer gets a segment by the clusterer's ``predict``; for an algorithm without one (agglomerative,
  HDBSCAN) the nearest cluster centroid of its training assignment (:class:`segmentation.algorithms.CentroidAssigner`):
  never noise.
- Rows outside ``preprocess.outliers`` are scored (they are customers; training left them out of the fit), and
  counted in one ``note:`` line.
- The outputs replace the previous ones all together, only once everything succeeded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from segmentation import algorithms, pipeline
from segmentation.config import PreprocessParams, beyond_local, load_section
from segmentation.core import data, features
from segmentation.core.report import NAME_COLUMN
from segmentation.engines import LOCAL, engine_module
from segmentation.errors import UserError, stage_entrypoint
from segmentation.files import LineLocator, StageOutputs, load_model

SEGMENT_COLUMN = "segment"
SEGMENT_NAME_COLUMN = "segment_name"
REASON_COLUMN = "reason"
OUTPUT_DIR = Path("scores")
SHOWN_IDS = 10  # IDs named in the summary line; all of them are in the rejects file


def default_output(input_path: str | Path) -> Path:
    """``scores/<input stem>_segments.csv``."""
    return OUTPUT_DIR / f"{Path(input_path).stem}_segments.csv"


def rejects_path(output: str | Path) -> Path:
    """``<output stem>_rejects.csv`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_rejects.csv")


def imputes(preprocessor: Any) -> bool:
    """Whether the fitted preprocessing fills blanks in (``missing: median``): it holds a SimpleImputer."""
    from sklearn.impute import SimpleImputer

    if isinstance(preprocessor, SimpleImputer):
        return True
    get_params = getattr(preprocessor, "get_params", None)
    return get_params is not None and any(isinstance(v, SimpleImputer) for v in get_params(deep=True).values())


def score(
    raw: pd.DataFrame, segmenter: Any, params: PreprocessParams, source: str
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Segments of the rows of ``raw`` (as :func:`segmentation.core.data.load_csv` read them).

    Returns ``(scored, rejects, outliers)``: ID -> segment for the rows scored (in the file's order), ID -> reason
    for the rows that cannot be scored, and how many scored rows are outside ``preprocess.outliers``.
    """
    lines = LineLocator.of(raw)
    raw, id_col = data.identify_rows(raw, params.data.id_column, source, lines)
    step = segmenter.named_steps["features"]
    derived = step.derive(raw, source)  # the checks and the recipe of the training data; a bad value stops here
    X = step.select(derived)
    if imputes(segmenter.named_steps["preprocess"]):
        blank = pd.DataFrame(False, index=X.index, columns=X.columns)
    else:
        blank = X.isna()
    rejected = blank.any(axis=1)
    reasons = blank[rejected].apply(lambda row: "blank " + ", ".join(c for c in X.columns if row[c]), axis=1)
    rejects = pd.DataFrame({id_col: raw.loc[rejected, id_col], REASON_COLUMN: reasons.astype(object)})
    ok = ~rejected
    segments = segmenter.predict(raw.loc[ok]) if ok.any() else []
    scored = pd.DataFrame({id_col: raw.loc[ok, id_col], SEGMENT_COLUMN: pd.array(segments, dtype="int64")})
    bounds = {c: b for c, b in params.outliers.items() if c in derived.columns}
    outside = pd.Series(False, index=derived.index)
    for mask in features.outlier_rows(derived, bounds).values():
        outside |= mask
    return scored.reset_index(drop=True), rejects.reset_index(drop=True), int((outside & ok).sum())


def segment_names(profile_path: Path, n_clusters: int) -> dict[int, str] | None:
    """Each segment's name from the evaluate stage's profile, or None when it has none for this segmenter's
    segments (no profile yet, an older one without names, or one of another number of segments). A noise row
    (HDBSCAN's -1) may be there too: scoring never gives it."""
    if not profile_path.is_file():
        return None
    try:
        profile = pd.read_csv(profile_path, usecols=["cluster", NAME_COLUMN])
    except (ValueError, OSError, pd.errors.ParserError):
        return None
    names = dict(zip(profile["cluster"].astype(int), profile[NAME_COLUMN].astype(str), strict=True))
    return names if sorted(k for k in names if k != algorithms.NOISE) == list(range(n_clusters)) else None


def with_names(scored: pd.DataFrame, names: dict[int, str] | None) -> pd.DataFrame:
    """``scored`` with a ``segment_name`` column after ``segment`` (blank without ``names``)."""
    named = scored.copy()
    named.insert(2, SEGMENT_NAME_COLUMN, scored[SEGMENT_COLUMN].map(names) if names else "")
    return named


def rejects_line(rejects: pd.DataFrame, total: int, path: Path) -> str:
    """One line: how many rows were not scored, why, which IDs (the first few), where the full list is."""
    reasons = rejects[REASON_COLUMN].value_counts(sort=False)
    return rejects_summary(
        str(rejects.columns[0]), len(rejects), list(rejects.iloc[:SHOWN_IDS, 0]), dict(reasons.items()), total, path
    )


def rejects_summary(
    id_col: str, count: int, first_ids: list[Any], reasons: dict[str, int], total: int, path: Path
) -> str:
    """:func:`rejects_line` from counts: ``count`` rejects, the first of their IDs, the rows per reason."""
    ids = ", ".join(str(v) for v in first_ids[:SHOWN_IDS])
    more = f" and {count - SHOWN_IDS} more" if count > SHOWN_IDS else ""
    why = "; ".join(f"{reason}: {n}" for reason, n in reasons.items())
    return (
        f"score: {count} of {total} row(s) not scored ({why}; the segmenter cannot impute them): "
        f"{id_col} {ids}{more}; listed in {path}"
    )


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI: score a CSV of new customers with the trained segmenter."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="CSV of customers, with the training data's columns")
    parser.add_argument("--output", help="ID -> segment, name CSV (default: scores/<input stem>_segments.csv)")
    parser.add_argument("--model", help="the trained segmenter (default: paths.segmenter in dvc.yaml)")
    parser.add_argument("--separator", help="the input's separator (default: preprocess.data.separator)")
    parser.add_argument(
        "--profile", help="the evaluate stage's profile, with the segments' names (default: paths.profile in dvc.yaml)"
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    # The train and evaluate stages' outputs, where dvc.yaml puts them.
    args.model = args.model or pipeline.path("segmenter")
    args.profile = args.profile or pipeline.path("profile")

    params: PreprocessParams = load_section("preprocess", args.params)
    if params.engine != LOCAL:  # another engine scores (Dask: partitions on the cluster, the output Parquet)
        engine_module(params.engine, "score").run(args, params)
        return
    if beyond_local(args.input, "auto") and not Path(args.input).is_dir():
        raise UserError(
            f"--input {args.input}: a glob, Parquet or S3 input is scored on Dask: set preprocess.engine: dask"
        )
    source = Path(args.input)
    if source.is_dir():
        raise UserError(f"{source}: is a directory, not a CSV file")
    if not source.is_file():
        raise UserError(f"{source}: file not found")
    output = Path(args.output) if args.output else default_output(source)
    update = {"path": str(source), **({"separator": args.separator} if args.separator else {})}
    segmenter = load_model(args.model, stage="train")
    raw = data.load_csv(params.data.model_copy(update=update))
    scored, rejects, outliers = score(raw, segmenter, params, str(source))
    k = algorithms.n_clusters(segmenter.named_steps["cluster"])
    names = segment_names(Path(args.profile), k)
    scored = with_names(scored, names)

    rejects_file = rejects_path(output)
    with StageOutputs() as out:
        out.write_csv(output, scored)
        if len(rejects):
            out.write_csv(rejects_file, rejects)
        out.commit()
    if not len(rejects):
        rejects_file.unlink(missing_ok=True)  # from an earlier run of the same output
    print(f"score: {len(scored)} of {len(raw)} row(s) scored -> {output}")
    if len(rejects):
        print(rejects_line(rejects, len(raw), rejects_file), file=sys.stderr)
    if names is None:
        print(
            f"note: no segment names in {args.profile} for these {k} "
            "segments (run dvc repro: evaluate writes them); segment_name left blank",
            file=sys.stderr,
        )
    if outliers:
        print(
            f"note: {outliers} scored row(s) are outside preprocess.outliers (training left such rows out of the fit)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()

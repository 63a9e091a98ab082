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
- The outputs replace the previous ones all together, only once everything succeeded. They never replace the
  input, a file of the pipeline (a path in ``dvc.yaml``, DVC-tracked data, ``params.yaml``, ``dvc.lock``) or one
  git tracks, and replace an existing file only when it is an earlier score output (its header is this output's
  columns): anything else is one ``error:`` line before the model is even read.
- ``--separator`` (``make score SEPARATOR=,``) reads a file separated otherwise than the training data; the
  ``preprocess.data`` params stay the pipeline's.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from segmentation import algorithms, pipeline
from segmentation.config import ROW_ID_COLUMN, PreprocessParams, beyond_local, load_section
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
SEGMENTER_STEPS = ("features", "preprocess", "cluster")  # segmentation.segmenter.build_segmenter's Pipeline
# The files of a project that are no path in dvc.yaml's stages, and what they are.
PROJECT_FILES = {
    "params.yaml": "the pipeline's params",
    "dvc.yaml": "the pipeline's definition",
    "dvc.lock": "DVC's record of the pipeline's results",
    ".git": "git's own folder",
    ".dvc": "DVC's own folder",
}
ROLES = {"model": "the bare clusterer", "preprocessor": "the fitted preprocessing"}  # paths in dvc.yaml


def default_output(input_path: str | Path) -> Path:
    """``scores/<input stem>_segments.csv``."""
    return OUTPUT_DIR / f"{Path(input_path).stem}_segments.csv"


def rejects_path(output: str | Path) -> Path:
    """``<output stem>_rejects.csv`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_rejects.csv")


# -- what an output may replace ---------------------------------------------------------------------------------------


def _places(path: str | Path) -> set[Path]:
    """Where ``path`` is, absolute: its folder's real path joined with its name (the file a write replaces, a symlink
    itself), and its own real path (the file behind a symlink). ``./new.csv`` and ``new.csv`` are one place."""
    path = Path(os.path.abspath(path))
    return {path.parent.resolve() / path.name, path.resolve()}


def _dvc_tracked(root: Path) -> list[tuple[Path, str]]:
    """The data that ``*.dvc`` files track (``dvc add``), and those files: the ones git lists (committed or new,
    not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.dvc"],
            cwd=root, capture_output=True, timeout=60,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for name in filter(None, listed.decode("utf-8", "replace").split("\0")):
        dvc_file = root / name
        found.append((dvc_file, f"DVC's record of tracked data ({name})"))
        try:
            outs = pipeline.load_yaml(dvc_file.read_text(encoding="utf-8")).get("outs") or []
        except Exception:  # an unreadable or odd .dvc file: its name still tells what it tracks
            outs = [{"path": dvc_file.stem}]
        for out in outs:
            if isinstance(out, dict) and isinstance(out.get("path"), str):
                found.append((dvc_file.parent / out["path"], f"DVC-tracked data ({name})"))
    return found


def protected_paths(source: Path | None, root: Path = Path(".")) -> list[tuple[Path, str]]:
    """What score must never write over, most specific first, each with what it is: the input, the project's
    files, every path of the pipeline (``dvc.yaml``'s ``vars: paths`` and its stages' deps, outs, metrics and plots;
    anything inside a folder among them too) and DVC-tracked data. Files git tracks are checked apart
    (:func:`git_tracks`)."""
    found: list[tuple[Path, str]] = []
    if source is not None:
        found.append((source, f"the input file {source}"))
    found += [(root / name, f"{what} ({name})") for name, what in PROJECT_FILES.items()]
    try:
        named = pipeline.paths(root)
        stages = pipeline.stages(root)
    except UserError:  # no dvc.yaml here (score run elsewhere with --model): only what else is known
        named, stages = {}, {}
    found += [(root / path, f"a path of the pipeline (paths.{name} in dvc.yaml)") for name, path in named.items()]
    kinds = {"outs": "an output", "metrics": "the metrics", "plots": "a plot", "deps": "a dependency"}
    for kind, what in kinds.items():
        for stage, spec in stages.items():
            entries = spec.get(kind) if isinstance(spec, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                for path in entry if isinstance(entry, dict) else [entry]:
                    if isinstance(path, str) and Path(path) != Path("."):
                        found.append((root / path, f"{what} of the pipeline's {stage} stage (dvc.yaml)"))
        if kind == "plots":  # tracked data before the deps: the raw data is both
            found += _dvc_tracked(root)
    return found


def git_tracks(path: Path) -> bool:
    """Whether git tracks the file (or anything inside the folder) ``path``: False outside a git work tree."""
    for place in _places(path):
        try:
            shown = os.path.relpath(place)
        except ValueError:  # another drive (Windows)
            shown = str(place)
        try:
            proc = subprocess.run(["git", "ls-files", "-z", "--", shown], capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        if proc.returncode == 0 and proc.stdout:
            return True
    return False


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)  # a hard link, another spelling on a case-insensitive disk
    except OSError:
        return False


def what_it_is(path: Path, protected: list[tuple[Path, str]]) -> str | None:
    """What ``path`` is when score must not write it (the first of ``protected`` it is or lies in, a file git
    tracks), else None."""
    places = _places(path)
    for other, what in protected:
        if places & _places(other) or _same_file(path, other):
            return what
    for other, what in protected:  # a folder of the pipeline (metrics/dagshub, data/raw tracked as one)
        if any(guarded in place.parents for place in places for guarded in _places(other)):
            return f"inside {other}, {what}"
    if git_tracks(path):
        return "a file git tracks"
    return None


def header_of(path: Path) -> list[str] | None:
    """The column names of the CSV ``path`` (its first line, as :func:`segmentation.files.write_csv` writes it)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            line = fh.readline(64 * 1024)
    except (OSError, UnicodeDecodeError):
        return None
    return next(csv.reader([line.rstrip("\r\n")]), None) if line else None


def check_outputs(output: Path, source: Path, id_column: str) -> None:
    """Before anything is read: a :class:`UserError` when ``output`` or its rejects file beside it would replace
    the input, a file of the pipeline or of git, or an existing file that is not an earlier score output of the
    same kind (its header: ``ID,segment,segment_name``, ``ID,reason``; ``ID`` the configured ID column)."""
    default = default_output(source)
    if _places(output) & _places(default):
        advice = "choose another file with --output"
    else:
        advice = f"choose another file (default: {default})"
    protected = protected_paths(source)
    targets = [
        (output, f"--output {output}", [id_column, SEGMENT_COLUMN, SEGMENT_NAME_COLUMN]),
        (rejects_path(output), f"--output {output}'s rejects file {rejects_path(output)}", [id_column, REASON_COLUMN]),
    ]
    for target, shown, header in targets:
        what = what_it_is(target, protected)
        if what is not None:
            raise UserError(f"score: {shown} is {what}; {advice}")
        if target.is_dir():
            raise UserError(f"score: {shown} is a directory; {advice}")
        if (target.exists() or target.is_symlink()) and header_of(target) != header:
            raise UserError(
                f"score: {shown} exists and is not a score output (its header is not {','.join(header)}); "
                f"{advice}, or move it away"
            )


# -- the segmenter ----------------------------------------------------------------------------------------------------


def load_segmenter(path: str) -> Any:
    """The segmenter pickled at ``path``; another model file of the pipeline (the bare clusterer, the
    preprocessing) or any other object is a one-line :class:`UserError` saying what it holds and what to use."""
    model = load_model(path, stage="train")
    steps = getattr(model, "named_steps", None)
    if steps is not None and all(name in steps for name in SEGMENTER_STEPS) and hasattr(model, "predict"):
        return model
    try:
        named = pipeline.paths()
    except UserError:
        named = {}
    holds = f"a {type(model).__name__}"
    if steps is not None:
        holds += f" of {', '.join(steps)}"
    role = next((ROLES[n] for n, p in named.items() if n in ROLES and _places(p) & _places(path)), None)
    if role is None and type(model).__module__.startswith(("sklearn.cluster", "sklearn.mixture")):
        role = "a bare clusterer"
    if role:
        holds += f" ({role})"
    segmenter = named.get("segmenter")
    if segmenter is None:
        use = "use the segmenter the train stage writes (paths.segmenter in dvc.yaml)"
    elif _places(segmenter) & _places(path):
        use = "rebuild it: dvc repro -f -s train"
    else:
        use = f"use {segmenter} (paths.segmenter in dvc.yaml, read when --model is left out)"
    raise UserError(f"{path} holds {holds}, not the segmenter (recipe, preprocessing and clusterer); {use}")


def separator_option(separator: str | None) -> str | None:
    """``--separator`` as typed, but a backslash then ``t`` (``make score SEPARATOR='\\t'``) is a tab."""
    return "\t" if separator == "\\t" else (separator or None)


def separator_fix(guess: str) -> str:
    """The advice for a file that seems separated by ``guess``: score's option, not the training data's params."""
    spelled = "\\t" if guess == "\t" else guess
    return (
        f"pass its separator to score: --separator {shlex.quote(spelled)} "
        f"(make score ... SEPARATOR={shlex.quote(spelled)}); preprocess.data.separator is the training data's"
    )


# -- scoring ----------------------------------------------------------------------------------------------------------


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
    parser.add_argument(
        "--separator",
        help="the input's separator, e.g. , or \\t (default: preprocess.data.separator, the training data's)",
    )
    parser.add_argument(
        "--profile", help="the evaluate stage's profile, with the segments' names (default: paths.profile in dvc.yaml)"
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    # The train and evaluate stages' outputs, where dvc.yaml puts them.
    args.model = args.model or pipeline.path("segmenter")
    args.profile = args.profile or pipeline.path("profile")

    params: PreprocessParams = load_section("preprocess", args.params)
    args.separator = separator_option(args.separator)
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
    check_outputs(output, source, params.data.id_column or ROW_ID_COLUMN)
    update = {"path": str(source), **({"separator": args.separator} if args.separator else {})}
    segmenter = load_segmenter(args.model)
    raw = data.load_csv(params.data.model_copy(update=update), separator_fix=separator_fix)
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

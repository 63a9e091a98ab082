"""Score new customers (``make score INPUT=new.csv [OUTPUT=...] [SEPARATOR=,]``): a raw CSV with the training data's
columns -> ID, segment, segment_name; the rows it cannot score are listed in ``<output>_rejects.csv``; a summary
``<output>_summary.md`` puts the segment shares beside training's, with their population stability index (drift).
It never writes over the input, a file of the pipeline or of git, nor a file that is no earlier score output."""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from segmentation import algorithms, config, pipeline
from segmentation.config import ROW_ID_COLUMN, PreprocessParams, beyond_local
from segmentation.core import data
from segmentation.core.report import NAME_COLUMN, SIZE_COLUMN
from segmentation.engines import LOCAL, engine_module
from segmentation.errors import UserError, stage_entrypoint
from segmentation.files import LineLocator, StageOutputs, load_model
from segmentation.tracking.lineage import file_md5, git

SEGMENT_COLUMN, SEGMENT_NAME_COLUMN, REASON_COLUMN = "segment", "segment_name", "reason"
OUTPUT_DIR = Path("scores")
SHOWN_IDS = 10  # IDs named in the summary line; all of them are in the rejects file
SEGMENTER_STEPS = ("features", "preprocess", "cluster")  # segmentation.core.segmenter.build_segmenter's Pipeline
PROJECT_FILES = {  # the project's files that no stage of dvc.yaml names
    "params.yaml": "the pipeline's params",
    "dvc.yaml": "the pipeline's definition",
    "dvc.lock": "DVC's record of the pipeline's results",
    ".git": "git's own folder",
    ".dvc": "DVC's own folder",
}
STAGE_ENTRIES = {"outs": "an output", "metrics": "the metrics", "plots": "a plot", "deps": "a dependency"}
ROLES = {"model": "the bare clusterer", "preprocessor": "the fitted preprocessing"}  # paths in dvc.yaml
SUMMARY_TITLE = "# Score summary"  # the summary's first line: what marks an earlier one, safe to replace
PSI_FLOOR = 1e-4  # the share an empty segment counts as in the index (ln 0 would make it infinite)


def default_output(input_path: str | Path) -> Path:
    """``scores/<input stem>_segments.csv``."""
    return OUTPUT_DIR / f"{Path(input_path).stem}_segments.csv"


def rejects_path(output: str | Path) -> Path:
    """``<output stem>_rejects.csv`` beside the output."""
    return Path(output).with_name(f"{Path(output).stem}_rejects.csv")


def summary_path(output: str | Path) -> Path:
    """``<output stem>_summary.md`` beside the output."""
    return Path(output).with_name(f"{Path(output).stem}_summary.md")


def _places(path: str | Path) -> set[Path]:
    """``path`` absolute, as the file a write replaces (a symlink itself) and as the file behind it."""
    path = Path(os.path.abspath(path))
    return {path.parent.resolve() / path.name, path.resolve()}


def protected_paths(source: Path | None, root: Path = Path(".")) -> list[tuple[Path, str]]:
    """What score must never write over (folders: all inside), most specific first, with what it is."""
    found = [(source, f"the input file {source}")] if source is not None else []
    found += [(root / name, f"{what} ({name})") for name, what in PROJECT_FILES.items()]
    named, stages = {}, {}
    with suppress(UserError):  # no dvc.yaml here (score run elsewhere with --model): only what else is known
        named, stages = pipeline.paths(root), pipeline.stages(root)
    found += [(root / path, f"a path of the pipeline (paths.{name} in dvc.yaml)") for name, path in named.items()]
    # The *.dvc files git lists (committed or new) and the data each tracks; before the deps: the raw data is both.
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.dvc", cwd=root)
    for name in filter(None, listed.decode("utf-8", "replace").split("\0")):
        found.append((dvc_file := root / name, f"DVC's record of tracked data ({name})"))
        try:
            outs = pipeline.load_yaml(dvc_file.read_text(encoding="utf-8")).get("outs") or []
        except Exception:  # an unreadable or odd .dvc file: its name still tells what it tracks
            outs = [{"path": dvc_file.stem}]
        paths = [out.get("path") for out in outs if isinstance(out, dict)]
        found += [(dvc_file.parent / p, f"DVC-tracked data ({name})") for p in paths if isinstance(p, str)]
    for kind, what in STAGE_ENTRIES.items():
        for stage, spec in stages.items():
            entries = spec.get(kind) if isinstance(spec, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                for path in entry if isinstance(entry, dict) else [entry]:
                    if isinstance(path, str) and Path(path) != Path("."):
                        found.append((root / path, f"{what} of the pipeline's {stage} stage (dvc.yaml)"))
    return found


def what_it_is(path: Path, protected: list[tuple[Path, str]]) -> str | None:
    """What ``path`` is (the first of ``protected`` it is or lies in, a file git tracks), else None: not to write."""
    places = _places(path)
    for other, what in protected:
        # os.path.samefile: a hard link, another spelling on a case-insensitive disk
        if places & _places(other) or (path.exists() and other.exists() and os.path.samefile(path, other)):
            return what
    for other, what in protected:  # a folder of the pipeline (metrics/dagshub, data/raw tracked as one)
        if any(guarded in place.parents for place in places for guarded in _places(other)):
            return f"inside {other}, {what}"
    if any(git("--literal-pathspecs", "ls-files", "-z", "--", str(place)) for place in places):
        return "a file git tracks"
    return None


def check_outputs(output: Path, source: Path, id_column: str) -> None:
    """Fail, before anything is read, when ``output`` or a file beside it would replace a protected or a user's file."""
    default, protected = default_output(source), protected_paths(source)
    rejects, summary = rejects_path(output), summary_path(output)
    advice = "choose another file " + (
        "with --output" if _places(output) & _places(default) else f"(default: {default})"
    )
    for target, shown, header in [
        (output, f"--output {output}", [id_column, SEGMENT_COLUMN, SEGMENT_NAME_COLUMN]),
        (rejects, f"--output {output}'s rejects file {rejects}", [id_column, REASON_COLUMN]),
        (summary, f"--output {output}'s summary file {summary}", [SUMMARY_TITLE]),
    ]:
        what = what_it_is(target, protected) or ("a directory" if target.is_dir() else None)
        if what is not None:
            raise UserError(f"score: {shown} is {what}; {advice}")
        found = None  # the column names on its first line
        with suppress(OSError, UnicodeDecodeError), open(target, encoding="utf-8", newline="") as fh:
            found = next(csv.reader([fh.readline(64 * 1024).rstrip("\r\n")]), None)
        if (target.exists() or target.is_symlink()) and found != header:
            raise UserError(
                f"score: {shown} exists and is not a score output (its header is not {','.join(header)}); "
                f"{advice}, or move it away"
            )


def load_segmenter(path: str) -> Any:
    """The segmenter pickled at ``path``; any other model is a :class:`UserError` saying what it holds, what to use."""
    model = load_model(path, stage="train")
    steps = getattr(model, "named_steps", None)
    if steps is not None and all(name in steps for name in SEGMENTER_STEPS) and hasattr(model, "predict"):
        return model
    named = {}
    with suppress(UserError):
        named = pipeline.paths()
    role = next((ROLES[n] for n, p in named.items() if n in ROLES and _places(p) & _places(path)), None)
    if role is None and type(model).__module__.startswith(("sklearn.cluster", "sklearn.mixture")):
        role = "a bare clusterer"
    holds = f"a {type(model).__name__}" + (f" of {', '.join(steps)}" if steps is not None else "")
    holds += f" ({role})" if role else ""
    segmenter = named.get("segmenter")
    if segmenter is None:
        use = "use the segmenter the train stage writes (paths.segmenter in dvc.yaml)"
    elif _places(segmenter) & _places(path):
        use = "rebuild it: dvc repro -f -s train"
    else:
        use = f"use {segmenter} (paths.segmenter in dvc.yaml, read when --model is left out)"
    raise UserError(f"{path} holds {holds}, not the segmenter (recipe, preprocessing and clusterer); {use}")


def separator_option(separator: str | None) -> str | None:
    """``--separator`` as typed, but ``\\t`` (a backslash then ``t``: ``make score SEPARATOR='\\t'``) is a tab."""
    return "\t" if separator == "\\t" else (separator or None)


def separator_fix(guess: str) -> str:
    """The advice for a file that seems separated by ``guess``: score's option, not the training data's params."""
    spelled = shlex.quote("\\t" if guess == "\t" else guess)
    return (
        f"pass its separator to score: --separator {spelled} (make score ... SEPARATOR={spelled}); "
        "preprocess.data.separator is the training data's"
    )


def score(
    raw: pd.DataFrame, segmenter: Any, params: PreprocessParams, source: str
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """``(scored, rejects, outliers)``: ID -> segment in the file's order, ID -> reason for the rows it cannot score,
    how many scored rows are outside the outlier bounds (scored all the same: training only left them out)."""
    from sklearn.impute import SimpleImputer

    raw, id_col = data.identify_rows(raw, params.data.id_column, source, LineLocator.of(raw))
    step = segmenter.named_steps["features"]
    derived = step.derive(raw, source)  # the checks and the recipe of the training data; a bad value stops here
    X = step.select(derived)
    parts = segmenter.named_steps["preprocess"].get_params(deep=True).values()
    blank = X.isna() & (not any(isinstance(p, SimpleImputer) for p in parts))  # `missing: median` fills blanks in
    rejected = blank.any(axis=1)
    ok = ~rejected
    reasons = blank[rejected].apply(lambda row: "blank " + ", ".join(c for c in X.columns if row[c]), axis=1)
    rejects = pd.DataFrame({id_col: raw.loc[rejected, id_col], REASON_COLUMN: reasons.astype(object)})
    segments = segmenter.predict(raw.loc[ok]) if ok.any() else []
    scored = pd.DataFrame({id_col: raw.loc[ok, id_col], SEGMENT_COLUMN: pd.array(segments, dtype="int64")})
    masks = data.outlier_rows(derived, {c: b for c, b in params.outliers.items() if c in derived})
    outside = pd.concat([pd.Series(False, index=derived.index), *masks.values()], axis=1).any(axis=1)
    return scored.reset_index(drop=True), rejects.reset_index(drop=True), int((outside & ok).sum())


def read_profile(profile_path: Path, column: str, n_clusters: int) -> pd.Series | None:
    """A column of the evaluate stage's profile by segment (noise too); None without one for these ``n_clusters``."""
    with suppress(ValueError, OSError, pd.errors.ParserError):
        profile = pd.read_csv(profile_path, usecols=["cluster", column], index_col="cluster")[column]
        return profile if sorted(k for k in profile.index if k != algorithms.NOISE) == list(range(n_clusters)) else None
    return None


def check_names_belong(model: str, profile: str, lock_path: Path = Path("dvc.lock")) -> None:
    """The segments' names must come from the model scored: under DVC, the evaluate run that wrote ``profile`` read
    the files of the train run that wrote ``model`` (``dvc.lock``), and neither file changed since. Paths that
    ``dvc.lock`` does not record are not checked."""
    model, profile = Path(model).as_posix(), Path(profile).as_posix()
    try:
        stages = pipeline.load_yaml(lock_path.read_text(encoding="utf-8"))["stages"]
        outs = {o["path"]: (name, o.get("md5")) for name, e in stages.items() for o in e.get("outs") or []}
        (trainer, _), (evaluator, _) = outs[model], outs[profile]
    except (OSError, TypeError, KeyError, AttributeError, yaml.YAMLError):  # KeyError: a path not recorded
        return
    read = stages[evaluator].get("deps") or []
    why = [f"{trainer} ran again after {evaluator}"] if any(
        outs.get(d["path"], ("",))[0] == trainer and outs[d["path"]][1] != d.get("md5") for d in read
    ) else []  # fmt: skip
    why += [f"{p} changed since dvc.lock" for p in (model, profile) if Path(p).is_file() and file_md5(p) != outs[p][1]]
    if why:
        raise UserError(
            f"{profile}: its segment names may belong to another model than {model} ({'; '.join(why)}); "
            f"run `dvc repro` (it re-runs {evaluator}), then score again"
        )


def segment_names(profile_path: Path, n_clusters: int) -> dict[int, str] | None:
    """Each segment's name from the evaluate stage's profile (:func:`read_profile`)."""
    names = read_profile(profile_path, NAME_COLUMN, n_clusters)
    return None if names is None else {int(k): str(v) for k, v in names.items()}


def segment_shares(scored: pd.DataFrame, training_sizes: pd.Series) -> pd.DataFrame:
    """Each segment's share of training's rows (the profile's sizes; noise, never assigned, left out) and of ours."""
    sizes = training_sizes.drop(algorithms.NOISE, errors="ignore")
    counts = scored[SEGMENT_COLUMN].value_counts().reindex(sizes.index, fill_value=0)
    return pd.DataFrame({"training": sizes / sizes.sum(), "scored": counts / counts.sum()})


def psi(expected: pd.Series, actual: pd.Series) -> float:
    """Population stability index of shares ``actual`` against ``expected``: 0 the same mix, >0.2 usually shifted."""
    e, a = expected.clip(lower=PSI_FLOOR), actual.clip(lower=PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def summary_text(
    facts: list[str], shares: pd.DataFrame | None, names: dict[int, str] | None, index: float | None, threshold: float
) -> str:
    """The summary file (Markdown): ``facts`` listed, the index, then each segment's share beside training's."""
    if index is None:
        facts = [*facts, "population stability index: none (no row scored, or no training sizes in the profile)"]
    else:
        verdict = "shifted: the model may need retraining" if index > threshold else "stable"
        facts = [*facts, f"population stability index: {index:.4f} ({verdict}; score.drift_threshold {threshold})"]
    lines = [SUMMARY_TITLE, "", *(f"- {fact}" for fact in facts)]
    if shares is not None:
        lines += ["", "| segment | name | training share | new share |", "|--:|:--|--:|--:|"]
        lines += [f"| {k} | {(names or {}).get(k, '')} | {t:.4f} | {n:.4f} |" for k, t, n in shares.itertuples()]
    return "\n".join(lines) + "\n"


def with_names(scored: pd.DataFrame, names: dict[int, str] | None) -> pd.DataFrame:
    """``scored`` with a ``segment_name`` column after ``segment`` (blank without ``names``)."""
    return scored.assign(**{SEGMENT_NAME_COLUMN: scored[SEGMENT_COLUMN].map(names) if names else ""})


def rejects_line(rejects: pd.DataFrame, total: int, path: Path) -> str:
    """One line: how many rows were not scored, why, which IDs (the first few), where the full list is."""
    reasons, first = rejects[REASON_COLUMN].value_counts(sort=False).to_dict(), list(rejects.iloc[:SHOWN_IDS, 0])
    return rejects_summary(str(rejects.columns[0]), len(rejects), first, reasons, total, path)


def rejects_summary(id_col: str, count: int, first_ids: list, reasons: dict[str, int], total: int, path: Path) -> str:
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
    parser.add_argument("--separator", help="the input's, e.g. , or \\t (default: preprocess.data.separator)")
    parser.add_argument("--profile", help="the segments' names (default: paths.profile in dvc.yaml)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    args.model = args.model or pipeline.path("segmenter")
    args.profile = args.profile or pipeline.path("profile")
    args.separator = separator_option(args.separator)
    raw_params = config.read_params_file(args.params)
    params: PreprocessParams = config.parse_section("preprocess", raw_params.get("preprocess"), args.params)
    if params.engine != LOCAL:  # another engine scores (Dask: partitions on the cluster, the output Parquet)
        engine_module(params.engine, "score").run(args, params)
        return
    source = Path(args.input)
    if beyond_local(args.input, "auto") and not source.is_dir():
        raise UserError(
            f"--input {args.input}: a glob, Parquet or S3 input is scored on Dask: set preprocess.engine: dask"
        )
    if not source.is_file():
        raise UserError(f"{source}: " + ("is a directory, not a CSV file" if source.is_dir() else "file not found"))
    output = Path(args.output) if args.output else default_output(source)
    check_outputs(output, source, params.data.id_column or ROW_ID_COLUMN)
    drift = config.parse_section("score", raw_params.get("score") or {}, args.params, config.ScoreParams)
    segmenter = load_segmenter(args.model)
    check_names_belong(args.model, args.profile)
    # Every malformed row is an error here: a skipped customer would go unscored without a trace.
    update = {"path": str(source), "bad_rows": "error", **({"separator": args.separator} if args.separator else {})}
    raw = data.load_csv(
        params.data.model_copy(update=update),
        separator_fix=separator_fix,
        bad_rows_fix="then score it again (preprocess.data.bad_rows is the training data's)",
    )
    scored, rejects, outliers = score(raw, segmenter, params, str(source))
    k = algorithms.n_clusters(segmenter.named_steps["cluster"])
    names = segment_names(Path(args.profile), k)
    sizes = read_profile(Path(args.profile), SIZE_COLUMN, k)
    shares = segment_shares(scored, sizes) if sizes is not None and len(scored) else None
    index = psi(shares["training"], shares["scored"]) if shares is not None else None

    rejects_file, summary_file = rejects_path(output), summary_path(output)
    facts = [f"input: {source}, {len(raw)} row(s)", f"scored: {len(scored)} -> {output}"]
    facts.append(f"not scored: {len(rejects)}" + (f" (listed in {rejects_file})" if len(rejects) else ""))
    with StageOutputs() as out:  # the files replaced together, only once all succeeded
        out.write_csv(output, with_names(scored, names))
        if len(rejects):
            out.write_csv(rejects_file, rejects)
        out.write_text(summary_file, summary_text(facts, shares, names, index, drift.drift_threshold))
        out.commit()
    if not len(rejects):
        rejects_file.unlink(missing_ok=True)  # from an earlier run of the same output
    print(f"score: {len(scored)} of {len(raw)} row(s) scored -> {output}")
    shown = f" (population stability index over segments: {index:.4f})" if index is not None else ""
    print(f"score: summary -> {summary_file}{shown}")
    if index is not None and index > drift.drift_threshold:
        print(f"warning: the segment mix has shifted (population stability index {index:.4f} > score.drift_threshold "
              f"{drift.drift_threshold}): the model may need retraining", file=sys.stderr)  # fmt: skip
    if len(rejects):
        print(rejects_line(rejects, len(raw), rejects_file), file=sys.stderr)
    if names is None:
        print(f"note: no segment names in {args.profile} for these {k} segments (run dvc repro: evaluate writes "
              "them); segment_name left blank", file=sys.stderr)  # fmt: skip
    if outliers:
        print(f"note: {outliers} scored row(s) are outside preprocess.outliers (training left such rows out of the "
              "fit)", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()

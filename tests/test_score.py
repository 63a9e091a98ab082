"""Scoring new customers with the trained segmenter (one scikit-learn Pipeline: recipe, preprocessing, KMeans).

- in-process: the segmenter reproduces the training labels from raw rows; its feature step is preprocess's recipe;
- `make score` in a project trained on the sample minus held-back rows: training rows get their segments.csv
  cluster, held-back rows the hand-wired recipe -> preprocessor -> model answer, blank rows are
  reported, a bad file is one error line and writes nothing;
- (remote) the train run's MLflow model served by `mlflow models serve --env-manager local` on 127.0.0.1 answers
  the same segments over HTTP.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.request import Request, urlopen

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import clone

from pipeline_helpers import FIXTURE_PARAMS, HELD_BACK, REPO, held_back_ids, paths, run, stage_runs, stages
from segmentation.config import load_section
from segmentation.core.search import train
from segmentation.core.segmenter import RecipeFeatures, build_segmenter
from segmentation.core.transform import preprocess
from segmentation.errors import UserError
from segmentation.recipes import marketing_campaign as recipe
from segmentation.tools.score import PSI_FLOOR, psi, rejects_path, score, summary_path
from servers import HOST, free_port, process_group, server_env, wait_http

P = paths()  # every path as dvc.yaml declares it
BLANK_INCOME = 24  # rows of the sample with a blank Income: training drops them, scoring reports them
OUTLIERS = 4  # rows outside preprocess.outliers: training leaves them out, scoring scores them


@pytest.fixture(scope="module")
def trained(raw_full, preprocess_params):
    """preprocess and train run in-process on the sample; the segmenter built from their results."""
    result = preprocess(raw_full, preprocess_params, "sample.csv")
    _, model = train(result.matrix, "ID", load_section("train", REPO / FIXTURE_PARAMS))
    return result, model, build_segmenter(preprocess_params, result.transformer, model)


def kept_rows(raw: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    return raw.set_index("ID").loc[ids].reset_index()


def test_segmenter_gives_the_training_labels_from_raw_rows(trained, raw_full):
    result, model, segmenter = trained
    X = result.matrix.drop(columns=["ID"]).to_numpy()
    labels = model.predict(X)  # what evaluate writes to data/segments.csv
    assert np.array_equal(segmenter.predict(kept_rows(raw_full, result.matrix["ID"])), labels)
    assert [name for name, _ in segmenter.steps] == ["features", "preprocess", "cluster"]


def test_segmenter_survives_a_pickle_round_trip(trained, raw_full, tmp_path):
    result, _, segmenter = trained
    joblib.dump(segmenter, tmp_path / "segmenter.joblib")
    loaded = joblib.load(tmp_path / "segmenter.joblib")
    rows = kept_rows(raw_full, result.matrix["ID"])
    assert np.array_equal(loaded.predict(rows), segmenter.predict(rows))


def test_feature_step_is_the_preprocess_recipe(trained, raw_full, preprocess_params):
    result, _, segmenter = trained
    step = segmenter.named_steps["features"]
    assert isinstance(step, RecipeFeatures)
    assert step.recipe_params["reference_date"] == "2015-01-01" and step.recipe == "marketing_campaign"
    out = step.transform(kept_rows(raw_full, result.features["ID"]))
    expected = result.features[preprocess_params.features]
    pd.testing.assert_frame_equal(out.reset_index(drop=True), expected, check_exact=True)
    assert list(step.get_feature_names_out()) == list(preprocess_params.features)
    # A proper estimator: its params are its constructor's arguments (clone, get_params).
    again = clone(step)
    assert again.get_params() == step.get_params()
    pd.testing.assert_frame_equal(again.fit(raw_full).transform(raw_full), step.transform(raw_full))


def test_feature_step_measures_age_at_the_reference_date(raw_full, preprocess_params):
    step = RecipeFeatures.from_params(preprocess_params)
    later = clone(step).set_params(recipe_params={**step.recipe_params, "reference_date": "2016-01-01"})
    row = raw_full.head(1)
    assert later.transform(row)["Age"].iloc[0] == step.transform(row)["Age"].iloc[0] + 1
    assert recipe.BIRTH_YEAR_COLUMN in step.raw_columns() and "Age" not in step.raw_columns()


def test_score_reports_blank_rows_and_scores_outliers(trained, raw_full, preprocess_params):
    _, _, segmenter = trained
    scored, rejects, outliers = score(raw_full, segmenter, preprocess_params, "new.csv")
    assert list(scored.columns) == ["ID", "segment"] and list(rejects.columns) == ["ID", "reason"]
    assert len(rejects) == BLANK_INCOME and set(rejects["reason"]) == {"blank Income"}
    assert rejects["ID"].isin(raw_full.loc[raw_full["Income"].isna(), "ID"]).all()
    assert len(scored) == len(raw_full) - BLANK_INCOME and outliers == OUTLIERS
    assert scored["ID"].tolist() == raw_full.loc[raw_full["Income"].notna(), "ID"].tolist()  # the file's order


def test_score_checks_the_file_as_preprocess_does(trained, raw, preprocess_params):
    _, _, segmenter = trained
    raw.loc[3, "Dt_Customer"] = "31-02-2014"
    with pytest.raises(UserError, match=r"new.csv: column Dt_Customer: '31-02-2014' on line 5 does not match"):
        score(raw, segmenter, preprocess_params, "new.csv")
    with pytest.raises(UserError, match=r"new.csv: marketing_campaign recipe column\(s\) missing: Year_Birth"):
        score(raw.drop(columns=["Year_Birth"]), segmenter, preprocess_params, "new.csv")
    raw.loc[5, "ID"] = raw.loc[4, "ID"]
    with pytest.raises(UserError, match=r"ID column ID has duplicates"):
        score(raw, segmenter, preprocess_params, "new.csv")


# -- a project trained on the sample minus held-back rows -------------------------------------------------------------


@pytest.fixture
def project(trained_project):
    """The shared trained project (conftest.trained_project)."""
    return trained_project


def hand_wired(root: Path, rows: pd.DataFrame) -> np.ndarray:
    """The recipe, the preprocessor and the model applied one after the other (what the segmenter spares)."""
    params = load_section("preprocess", root / "params.yaml")
    derived = recipe.derive_marketing_features(rows, params.marketing_campaign, "rows")
    matrix = joblib.load(root / P["preprocessor"]).transform(derived[params.features].astype(float))
    return joblib.load(root / P["model"]).predict(matrix)


def test_make_score_on_held_back_rows(project):
    root, env = project
    status = run(["git", "status", "--porcelain", "--untracked-files=no"], root, env).stdout
    proc = run(["make", "score", "INPUT=new_customers.csv"], root, env)
    out = root / "scores" / "new_customers_segments.csv"
    assert f"score: {428 - BLANK_INCOME} of 428 row(s) scored -> scores/new_customers_segments.csv" in proc.stdout
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["ID", "segment", "segment_name"]
    # Each segment's name, as the evaluate stage wrote it beside its profile (and in the report).
    profile = pd.read_csv(root / P["profile"])
    names = dict(zip(profile["cluster"], profile["name"], strict=True))
    assert (scores["segment_name"] == scores["segment"].map(names)).all() and scores["segment_name"].str.len().all()
    segments = pd.read_csv(root / P["segments"])
    trained_rows = scores.merge(segments, on="ID")
    assert len(trained_rows) == len(segments) == 400 - HELD_BACK  # every training row is scored...
    assert (trained_rows["segment"] == trained_rows["cluster"]).all()  # ...with its segments.csv cluster
    held = held_back_ids()
    new = scores.set_index("ID").loc[held, "segment"].to_numpy()
    raw = pd.read_csv(root / "new_customers.csv", sep="\t").set_index("ID").loc[held].reset_index()
    assert np.array_equal(new, hand_wired(root, raw))  # held-back rows: the same recipe, scaling and model
    assert len(scores) == 400 + OUTLIERS  # outliers are scored too
    # The blank-Income rows are reported in one line and in the rejects file, not lost.
    rejects = pd.read_csv(root / "scores" / "new_customers_segments_rejects.csv")
    assert len(rejects) == BLANK_INCOME and set(rejects["reason"]) == {"blank Income"}
    summary = [line for line in proc.stderr.splitlines() if line.startswith("score:")]
    assert len(summary) == 1 and f"{BLANK_INCOME} of 428 row(s) not scored (blank Income: {BLANK_INCOME};" in summary[0]
    assert str(rejects["ID"].iloc[0]) in summary[0] and "new_customers_segments_rejects.csv" in summary[0]
    assert f"note: {OUTLIERS} scored row(s) are outside preprocess.outliers" in proc.stderr
    # The summary beside it: counts, the shares beside training's; the same mix as training's: no warning.
    assert "score: summary -> scores/new_customers_segments_summary.md" in proc.stdout and "warning:" not in proc.stderr
    summary = (root / "scores" / "new_customers_segments_summary.md").read_text()
    assert f"- not scored: {BLANK_INCOME} (listed in scores/new_customers_segments_rejects.csv)" in summary
    assert "(stable; score.drift_threshold 0.2)" in summary and f"| 0 | {names[0]} | " in summary
    # OUTPUT= names the file; scoring changes nothing else (scores/ is git-ignored).
    run(["make", "score", "INPUT=new_customers.csv", "OUTPUT=scores/custom.csv"], root, env)
    assert pd.read_csv(root / "scores" / "custom.csv").equals(scores)
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], root, env).stdout == status
    assert "scores/" not in run(["git", "status", "--porcelain"], root, env).stdout


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.assign(Dt_Customer=df["Dt_Customer"].where(df.index != 2, "2014-13-01")),
         r"error: bad.csv: column Dt_Customer: '2014-13-01' on line 4 does not match date format '%d-%m-%Y'"),
        (lambda df: df.drop(columns=["Marital_Status"]),
         r"error: bad.csv: marketing_campaign recipe column(s) missing: Marital_Status"),
        (lambda df: df.assign(Income=df["Income"].astype(object).where(df.index != 0, "lots")),
         r"error: bad.csv: column Income must be numeric; e.g. 'lots' on line 2"),
    ],
    ids=["bad-date", "missing-column", "not-numeric"],
)  # fmt: skip
def test_score_bad_file_is_one_line_and_writes_nothing(project, edit, message):
    root, env = project
    bad = edit(pd.read_csv(root / "new_customers.csv", sep="\t").head(10))
    bad.to_csv(root / "bad.csv", sep="\t", index=False)
    cmd = [sys.executable, "-m", "segmentation.tools.score", "--input", "bad.csv", "--output", "out/bad.csv"]
    proc = run(cmd, root,
               env, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not (root / "out").exists()


def test_score_malformed_row_is_one_line_with_scores_own_advice(project):
    root, env = project
    lines = (root / "new_customers.csv").read_text().splitlines()[:6]
    lines[3] = "\t".join(lines[3].split("\t")[:3])  # a row cut short: 3 fields
    (root / "bad.csv").write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "segmentation.tools.score", "--input", "bad.csv", "--output", "out/bad.csv"]
    proc = run(cmd, root, env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: bad.csv: line 4 has 3 fields where the header has 29 (1 such row(s)); fix the file, then score it "
        "again (preprocess.data.bad_rows is the training data's)"
    ]
    assert not (root / "out").exists()


def test_make_score_bad_file_writes_nothing(project):
    root, env = project
    bad = pd.read_csv(root / "new_customers.csv", sep="\t").head(10)
    bad.loc[2, "Dt_Customer"] = "2014-13-01"
    bad.to_csv(root / "bad.csv", sep="\t", index=False)
    made = run(["make", "score", "INPUT=bad.csv"], root, env, check=False)
    errors = [line for line in made.stderr.splitlines() if line.startswith("error:")]
    assert made.returncode != 0 and len(errors) == 1 and "Traceback" not in made.stderr, made.stderr
    assert errors[0].startswith("error: bad.csv: column Dt_Customer: '2014-13-01' on line 4 does not match")
    assert not (root / "scores" / "bad_segments.csv").exists()


def test_make_score_needs_an_input(project):
    root, env = project
    proc = run(["make", "score"], root, env, check=False)
    assert proc.returncode != 0 and "error: make score needs INPUT=" in proc.stderr


# -- what score may write over (issue 21): never the input, a file of the pipeline or of git, a file of the user's ----


def fresh_input(root: Path, name: str) -> Path:
    """A copy of the new customers under ``name`` in the project."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "new_customers.csv", path)
    return path


@contextmanager
def restored(*files: Path):
    """Put the files back as they were (absent ones removed) whatever happens: a run that does write over them
    fails its test without spoiling the project the other tests share."""
    before = {f: f.read_bytes() if f.is_file() else None for f in files}
    try:
        yield
    finally:
        for f, data in before.items():
            if data is None:
                if f.is_file() and not f.is_symlink():
                    f.unlink()
            elif f.read_bytes() != data:
                f.write_bytes(data)


def score_main(root: Path, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``python -m segmentation.tools.score ARGS`` in-process in ``root``: exit status, stdout, stderr."""
    from segmentation.tools.score import main

    monkeypatch.chdir(root)
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def the_one_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_make_score_never_writes_over_its_input(project):
    """The issue's own command: `make score INPUT=new.csv OUTPUT=./new.csv` wrote the scores over the customers."""
    root, env = project
    source = fresh_input(root, "new.csv")
    before = source.read_bytes()
    with restored(source, root / "new_rejects.csv"):
        proc = run(["make", "score", "INPUT=new.csv", "OUTPUT=./new.csv"], root, env, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert errors == [
            "error: score: --output new.csv is the input file new.csv; choose another file "
            "(default: scores/new_segments.csv)"
        ], proc.stderr
        assert source.read_bytes() == before and not (root / "new_rejects.csv").exists()


@pytest.mark.parametrize(
    ("given", "output"),
    [
        ("same.csv", "same.csv"),
        ("./same.csv", "same.csv"),
        ("same.csv", "{root}/same.csv"),
        ("same.csv", "sub/../same.csv"),
        ("{root}/sub/../same.csv", "./same.csv"),
        ("same.csv", "link.csv"),  # a symlink to the input
    ],
    ids=["same", "dot-slash", "absolute", "dot-dot", "input-spelled-otherwise", "symlink"],
)
def test_output_that_is_the_input_is_refused(project, monkeypatch, capsys, given, output):
    root, _ = project
    source = fresh_input(root, "same.csv")
    (root / "sub").mkdir(exist_ok=True)
    (root / "link.csv").unlink(missing_ok=True)
    (root / "link.csv").symlink_to("same.csv")
    before = source.read_bytes()
    output = output.format(root=root)
    with restored(source, root / "same_rejects.csv", root / "link_rejects.csv"):
        code, out, err = score_main(root, monkeypatch, capsys, "--input", given.format(root=root), "--output", output)
        line = the_one_line(code, err)
        assert line.startswith(f"error: score: --output {Path(output)} is the input file "), line
        assert line.endswith("; choose another file (default: scores/same_segments.csv)"), line
        assert source.read_bytes() == before and (root / "link.csv").is_symlink() and out == ""
        assert not (root / "same_rejects.csv").exists() and not (root / "link_rejects.csv").exists()


def test_a_rejects_file_that_would_be_the_input_is_refused(project, monkeypatch, capsys):
    root, _ = project
    source = fresh_input(root, "march_rejects.csv")
    before = source.read_bytes()
    with restored(source, root / "march.csv"):
        code, _, err = score_main(root, monkeypatch, capsys, "--input", "march_rejects.csv", "--output", "march.csv")
        line = the_one_line(code, err)
        assert line == (
            "error: score: --output march.csv's rejects file march_rejects.csv is the input file march_rejects.csv; "
            "choose another file (default: scores/march_rejects_segments.csv)"
        )
        assert source.read_bytes() == before and not (root / "march.csv").exists()


@pytest.mark.parametrize(
    ("output", "what"),
    [
        (P["segments"], "a path of the pipeline (paths.segments in dvc.yaml)"),
        (P["segmenter"], "a path of the pipeline (paths.segmenter in dvc.yaml)"),
        (P["profile"], "a path of the pipeline (paths.profile in dvc.yaml)"),
        ("params.yaml", "the pipeline's params (params.yaml)"),
        ("dvc.yaml", "the pipeline's definition (dvc.yaml)"),
        ("dvc.lock", "DVC's record of the pipeline's results (dvc.lock)"),
        ("data/raw/marketing_sample.csv", "DVC-tracked data (data/raw/marketing_sample.csv.dvc)"),
        ("data/raw/marketing_sample.csv.dvc", "DVC's record of tracked data (data/raw/marketing_sample.csv.dvc)"),
        (f"{P['dagshub']}/evaluate/new.csv", f"inside {P['dagshub']}, a path of the pipeline (paths.dagshub in "
         "dvc.yaml)"),
        (f"{P['dagshub']}/evaluate/metrics.csv", "a plot of the pipeline's evaluate stage (dvc.yaml)"),
        (f"{P['evaluate_plots']}/new.csv", f"inside {P['evaluate_plots']}, a path of the pipeline "
         "(paths.evaluate_plots in dvc.yaml)"),
        ("src/segmentation/core/data.py", "inside src/segmentation/core, a dependency of the pipeline's preprocess "
         "stage (dvc.yaml)"),
        ("Makefile", "a file git tracks"),
    ],
    ids=["segments", "segmenter", "profile", "params", "dvc.yaml", "dvc.lock", "raw-data", "raw-data.dvc",
         "in-dagshub", "dagshub-file", "in-plots", "stage-dep", "git"],
)  # fmt: skip
def test_output_that_the_pipeline_tracks_is_refused(project, monkeypatch, capsys, output, what):
    root, env = project
    target, rejects = root / output, root / rejects_path(output)
    status = run(["git", "status", "--porcelain"], root, env).stdout
    with restored(target, rejects):
        before = target.read_bytes() if target.exists() else None
        code, _, err = score_main(root, monkeypatch, capsys, "--input", "new_customers.csv", "--output", output)
        line = the_one_line(code, err)
        assert line == (
            f"error: score: --output {output} is {what}; choose another file "
            "(default: scores/new_customers_segments.csv)"
        )
        assert (target.read_bytes() if target.exists() else None) == before and not rejects.exists()
        assert run(["git", "status", "--porcelain"], root, env).stdout == status


@pytest.mark.parametrize(
    ("output", "existing", "content"),
    [
        ("notes.csv", "notes.csv", "a,b\n1,2\n"),
        ("old_segments.csv", "old_segments.csv", "ID,cluster\n5524,2\n"),  # segments.csv's columns, not score's
        ("empty.csv", "empty.csv", ""),
        ("mine.csv", "mine_rejects.csv", "ID,note\n5524,call back\n"),  # the user's file where the rejects go
        ("mine.csv", "mine_summary.md", "# My notes\n"),  # the user's file where the summary goes
    ],
    ids=["other-table", "segments-like", "empty", "rejects-file", "summary-file"],
)
def test_an_existing_file_that_is_no_score_output_is_refused(project, monkeypatch, capsys, output, existing, content):
    root, _ = project
    (root / existing).write_text(content)
    try:
        code, _, err = score_main(root, monkeypatch, capsys, "--input", "new_customers.csv", "--output", output)
        line = the_one_line(code, err)
        header, shown = {
            output: ("ID,segment,segment_name", f"--output {output}"),
            str(rejects_path(output)): ("ID,reason", f"--output {output}'s rejects file {existing}"),
            str(summary_path(output)): ("# Score summary", f"--output {output}'s summary file {existing}"),
        }[existing]
        assert line == (
            f"error: score: {shown} exists and is not a score output (its header is not {header}); "
            "choose another file (default: scores/new_customers_segments.csv), or move it away"
        )
        assert (root / existing).read_text() == content
        assert existing == output or not (root / output).exists()
    finally:
        for name in {output, existing, str(rejects_path(output)), str(summary_path(output))}:
            (root / name).unlink(missing_ok=True)


def test_a_previous_score_output_is_overwritten(project, monkeypatch, capsys):
    root, _ = project
    out = root / "scores" / "again.csv"
    out.parent.mkdir(exist_ok=True)
    out.write_text("ID,segment,segment_name\n1,0,stale\n")  # an earlier run's output, of other customers
    rejects = out.with_name("again_rejects.csv")
    rejects.write_text("ID,reason\n1,blank Income\n")
    summary = out.with_name("again_summary.md")
    summary.write_text("# Score summary\n\n- stale\n")
    for _ in range(2):  # over the stale ones, then over its own
        code, stdout, err = score_main(
            root, monkeypatch, capsys, "--input", "new_customers.csv", "--output", "scores/again.csv"
        )
        assert code == 0 and "-> scores/again.csv" in stdout, err
        scores = pd.read_csv(out)
        assert list(scores.columns) == ["ID", "segment", "segment_name"] and len(scores) == 428 - BLANK_INCOME
        assert len(pd.read_csv(rejects)) == BLANK_INCOME
        assert "stale" not in summary.read_text() and f"- not scored: {BLANK_INCOME} " in summary.read_text()


@pytest.mark.parametrize(
    ("name", "holds"),
    [
        ("model", "a KMeans (the bare clusterer)"),
        ("preprocessor", "a Pipeline of scale, pca (the fitted preprocessing)"),
    ],
    ids=["model", "preprocessor"],
)
def test_the_wrong_model_file_is_one_line(project, name, holds):
    root, env = project
    cmd = [sys.executable, "-m", "segmentation.tools.score", "--input", "new_customers.csv",
           "--output", "out/wrong.csv", "--model", P[name]]  # fmt: skip
    proc = run(cmd, root, env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {P[name]} holds {holds}, not the segmenter (recipe, preprocessing and clusterer); "
        f"use {P['segmenter']} (paths.segmenter in dvc.yaml, read when --model is left out)"
    ]
    assert not (root / "out").exists()


def test_make_score_reads_a_comma_separated_file_with_separator(project):
    root, env = project
    rows = pd.read_csv(root / "new_customers.csv", sep="\t").head(30)
    rows.to_csv(root / "comma.csv", index=False)
    rows.to_csv(root / "tabs.csv", sep="\t", index=False)
    # Without SEPARATOR: one line whose advice is score's own option, not the pipeline's params.
    proc = run(["make", "score", "INPUT=comma.csv"], root, env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("error: comma.csv: only one column found with separator '\\t'"), errors
    assert "--separator , (make score ... SEPARATOR=,)" in errors[0] and "set preprocess" not in errors[0]
    assert not (root / "scores" / "comma_segments.csv").exists()
    # With it: the same segments as the tab-separated file's; params.yaml is untouched.
    params = (root / "params.yaml").read_bytes()
    run(["make", "score", "INPUT=comma.csv", "SEPARATOR=,"], root, env)
    run(["make", "score", "INPUT=tabs.csv"], root, env)
    comma = pd.read_csv(root / "scores" / "comma_segments.csv")
    assert len(comma) == 30 - rows["Income"].isna().sum()
    assert comma.equals(pd.read_csv(root / "scores" / "tabs_segments.csv"))
    assert (root / "params.yaml").read_bytes() == params


def test_separator_option_spelled_for_the_shell():
    from segmentation.tools.score import separator_fix, separator_option

    assert separator_option("\\t") == "\t" and separator_option(",") == "," and separator_option("") is None
    assert "--separator ';' (make score ... SEPARATOR=';')" in separator_fix(";")
    assert "--separator '\\t' (make score ... SEPARATOR='\\t')" in separator_fix("\t")


def test_bad_values_are_counted(trained, raw, preprocess_params):
    _, _, segmenter = trained
    raw["Income"] = raw["Income"].astype(object)
    raw.loc[[3, 5, 9], "Income"] = ["abc", "12k", "n/a"]
    with pytest.raises(UserError, match=r"^new.csv: column Income must be numeric; e.g. 'abc' on line 5 \(3 such"):
        score(raw, segmenter, preprocess_params, "new.csv")
    raw.loc[[5, 9], "Income"] = [1.0, 2.0]
    with pytest.raises(UserError, match=r"^new.csv: column Income must be numeric; e.g. 'abc' on line 5$"):
        score(raw, segmenter, preprocess_params, "new.csv")  # one bad value: the message as before


# -- the MLflow model of the train run, served over HTTP ------------------------------------------------------------


def train_run_id(root: Path) -> str:
    with sqlite3.connect(root / "mlflow.db") as db:
        rows = db.execute("SELECT run_uuid FROM runs WHERE name = 'train' ORDER BY start_time DESC").fetchall()
    assert len(rows) == 1, rows
    return rows[0][0]


def test_served_model_answers_the_segments_over_http(project):  # in `make test` too: a real server on 127.0.0.1
    root, _ = project
    run_id = train_run_id(root)
    assert (next((root / "mlruns").rglob("segmenter/MLmodel"))).is_file()
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"runs:/{run_id}/segmenter",
        "--env-manager", "local", "-h", HOST, "-p", str(port), "--workers", "1",
    ]  # fmt: skip
    env = server_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin",
        PIP_NO_INDEX="1",  # nothing may be installed: --env-manager local uses this environment as it is
    )
    segments = pd.read_csv(root / P["segments"])
    raw = pd.read_csv(root / "new_customers.csv", sep="\t")
    rows = raw[raw["ID"].isin(segments["ID"])].head(60)  # raw rows, every column of the file (ID included)
    body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    with process_group(cmd, root, env, root / "serve.log") as proc:
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/ping", timeout=120, proc=proc, log=root / "serve.log")
        request = Request(
            f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        csv_request = Request(
            f"{url}/invocations", data=rows.drop(columns=["ID"]).to_csv(index=False).encode(),
            headers={"Content-Type": "text/csv"},
        )  # fmt: skip
        with urlopen(csv_request, timeout=60) as response:
            csv_answer = json.loads(response.read())
    expected = segments.set_index("ID").loc[rows["ID"], "cluster"].tolist()
    assert answer["predictions"] == expected
    assert csv_answer["predictions"] == expected
    assert proc.returncode is not None  # stopped


def test_mlflow_model_is_not_a_dvc_output():
    """Its MLmodel holds a creation time and a UUID: only the segmenter's pickle is versioned by DVC."""
    names = stages()["train"].outs
    assert P["segmenter"] in names and not any("mlflow" in n or n.endswith("segmenter") for n in names)


def test_a_kept_run_keeps_its_model_directory(tmp_path):
    """A run the store could not take waits in mlruns-pending/ with its directory artifacts (the MLflow model),
    and is recorded with them later (make sync)."""
    from segmentation.tracking.settings import TrackingSettings
    from segmentation.tracking.store import PENDING_DIR, MlflowClientFor, PendingRun, replay_pending

    model = tmp_path / "tmp" / "segmenter"
    (model / "sub").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "sub" / "model.pkl").write_bytes(b"pickle")
    (tmp_path / "plot.png").write_bytes(b"png")
    pending = PendingRun("train", {"train.k_max": 3}, {"k_best": 2}, {"stage": "train"}, [str(tmp_path / "plot.png")],
                         1, 2, artifact_dirs={"segmenter": str(model)})  # fmt: skip
    kept = pending.save(tmp_path, [tmp_path / "plot.png"])
    record = json.loads((kept / "run.json").read_text())
    assert record["artifact_dirs"] == {"segmenter": "segmenter"}
    assert (kept / "artifact_dirs" / "segmenter" / "sub" / "model.pkl").read_bytes() == b"pickle"
    (model / "MLmodel").unlink()  # the stage's temporary folder is gone by the time the run is replayed

    settings = TrackingSettings.resolve(tmp_path, environ={})
    client = MlflowClientFor(settings.local_uri)
    assert replay_pending(client, settings, tmp_path) == 1
    assert not (tmp_path / PENDING_DIR).exists()
    (run,) = stage_runs(client, [client.get_experiment_by_name(settings.experiment_name).experiment_id])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"plot.png", "segmenter"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "segmenter")} == {
        "segmenter/MLmodel",
        "segmenter/sub",
    }


def test_segment_names_only_when_the_profile_has_them_for_these_segments(tmp_path):
    from segmentation.tools.score import segment_names, with_names

    profile = tmp_path / "cluster_profile.csv"
    assert segment_names(profile, 2) is None  # no profile yet
    profile.write_text("cluster,name,size\n0,Big spenders,10\n1,Young families,12\n")
    assert segment_names(profile, 2) == {0: "Big spenders", 1: "Young families"}
    assert segment_names(profile, 3) is None  # a profile of another model
    profile.write_text("cluster,size\n0,10\n1,12\n")
    assert segment_names(profile, 2) is None  # an older profile, without names
    scored = pd.DataFrame({"ID": [7, 8], "segment": [1, 0]})
    assert with_names(scored, {0: "a", 1: "b"})["segment_name"].tolist() == ["b", "a"]
    assert with_names(scored, None)["segment_name"].tolist() == ["", ""]


# -- drift: the new customers' segment mix against training's ----------------------------------------------------------


def test_psi_is_the_sum_over_segments_with_a_floor_for_empty_ones():
    training = pd.Series([0.5, 0.3, 0.2])
    assert psi(training, training) == 0
    new = pd.Series([0.7, 0.3, 0.0])  # an empty segment counts as PSI_FLOOR
    expected = (0.7 - 0.5) * np.log(0.7 / 0.5) + (PSI_FLOOR - 0.2) * np.log(PSI_FLOOR / 0.2)
    assert psi(training, new) == pytest.approx(expected)


def test_a_shifted_mix_warns_and_an_unshifted_one_does_not(project, monkeypatch, capsys):
    root, _ = project
    customers = pd.read_csv(root / "new_customers.csv", sep="\t")
    segments = pd.read_csv(root / P["segments"])
    shifted = customers[customers["ID"].isin(segments.loc[segments["cluster"] == 0, "ID"])]  # one segment's only
    shifted.to_csv(root / "shifted.csv", sep="\t", index=False)
    customers.sample(frac=0.5, random_state=0).to_csv(root / "half.csv", sep="\t", index=False)  # a sample of all
    profile = pd.read_csv(root / P["profile"], index_col="cluster")
    training = profile["size"] / profile["size"].sum()
    try:
        for name, warns in [("half", False), ("shifted", True)]:
            code, out, err = score_main(
                root, monkeypatch, capsys, "--input", f"{name}.csv", "--output", f"out_{name}.csv"
            )
            assert code == 0, err
            new = pd.read_csv(root / f"out_{name}.csv")["segment"].value_counts(normalize=True)
            new = new.reindex(training.index, fill_value=0.0).clip(lower=PSI_FLOOR)
            direct = sum((n - t) * np.log(n / t) for t, n in zip(training, new, strict=True))
            assert f"(population stability index over segments: {direct:.4f})" in out
            summary = (root / f"out_{name}_summary.md").read_text()
            assert summary.startswith("# Score summary\n") and f"population stability index: {direct:.4f} (" in summary
            assert f"| 0 | {profile.loc[0, 'name']} | {training[0]:.4f} | {new[0]:.4f} |" in summary
            warnings = [line for line in err.splitlines() if line.startswith("warning:")]
            assert bool(direct > 0.2) == warns and len(warnings) == warns, err
            assert not warns or ("the segment mix has shifted" in warnings[0] and "retraining" in warnings[0])
    finally:
        for name in ("half", "shifted"):
            for path in (f"{name}.csv", f"out_{name}.csv", f"out_{name}_summary.md", f"out_{name}_rejects.csv"):
                (root / path).unlink(missing_ok=True)


def test_names_of_another_model_are_refused_in_one_line(project, tmp_path):
    """Train re-run alone (another algorithm: `dvc repro -s train`) leaves evaluate's profile naming the old model's
    segments: score refuses, in one line naming what to re-run, and writes nothing; after `dvc repro` it scores."""
    root, env = project
    copy = tmp_path / "project"
    shutil.copytree(root, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["train"]["algorithm"] = "bisecting_kmeans"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "--single-item", "train"], copy, env)
    score = [sys.executable, "-m", "segmentation.tools.score", "--input", "new_customers.csv", "--output", "s.csv"]
    refused = run(score, copy, env, check=False)
    assert refused.returncode == 2 and not (copy / "s.csv").exists()
    assert refused.stderr.strip() == (
        f"error: {P['profile']}: its segment names may belong to another model than {P['segmenter']} (train ran "
        "again after evaluate); run `dvc repro` (it re-runs evaluate), then score again"
    )
    run(["dvc", "repro"], copy, env)
    assert run(score, copy, env).returncode == 0 and (copy / "s.csv").is_file()


def test_names_are_checked_against_dvc_lock_only_for_its_own_files(tmp_path, monkeypatch):
    import hashlib

    from segmentation.tools.score import check_names_belong

    monkeypatch.chdir(tmp_path)
    Path("m.joblib").write_bytes(b"model")
    Path("p.csv").write_bytes(b"profile")
    model, profile = hashlib.md5(b"model").hexdigest(), hashlib.md5(b"profile").hexdigest()
    lock = {
        "stages": {
            "train": {"outs": [{"path": "m.joblib", "md5": model}]},
            "evaluate": {"deps": [{"path": "m.joblib", "md5": model}], "outs": [{"path": "p.csv", "md5": profile}]},
        }
    }
    Path("dvc.lock").write_text(json.dumps(lock))  # JSON is YAML
    check_names_belong("m.joblib", "p.csv")  # as dvc.lock has them
    check_names_belong("other.joblib", "p.csv")  # a model dvc.lock does not know: not checked
    Path("p.csv").write_bytes(b"edited")
    with pytest.raises(UserError, match=r"p.csv changed since dvc.lock"):
        check_names_belong("m.joblib", "p.csv")
    Path("p.csv").write_bytes(b"profile")
    lock["stages"]["train"]["outs"][0]["md5"] = "0" * 32  # train wrote another model after evaluate read this one
    Path("dvc.lock").write_text(json.dumps(lock))
    with pytest.raises(UserError, match=r"train ran again after evaluate.*m.joblib changed since dvc.lock"):
        check_names_belong("m.joblib", "p.csv")

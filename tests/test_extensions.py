"""Each extension is made in one place (issue 18): an algorithm is one entry of ``segmentation.algorithms.REGISTRY``
plus its params section, a feature recipe one entry of ``segmentation.recipes.REGISTRY`` plus its section, a stage
its module, its ``dvc.yaml`` entry and its section. Each test adds one that way only, at run time, and runs it through
the stages as ``dvc.yaml`` calls them (their ``main`` in this process, so that the registration reaches them).
tests/test_extensions_pipeline.py runs a new stage under ``dvc repro``.
"""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from pipeline_helpers import FIXTURE_DATA, FIXTURE_PARAMS, REPO, stage_runs
from segmentation import algorithms, pipeline, recipes
from segmentation.algorithms import Algorithm, AlgorithmParams
from segmentation.errors import UserError

EXPERIMENT = "extensions"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project with the template's dvc.yaml (the stages' commands and paths), as the working directory."""
    shutil.copyfile(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "pyproject.toml").write_text(f'[tool.segmentation]\nexperiment_name = "{EXPERIMENT}"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENTATION_PIPELINE_RUN_ID", "extensions")
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return tmp_path


def run_stage(root: Path, name: str) -> None:
    """Run stage ``name`` as ``dvc.yaml`` declares it (``python -m <module> <paths>``), its ``main`` in-process."""
    words = shlex.split(pipeline.stages(root)[name]["cmd"])
    at = words.index("-m")
    importlib.import_module(words[at + 1]).main(words[at + 2 :])


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# -- an algorithm: one registry entry + its params section ----------------------------------------------------------
class BirchParams(AlgorithmParams):
    """``train.birch``: scikit-learn's ``Birch`` (its knobs; k from the elbow search)."""

    threshold: float = Field(default=0.5, gt=0)
    branching_factor: int = Field(default=50, ge=2)


def _birch(p, k: int):
    from sklearn.cluster import Birch

    return Birch(n_clusters=k, threshold=p.birch.threshold, branching_factor=p.birch.branching_factor)


BIRCH = Algorithm("BIRCH", "Birch", _birch, lambda p: algorithms.ELBOW, params=BirchParams)


def test_an_algorithm_is_one_registry_entry_and_its_params_section(project, monkeypatch, capsys):
    """Birch, registered in the registry only (and named in params.yaml), goes through preprocess, train (the elbow
    search), evaluate (the model file recognised as a fitted Birch: scikit-learn's check_is_fitted) and scoring."""
    monkeypatch.setitem(algorithms.REGISTRY, "birch", BIRCH)
    params = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
    params["train"] |= {"algorithm": "birch", "k_max": 6, "birch": {"threshold": 0.3}}
    write_params(project, params)
    data = project / params["preprocess"]["data"]["path"]
    data.parent.mkdir(parents=True)
    shutil.copyfile(REPO / FIXTURE_DATA, data)

    for stage in ("preprocess", "train", "evaluate"):
        run_stage(project, stage)
    paths = pipeline.paths(project)
    model = joblib.load(project / paths["model"])
    assert type(model).__name__ == "Birch" and model.threshold == 0.3 and algorithms.is_fitted(model)
    trained = json.loads((project / paths["train_metrics"]).read_text())
    evaluated = json.loads((project / paths["evaluate_metrics"]).read_text())
    assert trained["search_rows"] == 400 and evaluated["n_clusters"] == trained["k_best"] == model.n_clusters
    assert "BIRCH" in (project / paths["report"]).read_text()  # the registry's label
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = stage_runs(client, [client.get_experiment_by_name(EXPERIMENT).experiment_id])
    train_run = next(r for r in runs if r.info.run_name == "train")
    assert train_run.data.params["train.birch.threshold"] == "0.3"  # its section, logged like the others

    # New customers through the segmenter (recipe, preprocessing, Birch's predict): make score.
    (project / "new.csv").write_text((REPO / FIXTURE_DATA).read_text())
    importlib.import_module("segmentation.tools.score").main(["--input", "new.csv", "--output", "scores/new.csv"])
    scored = pd.read_csv(project / "scores" / "new.csv")
    segments = pd.read_csv(project / paths["segments"])
    both = scored.merge(segments, on="ID")
    assert len(both) == len(segments) and (both["segment"] == both["cluster"]).all()

    # Its params are validated like every section's, and an unfitted model file is caught by evaluate.
    params["train"]["birch"] = {"threshold": 0}
    write_params(project, params)
    with pytest.raises(SystemExit):
        run_stage(project, "train")
    assert "error: params.yaml: train.birch.threshold: Input should be greater than 0" in capsys.readouterr().err
    from sklearn.cluster import Birch

    joblib.dump(Birch(n_clusters=3), project / paths["model"])
    with pytest.raises(SystemExit):
        run_stage(project, "evaluate")
    assert "holds an unfitted Birch, not a fitted clustering model" in capsys.readouterr().err


def test_the_registry_is_the_only_list_of_algorithms(monkeypatch):
    """Unregistered, the same params are an unknown algorithm and an unknown sub-section."""
    from segmentation.config import parse_section

    raw = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())["train"] | {"algorithm": "birch"}
    with pytest.raises(UserError, match=r"train\.algorithm: unknown algorithm 'birch'"):
        parse_section("train", raw)
    with pytest.raises(UserError, match=r"train\.birch: unknown parameter"):
        parse_section("train", {**raw, "algorithm": "kmeans", "birch": {}})
    monkeypatch.setitem(algorithms.REGISTRY, "birch", BIRCH)
    assert parse_section("train", raw).algorithm_params == BirchParams()  # its section's defaults


# -- a feature recipe: one registry entry (its function) + its params section ---------------------------------------
class PerVisitParams(BaseModel):
    """``preprocess.per_visit``: spend per visit, visits counted from ``min_visits``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_visits: int = Field(ge=1)


def spend_per_visit(df: pd.DataFrame, params: PerVisitParams, source: str, lines) -> pd.DataFrame:
    """The recipe: ``spend_per_visit`` = (spend_a + spend_b) / max(visits, min_visits)."""
    visits = df["visits"].clip(lower=params.min_visits)
    return df.assign(spend_per_visit=(df["spend_a"] + df["spend_b"]) / visits)


PER_VISIT = recipes.Recipe(
    derive=spend_per_visit,
    derived=("spend_per_visit",),
    inputs=lambda p: ["spend_a", "spend_b", "visits"],
    numeric=lambda p: ["spend_a", "spend_b", "visits"],
    params=PerVisitParams,
)


def shop_table(rows: int = 120) -> pd.DataFrame:
    """A small table of another schema (no marketing columns), three groups of customers."""
    rng = np.random.default_rng(3)
    group = np.arange(rows) % 3
    return pd.DataFrame(
        {
            "customer": np.arange(1000, 1000 + rows),
            "spend_a": np.round(rng.gamma(2.0, 50.0, rows) * (1 + 4 * (group == 1)), 2),
            "spend_b": np.round(rng.gamma(2.0, 30.0, rows) * (1 + 4 * (group == 2)), 2),
            "visits": rng.integers(0, 12, rows),
            "channel": np.where(group == 0, "web", "store"),
        }
    )


def test_a_recipe_is_one_registry_entry_and_its_params_section(project, monkeypatch):
    """A recipe registered in the registry only is selected by preprocess.recipe: preprocess derives its column,
    and the segmenter derives it again for a raw row it scores."""
    monkeypatch.setitem(recipes.REGISTRY, "per_visit", PER_VISIT)
    table = shop_table()
    (project / "data" / "raw").mkdir(parents=True)
    table.to_csv(project / "data" / "raw" / "shop.csv", index=False)
    base = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
    params = {
        "preprocess": {
            "data": {"path": "data/raw/shop.csv", "separator": ",", "id_column": "customer"},
            "recipe": "per_visit",
            "per_visit": {"min_visits": 1},
            "features": ["spend_a", "spend_b", "spend_per_visit"],
            "pca_components": None,
        },
        "train": base["train"] | {"k_max": 5},
        "evaluate": base["evaluate"] | {"profile_columns": ["channel"]},
    }
    write_params(project, params)
    run_stage(project, "preprocess")
    paths = pipeline.paths(project)
    features = pd.read_parquet(project / paths["features"])
    expected = (table["spend_a"] + table["spend_b"]) / table["visits"].clip(lower=1)
    np.testing.assert_allclose(features["spend_per_visit"], expected)
    assert list(features.columns) == ["customer", "spend_a", "spend_b", "spend_per_visit", "channel"]

    run_stage(project, "train")
    segmenter = joblib.load(project / paths["segmenter"])
    step = segmenter.named_steps["features"]
    assert (step.recipe, step.recipe_params) == ("per_visit", {"min_visits": 1})
    assert step.raw_columns() == ["spend_a", "spend_b", "visits"]
    raw_row = table.drop(columns=["customer", "channel"]).head(1)
    assert step.transform(raw_row)["spend_per_visit"].iloc[0] == pytest.approx(expected.iloc[0])
    segments = segmenter.predict(table.head(5))
    model = joblib.load(project / paths["model"])
    np.testing.assert_array_equal(segments, model.labels_[:5])  # as trained

    # Its section is checked as the others are: the selected recipe needs it, and validates it.
    for section, message in [
        (None, "preprocess: recipe 'per_visit' needs a per_visit section"),
        ({"min_visits": 0}, "preprocess.per_visit.min_visits: Input should be greater than or equal to 1"),
    ]:
        if section is None:
            params["preprocess"].pop("per_visit")
        else:
            params["preprocess"]["per_visit"] = section
        write_params(project, params)
        with pytest.raises(UserError, match=message):
            importlib.import_module("segmentation.config").load_section("preprocess")
    monkeypatch.delitem(recipes.REGISTRY, "per_visit")
    with pytest.raises(UserError, match=r"preprocess.recipe: unknown recipe 'per_visit'; one of: marketing_campaign"):
        importlib.import_module("segmentation.config").load_section("preprocess")


def test_no_recipe_names_the_table_s_own_columns(project):
    """recipe: null, the default: no derivation (any table)."""
    from segmentation.config import parse_section
    from segmentation.core.transform import preprocess

    raw = {"data": {"path": "shop.csv", "separator": ","}, "features": ["spend_a", "visits"]}
    params = parse_section("preprocess", raw)
    assert params.recipe is None and params.recipe_params is None
    result = preprocess(shop_table(), params, "shop.csv")
    assert list(result.features.columns) == ["row_id", "spend_a", "visits"]


# -- a stage: its module, its dvc.yaml entry, its params section ----------------------------------------------------
SUMMARY_MODULE = '''
"""Stage ``summary``: one line on the segments (a stage added to the template: module, dvc.yaml entry, params)."""

import json

from pydantic import BaseModel, ConfigDict, Field

from segmentation.stages.runner import Outcome, cli


class SummaryParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    decimals: int = Field(ge=0, le=6)


def work(args, params, raw_params):
    metrics = json.loads(open(args.evaluate_metrics).read())
    line = f"{metrics['n_clusters']} segments, silhouette {metrics['silhouette']:.{params.decimals}f}\\n"

    def write(out, log):
        out.write_text(args.summary, line)
        log.log_params({"summary.decimals": params.decimals})
        log.log_metrics({"segments": metrics["n_clusters"]})

    return Outcome(write, f"summary: {line.strip()}")


main = cli(
    "summary",
    __doc__,
    work,
    {"evaluate_metrics": "input: the evaluate stage's metrics", "summary": "output: one line"},
    params_model=SummaryParams,
)

if __name__ == "__main__":
    main()
'''


def add_summary_stage(root: Path, module: str) -> None:
    """The new stage, in the three places a stage is: its module (beside dvc.yaml), its dvc.yaml entry (appended
    as written, the template's entries left as they are), its params section."""
    (root / f"{module}.py").write_text(SUMMARY_MODULE)
    entry = {
        "cmd": f"python -m {module} "  # no doubled braces here: a generated project must hold no template marker
        "--evaluate-metrics ${paths.evaluate_metrics} --summary reports/summary.txt "
        "--dagshub-dir ${paths.dagshub}/summary",
        "deps": ["${paths.evaluate_metrics}", f"{module}.py"],
        "params": ["summary"],
        "outs": [{"reports/summary.txt": {"cache": False}}, {"${paths.dagshub}/summary": {"cache": False}}],
    }
    with (root / "dvc.yaml").open("a") as fh:
        fh.write("\n" + textwrap.indent(yaml.safe_dump({"summary": entry}, sort_keys=False, width=200), "  "))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["summary"] = {"decimals": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_stage_is_its_module_its_dvc_yaml_entry_and_its_params_section(project, monkeypatch, capsys):
    """A fourth stage, declared in those three places only, runs with the runner: its section validated by its own
    model, its run logged with its params; the tools that go over the stages read it from dvc.yaml."""
    module = "summary_stage_inprocess"
    write_params(project, {"evaluate": {"silhouette_sample_size": 10, "random_state": 0}})
    add_summary_stage(project, module)
    monkeypatch.syspath_prepend(str(project))
    paths = pipeline.paths(project)
    (project / paths["evaluate_metrics"]).parent.mkdir(parents=True)
    (project / paths["evaluate_metrics"]).write_text(json.dumps({"n_clusters": 4, "silhouette": 0.31234}))

    assert list(pipeline.stages(project)) == ["preprocess", "train", "evaluate", "summary"]
    run_stage(project, "summary")
    assert (project / "reports" / "summary.txt").read_text() == "4 segments, silhouette 0.31\n"
    assert capsys.readouterr().out.endswith("summary: 4 segments, silhouette 0.31\n")
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = stage_runs(client, [client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.run_name == "summary" and run.data.params["summary.decimals"] == "2"

    from segmentation.config import load_section

    assert load_section("summary").decimals == 2  # its model, as its module declared it
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["summary"] = {"decimals": 9}
    write_params(project, params)
    with pytest.raises(SystemExit) as stopped:
        run_stage(project, "summary")
    assert stopped.value.code == 2
    assert "error: params.yaml: summary.decimals: Input should be less than or equal to 6" in capsys.readouterr().err
    sys.modules.pop(module, None)


def test_a_stage_without_a_params_model_gets_its_section_as_written(project):
    from segmentation.stages.runner import Outcome, cli

    write_params(project, {"notes": {"anything": [1, 2]}})
    seen = {}

    def work(args, params, raw_params):
        seen["params"] = params
        return Outcome(lambda out, log: out.write_text(args.result, "ok\n"), "notes: ok")

    cli("notes", None, work, {"result": "output"})(["--result", "out.txt", "--dagshub-dir", "dagshub"])
    assert seen["params"] == {"anything": [1, 2]} and (project / "out.txt").read_text() == "ok\n"

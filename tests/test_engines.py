"""The engine a stage runs on (``preprocess.engine``, :mod:`segmentation.engines`), whichever extras are installed:
the local engine is the stages' own code; an optional engine (dask) is loaded at run time only, and a stage (or `make
score`) on an engine whose extra is not installed, or that the project does not have (generated without it), stops
with one ``error:`` line, exit 2, nothing written. Then the params checks of the engines, which need no Dask.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline_helpers import FIXTURE_DATA, FIXTURE_PARAMS, REPO, project_env, the_error
from segmentation.config import PreprocessParams
from segmentation.engines import EXTRA_PACKAGES, engine_module
from segmentation.errors import UserError

# Runs a module as `python -m` does, with the dask extra's packages made impossible to import (as if not installed,
# whether or not this environment has them): the stages' and `make score`'s command lines as they are.
WITHOUT_DASK = """
import runpy, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in PACKAGES:
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
""".replace("PACKAGES", repr(EXTRA_PACKAGES["dask"]))
# A project generated without the Dask engine (copier: dask_engine false) has no engines/dask folder.
HAS_DASK_ENGINE = (REPO / "src/segmentation/engines/dask").is_dir()
NO_EXTRA = "error: preprocess.engine: dask needs the dask extra: make setup EXTRAS=dask"
NO_ENGINE = (
    "error: preprocess.engine: dask: this project has no such engine (src/segmentation/engines/dask: it was generated "
    "without it); set preprocess.engine: local"
)
OUT = ["--dagshub-dir", "out/dh"]
COMMANDS = {
    "preprocess": ["segmentation.stages.preprocess", "--features", "out/f.parquet", "--matrix", "out/m.parquet",
                   "--transformer", "out/t.joblib", "--metrics", "out/p.json", *OUT],
    "train": ["segmentation.stages.train", "--matrix", "m.parquet", "--model", "out/m.joblib", "--elbow-plot",
              "out/e.png", "--elbow-scores", "out/e.csv", "--metrics", "out/t.json", *OUT],
    "evaluate": ["segmentation.stages.evaluate", "--matrix", "m.parquet", "--features", "f.parquet", "--model",
                 "m.joblib", "--train-metrics", "t.json", "--segments", "out/s.csv", "--profile", "out/p.csv",
                 "--metrics", "out/e.json", "--plots-dir", "out/plots", *OUT],
    "score": ["segmentation.tools.score", "--input", "new.csv", "--output", "out/new.parquet", "--model", "m.joblib",
              "--profile", "p.csv"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(COMMANDS))
def test_engine_dask_without_its_extra_is_one_line_and_writes_nothing(tmp_path, command):
    """Each stage and `make score` picks the engine first: without the dask extra, that one line (in a project
    generated without the engine, the line that says so) before any input is read or any output written."""
    sections = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
    sections["preprocess"]["engine"] = "dask"
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(sections))
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DASK, *COMMANDS[command]],
        cwd=project, env=project_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert the_error(proc, project) == (NO_EXTRA if HAS_DASK_ENGINE else NO_ENGINE)
    assert [p.name for p in project.iterdir()] == ["params.yaml"]


def test_the_local_stages_load_no_optional_engine(tmp_path):
    """Importing the stages and `make score` (what every local run does) loads no engine module and no Dask package,
    installed or not (tests/test_stage_deps.py checks the same on the import graph as written)."""
    code = (
        "import sys\n"
        "import segmentation.stages.preprocess, segmentation.stages.train, segmentation.stages.evaluate\n"
        "import segmentation.tools.score\n"
        f"optional = {sorted(EXTRA_PACKAGES['dask'])!r}\n"
        "print(sorted(m for m in sys.modules if m.startswith('segmentation.engines.') or m.split('.')[0] in optional))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=project_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_an_engine_the_project_does_not_have_is_one_line():
    with pytest.raises(UserError) as error:
        engine_module("spark", "train")
    assert str(error.value) == (
        "preprocess.engine: spark: this project has no such engine (src/segmentation/engines/spark: it was generated "
        "without it); set preprocess.engine: local"
    )


def test_a_missing_module_that_is_not_the_extra_s_stays_a_bug(monkeypatch):
    """Only the extra's packages (and a missing engine) are the user's to fix: any other missing module keeps its
    traceback."""
    import segmentation.engines as engines

    def broken(name):
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setattr(engines.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError):
        engine_module("dask", "train")


# -- the engines' params, checked on any engine (preprocess.dask: by the Dask engine, tests/test_dask_engine.py) ----
def test_engine_dask_takes_every_preprocess_setting(preprocess_params):
    """A generated row_id, median imputation and one-hot columns are params of the Dask engine too (they were one
    params error each before it did them)."""
    base = preprocess_params.model_dump()
    for change in [
        {"missing": "median"},
        {"data": {**base["data"], "id_column": None}},
        {"categorical": {"columns": ["Education"], "encoding": "onehot"}},
    ]:
        assert PreprocessParams.model_validate({**base, "engine": "dask", **change}).engine == "dask"


@pytest.mark.parametrize("path", ["data/*.csv", "data/x.parquet", "s3://bucket/x.csv", "remote://origin/x.csv"])
def test_the_local_engine_names_what_needs_dask(preprocess_params, path):
    from pydantic import ValidationError

    base = preprocess_params.model_dump()
    with pytest.raises(ValidationError, match="engine 'local' reads one local CSV file"):
        PreprocessParams.model_validate({**base, "data": {**base["data"], "path": path}})
    PreprocessParams.model_validate({**base, "engine": "dask", "data": {**base["data"], "path": path}})


def test_scoring_a_glob_with_the_local_engine_is_one_line(tmp_path, monkeypatch, capsys):
    from segmentation.tools import score

    params = yaml.safe_load((REPO / FIXTURE_PARAMS).read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        score.main(["--input", "new/*.csv", "--model", "m.joblib", "--profile", "p.csv"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "error: --input new/*.csv: a glob, Parquet or S3 input is scored on Dask: set preprocess.engine: dask\n"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"]


def test_a_csv_whose_name_holds_a_bracket_stays_the_local_engine_s(preprocess_params, tmp_path):
    name = tmp_path / "customers[2024].csv"
    name.write_bytes((REPO / FIXTURE_DATA).read_bytes())
    base = preprocess_params.model_dump()
    PreprocessParams.model_validate({**base, "data": {**base["data"], "path": str(name)}})

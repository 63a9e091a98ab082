"""dvc.yaml declares every module a stage runs: a change to any of them re-runs the stage (and only those stages)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline_helpers import REPO, stages

PACKAGE = "segmentation"
SRC = REPO / "src"


def stage_modules() -> dict[str, str]:
    """Stage name -> the module its command runs (``python -m segmentation.<module>``)."""
    out = {}
    for name, stage in stages().items():
        match = re.search(rf"python -m ({PACKAGE}\.[\w.]+)", stage.cmd)
        assert match, f"stage {name}: command does not run a module of {PACKAGE}: {stage.cmd}"
        out[name] = match.group(1)
    return out


def module_file(module: str) -> Path:
    path = SRC / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(module: str) -> set[str]:
    """Modules of the package that ``module`` imports, anywhere in its body (lazy imports in functions too)."""
    tree = ast.parse(module_file(module).read_text(), filename=str(module_file(module)))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from segmentation import data` imports the submodule segmentation.core.data
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == PACKAGE and module_file(n).is_file())
    return found


def closure(module: str) -> set[str]:
    """``module``, every package module it imports transitively, and the packages that contain them."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b runs a/__init__.py
        todo.extend(imported_modules(current))
    return seen


ENGINES = f"src/{PACKAGE}/engines"
ENGINE_DEP = ENGINES + "/${preprocess.engine}"  # the engine's folder: local (no code) or an optional engine's


def written_deps(stage: str) -> list[str]:
    """The stage's deps as dvc.yaml writes them (``${...}`` not resolved)."""
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]


def engine_folders() -> list[Path]:
    """The engines' folders: local (no code) and each optional engine this project has (dask, unless generated
    without it)."""
    return sorted(p for p in (REPO / ENGINES).iterdir() if p.is_dir() and p.name != "__pycache__")


FOLDERS = ("core", "recipes", "tracking")  # declared whole: a stage that uses one of their modules depends on all


def covers(dep: str, path: str) -> bool:
    """A dep (a file, or a folder and everything under it) covers ``path``."""
    return path == dep or path.startswith(dep.rstrip("/") + "/")


def code_deps(stage: str) -> list[str]:
    """The stage's deps under src/ but the optional engine's folder (``engines/${preprocess.engine}``)."""
    deps = [d for d in stages()[stage].deps if d.startswith(f"src/{PACKAGE}/")]
    return [d for d in deps if not d.startswith(f"{ENGINES}/") or d == f"{ENGINES}/__init__.py"]


@pytest.mark.parametrize("stage", list(stage_modules()))
def test_stage_declares_exactly_the_code_it_runs(stage):
    """Every module the stage imports is covered by a dep (its file, or one of FOLDERS), and every dep covers one."""
    declared = code_deps(stage)
    needed = {module_file(m).relative_to(REPO).as_posix() for m in closure(stage_modules()[stage])}
    missing = sorted(f for f in needed if not any(covers(d, f) for d in declared))
    assert missing == [], f"stage {stage}: modules it runs but does not declare as deps"
    needless = sorted(d for d in declared if not any(covers(d, f) for f in needed))
    assert needless == [], f"stage {stage}: declared deps it never imports (needless re-runs)"
    folders = {f"src/{PACKAGE}/{name}" for name in FOLDERS}
    inside = sorted(d for d in declared if d not in folders and any(covers(f, d) for f in folders))
    assert inside == [], f"stage {stage}: list the folder, not its modules"


@pytest.mark.parametrize("stage", list(stage_modules()))
def test_stage_runs_no_optional_engine_but_declares_the_chosen_engine_s_folder(stage):
    """No stage module imports an engine (segmentation.engines.engine_module loads it at run time): a stage's own
    deps hold none of an optional engine's code, which is the dep ``src/segmentation/engines/${preprocess.engine}``
    instead (the local engine's folder holds no code)."""
    engines = sorted(m for m in closure(stage_modules()[stage]) if m.startswith(f"{PACKAGE}.engines."))
    assert engines == [], f"stage {stage} imports engine modules: {engines}"
    written = written_deps(stage)
    engine_deps = [d for d in written if d.startswith(f"{ENGINES}/") and d != f"{ENGINES}/__init__.py"]
    assert engine_deps == [ENGINE_DEP]
    assert {p.name for p in (REPO / ENGINES / "local").iterdir()} <= {"__init__.py", "__pycache__"}


@pytest.mark.parametrize("stage", list(stage_modules()))
def test_an_engine_runs_only_its_folder_and_the_stage_s_modules(stage):
    """With ``preprocess.engine: <name>``, the engine's module for the stage (``segmentation.engines.<name>.<stage>``)
    runs its own folder's modules and otherwise only modules the stage declares: the two deps cover its code."""
    declared = code_deps(stage)
    for folder in engine_folders():
        if not (folder / f"{stage}.py").is_file():
            continue
        module = f"{PACKAGE}.engines.{folder.name}.{stage}"
        needed = {module_file(m).relative_to(REPO).as_posix() for m in closure(module)}
        outside = sorted(
            f for f in needed if not any(covers(d, f) for d in declared) and not (REPO / f).is_relative_to(folder)
        )
        assert outside == [], f"{module} runs modules that stage {stage} does not declare"


def test_the_import_scan_sees_lazy_imports():
    """tracking imports segmentation.files inside a function: the scan must still find it."""
    assert "segmentation.files" in imported_modules("segmentation.tracking.logger")
    assert "segmentation" in closure("segmentation.errors")


# Modules whose functions the Dask engine's workers run part by part (a worker imports each such function's module).
WORKER_MODULES = ["engines.dask.parts", "engines.dask.tables"]
# What a worker must not import for them: the stages and what only they need (matplotlib, the report, the tracking).
NOT_ON_WORKERS = ("stages", "core.plotting", "core.report", "tracking")


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_the_workers_modules_import_no_stage(module):
    """Two 600 MiB workers stayed paused when train's per-part functions came from a stage's module (with
    matplotlib and the rest: ~30 MiB more per worker)."""
    if not module_file(f"{PACKAGE}.{module}").is_file():  # a project generated without the Dask engine
        return
    heavy = sorted(
        m for m in closure(f"{PACKAGE}.{module}") if m.startswith(tuple(f"{PACKAGE}.{n}" for n in NOT_ON_WORKERS))
    )
    assert heavy == [], f"{module} brings {heavy} onto every worker"

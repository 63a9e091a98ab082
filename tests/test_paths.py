"""Each path of the pipeline is declared once, in dvc.yaml's ``vars: paths``; the code reads it from there."""

from __future__ import annotations

import ast
import re

import pytest

from pipeline_helpers import REPO, paths, stages
from segmentation import pipeline
from segmentation.errors import UserError


def test_the_package_resolves_dvc_yaml_as_dvc_does():
    """segmentation.pipeline (a plain YAML read, for the stages and make score) agrees with DVC's own parser."""
    ours = pipeline.stages(REPO)
    for name, stage in stages().items():
        assert " ".join(ours[name]["cmd"].split()) == stage.cmd
        assert [d for d in ours[name]["deps"]] == list(stage.deps)
        declared = [o if isinstance(o, str) else next(iter(o)) for kind in ("outs", "metrics", "plots")
                    for o in ours[name].get(kind) or []]  # fmt: skip
        assert sorted(declared) == sorted(stage.outs)


def test_every_path_is_written_once_in_dvc_yaml():
    text = (REPO / "dvc.yaml").read_text()
    for name, path in paths().items():
        assert len(re.findall(rf"(?<![\w/.]){re.escape(path)}(?![\w.])", text)) == 1, f"{path} ({name}) repeated"


# Where a declared path may still be written in code, and why.
ALLOWED = {
    # check_model's default name of the metrics file in its messages; the stage always passes the real one (the
    # model check is rewritten with the algorithm registry, issue 11 part 1).
    ("src/segmentation/core/quality.py", "metrics/train.json"),
}


def string_literals(file) -> set[str]:
    """The strings a Python file's code holds (docstrings and comments aside: they may name a path to explain)."""
    tree = ast.parse(file.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


@pytest.mark.parametrize("folder", ["src", "tests", "benchmarks"])
def test_no_code_repeats_a_declared_path(folder):
    """Code and tests ask dvc.yaml (segmentation.pipeline; tests: pipeline_helpers) instead of writing a path."""
    found = []
    for file in sorted((REPO / folder).rglob("*.py")):
        rel = file.relative_to(REPO).as_posix()
        if rel == "tests/test_paths.py":  # ALLOWED above
            continue
        literals = string_literals(file)
        found += [
            f"{rel}: {path}"
            for path in paths().values()
            if any(path in s for s in literals) and (rel, path) not in ALLOWED
        ]
    assert found == []


def test_a_missing_path_name_is_one_readable_error(tmp_path):
    (tmp_path / "dvc.yaml").write_text("vars:\n  - paths:\n      model: m.joblib\nstages: {}\n")
    assert pipeline.path("model", tmp_path) == "m.joblib"
    with pytest.raises(UserError, match=r"dvc.yaml: vars: paths: has no segmenter:"):
        pipeline.path("segmenter", tmp_path)
    with pytest.raises(UserError, match=r"cannot read the pipeline's definition"):
        pipeline.path("model", tmp_path / "elsewhere")

"""A stage added to the template the way tests/test_extensions.py adds one (its module, its dvc.yaml entry, its params
section: nothing else), run by ``dvc repro`` in a copy of the project."""

from __future__ import annotations

import re

import pytest
import yaml

from pipeline_helpers import copy_project, project_env, run, use_fixture_data
from test_extensions import add_summary_stage

pytestmark = pytest.mark.pipeline


def test_a_new_stage_runs_under_dvc_repro(tmp_path):
    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    use_fixture_data(root, env)
    add_summary_stage(root, "summary_stage")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "a fourth stage"], root, env)

    run(["dvc", "repro"], root, env)
    summary = (root / "reports" / "summary.txt").read_text()
    assert re.fullmatch(r"\d+ segments, silhouette \d\.\d\d\n", summary), summary
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert list(lock) == ["preprocess", "train", "evaluate", "summary"]
    assert lock["summary"]["params"]["params.yaml"] == {"summary": {"decimals": 2}}
    assert run(["dvc", "status", "dvc.yaml"], root, env).stdout.strip().endswith("up to date.")

    # Its own params section drives it: a change re-runs it alone.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["summary"]["decimals"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run(["dvc", "repro"], root, env).stdout
    assert "Running stage 'summary'" in again and "Running stage 'evaluate'" not in again
    assert re.fullmatch(r"\d+ segments, silhouette \d\.\d{3}\n", (root / "reports" / "summary.txt").read_text())

"""The README's "Bring your own data" steps as written (extracted, so they cannot drift) on a `;`-separated table."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_helpers import REPO, copy_project, paths, project_env, run

pytestmark = pytest.mark.pipeline


def readme_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's "Bring your own data" section."""
    section = (REPO / "README.md").read_text().split("\n## Bring your own data\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.M | re.S)


def customers(path, rows: int = 200) -> pd.DataFrame:
    """A table with the snippet's columns: two well-separated groups of customers, seeded."""
    rng = np.random.default_rng(7)
    big = rng.random(rows) < 0.5
    table = pd.DataFrame({
        "spend": np.where(big, 5000, 300) + rng.normal(0, 60, rows).round(2),
        "visits": np.where(big, 40, 4) + rng.integers(0, 3, rows),
        "tenure_months": np.where(big, 60, 6) + rng.integers(0, 4, rows),
        "channel": np.where(big, "store", "web"),
    })  # fmt: skip
    table.to_csv(path, sep=";", index=False)
    return table


def test_the_readme_steps_segment_any_table(tmp_path):
    (bash,), (params_block,) = readme_blocks("bash"), readme_blocks("yaml")
    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    table = customers(tmp_path / "customers.csv")
    run(["bash", "-euo", "pipefail", "-c", bash.replace("/path/to/customers.csv", str(tmp_path / "customers.csv"))],
        root, env)  # fmt: skip
    staged = run(["git", "diff", "--cached", "--name-only"], root, env).stdout.split()
    assert "data/raw/customers.csv.dvc" in staged  # `make add-data` ran the project's dvc, which staged it
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, keys in yaml.safe_load(params_block).items():  # "set these keys; the rest stays as it is"
        params[section].update(keys)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], root, env, timeout=300)
    segments = pd.read_csv(root / paths()["segments"])
    assert segments["row_id"].tolist() == list(range(1, len(table) + 1))  # one row per input row
    assert segments["cluster"].nunique() >= 2


def test_make_add_data_without_a_file_says_how_in_one_line(tmp_path):
    root = copy_project(tmp_path / "project")
    done = run(["make", "--no-print-directory", "add-data"], root, project_env(tmp_path), check=False)
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == "make add-data: name the file: make add-data FILE=data/raw/<name>.csv"

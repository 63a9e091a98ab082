"""Experiments you can read: `make experiment` leaves the workspace as it was; `make exps` / `make compare` are DVC's
own tables (dvc exp show, dvc exp diff), compare with how alike the experiments' segments are (adjusted Rand index)."""

from __future__ import annotations

import importlib.util
import re

import pandas as pd
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score

from pipeline_helpers import REPO, copy_project, paths, project_env, run, use_fixture_data


def exps_table(stdout: str) -> tuple[list[str], dict[str, list[str]]]:
    """``make exps``'s header and rows by experiment name (``main``, ``k3`` of ``└── 36cbc4c [k3]``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip() and not line.strip().startswith("─")]
    start = next(i for i, line in enumerate(lines) if line.startswith("Experiment"))
    header, *rows = (re.split(r"\s{2,}", line) for line in lines[start:])
    return header, {re.sub(r".*\[(.+)\]$", r"\1", row[0]): row for row in rows}


def exps_script():
    """scripts/exps_table.py as a module."""
    spec = importlib.util.spec_from_file_location("exps_table", REPO / "scripts" / "exps_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# dvc exp show --csv of a baseline and two experiments: train.k set in one, train.k_max in the other.
EXPS_CSV = """\
Experiment,rev,k_best,silhouette,calinski_harabasz,davies_bouldin,train.k_max,train.k,train.gaussian_mixture.reg_covar
,main,5,0.32371971272466304,1243.375468705155,1.040430825105887,10,,1e-06
grade-loss,c73dadd,4,0.3208721480813261,1327.2800562358022,1.131211694460322,10,4,1e-06
flaky-alap,7c6dd26,4,0.3208721480813261,1327.2800562358022,1.1312,8,,0.5
"""


def test_exps_table_names_each_column_once_with_the_same_decimals():
    # DVC's table showed 0.32372 beside 1243.4 and 1.0404 (5 significant digits; --precision only applies to --csv).
    header, rows = exps_table("\n".join(exps_script().render(EXPS_CSV, 1000)))
    assert header == ["Experiment", "k_best", "silhouette", "calinski_harabasz", "davies_bouldin", "train.k_max",
                      "train.k", "train.gaussian_mixture.reg_covar"]  # fmt: skip
    assert rows["main"] == ["main", "5", "0.3237", "1243.3755", "1.0404", "10", "-", "1e-06"]
    assert rows["flaky-alap"][1:] == ["4", "0.3209", "1327.2801", "1.1312", "8", "-", "0.5000"]
    assert rows["grade-loss"][6] == "4"
    narrow = exps_script().render(EXPS_CSV, 80)  # the last columns give way to "…", none is cut to "train.k"
    assert all(len(line) <= 80 for line in narrow) and narrow[0].split()[-2:] == ["davies_bouldin", "…"]


def cached_segments(root, env, name: str) -> pd.DataFrame:
    """The experiment ``name``'s segments file, found by hand: its dvc.lock's md5, then DVC's cache."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root, env).stdout.split()
    (ref,) = [r for r in refs if r.endswith(f"/{name}")]
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], root, env).stdout)
    md5 = next(o["md5"] for o in lock["stages"]["evaluate"]["outs"] if o["path"] == paths()["segments"])
    return pd.read_csv(root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:])


@pytest.mark.pipeline
def test_make_experiment_leaves_the_workspace_and_experiments_do_not_carry_over(tmp_path):
    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    env.pop("COLUMNS", None)  # a log, not a terminal: every column (pytest-xdist's workers inherit a width)
    use_fixture_data(root, env)
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "results"], root, env)
    params_before = (root / "params.yaml").read_bytes()
    header, rows = exps_table(run(["make", "exps"], root, env).stdout)  # no experiment yet: the baseline's metrics
    assert header == ["Experiment", "k_best", "silhouette", "calinski_harabasz", "davies_bouldin"]
    assert list(rows) == ["main"]
    assert "no experiment of HEAD yet" in run(["make", "compare"], root, env).stdout

    first = run(["make", "experiment", "ARGS=-S train.k_max=3 -n k3"], root, env)
    second = run(["make", "experiment", "ARGS=-S 'train.n_init=5' -n n5"], root, env)
    # ARGS is data: make does not expand $(...) in it, no shell runs it (DVC refuses the name).
    hostile = run(["make", "experiment", "ARGS=-n '$(touch pwned)' -S train.k_max=4"], root, env, check=False)

    assert hostile.returncode != 0 and not (root / "pwned").exists()
    assert (root / "params.yaml").read_bytes() == params_before  # not rewritten, not reformatted
    assert run(["git", "status", "--porcelain"], root, env).stdout == ""
    assert "k3" in first.stdout and "n5" in second.stdout
    header, rows = exps_table(run(["make", "exps"], root, env).stdout)  # a log: every column
    # The params that differ and the key metrics, each under its own name; nothing else.
    assert header == ["Experiment", "k_best", "silhouette", "calinski_harabasz", "davies_bouldin", "train.k_max",
                      "train.n_init"]  # fmt: skip
    k_max, n_init = header.index("train.k_max"), header.index("train.n_init")
    assert set(rows) == {"main", "k3", "n5"}
    assert rows["k3"][k_max] == "3" and rows["k3"][n_init] == "10"
    assert rows["n5"][k_max] == "8" and rows["n5"][n_init] == "5"  # no carry-over of k3's override
    assert rows["k3"][header.index("k_best")] == "2"  # k_best within k_max
    assert len(set(header)) == len(header)  # each column under its own name
    decimals = {len(value.split(".")[1]) for row in rows.values() for value in row[1:] if "." in value}
    assert decimals == {exps_script().DECIMALS}  # silhouette 0.3237 beside calinski_harabasz 1243.3755
    narrow = run(["make", "exps"], root, {**env, "COLUMNS": "80"}).stdout  # an 80-column terminal
    assert all(len(line) <= 80 for line in narrow.splitlines())
    compared = run(["make", "compare", "NAMES=k3"], root, env).stdout  # k3 beside HEAD
    assert "size_cluster_0" in compared and "train.k_max" in compared and "n5" not in compared
    # How much the assignment changed: the adjusted Rand index of HEAD's segments and k3's, on the IDs both hold.
    ours, theirs = pd.read_csv(root / paths()["segments"]), cached_segments(root, env, "k3")
    both = ours.merge(theirs, on="ID", suffixes=("", "_k3"))
    expected = adjusted_rand_score(both["cluster"], both["cluster_k3"])
    assert (
        f"segments: adjusted Rand index {expected:.4f} between HEAD and k3 on the {len(both)} customer(s)" in compared
    )
    assert "n5" in run(["make", "compare"], root, env).stdout  # every experiment

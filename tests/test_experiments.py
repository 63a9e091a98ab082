"""Experiments you can read: `make experiment` leaves the workspace as it was; `make exps` / `make compare`."""

from __future__ import annotations

import pytest

from pipeline_helpers import copy_project, paths, project_env, run, use_fixture_data
from segmentation.tools.experiments import WIDTH, compare, parse_show, table

P = paths()  # every path as dvc.yaml declares it (dvc exp show keys the metrics by file)


def show_entry(name, params, k_best, silhouette, sizes):
    return {
        "rev": name,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": params}},
            "metrics": {
                P["train_metrics"]: {"data": {"k_best": k_best, "inertia": 123.4}},
                P["evaluate_metrics"]: {
                    "data": {
                        "silhouette": silhouette,
                        "calinski_harabasz": 1243.4219,
                        "davies_bouldin": 1.0401,
                        **{f"size_cluster_{i}": n for i, n in enumerate(sizes)},
                    }
                },
            },
        },
    }


def sample_show():
    base = {"train": {"k_max": 10, "metric": "distortion", "n_init": 10}, "evaluate": {"random_state": 42}}
    exp = {"train": {"k_max": 12, "metric": "silhouette", "n_init": 10}, "evaluate": {"random_state": 42}}
    baseline = show_entry("main", base, 5, 0.32441, [500, 400, 300, 700, 312])
    baseline["experiments"] = [
        {"revs": [{**show_entry("a-very-long-experiment-name-indeed", exp, 4, 0.35, [1, 2, 3, 4])}]}
    ]
    return [{"rev": "workspace", "name": None, "data": {}, "experiments": None}, baseline]


def test_table_shows_only_the_changed_params_and_the_key_metrics_in_80_columns():
    rows = parse_show(sample_show(), P)
    assert [r.name for r in rows] == ["main", "a-very-long-experiment-name-indeed"]
    text = table(rows)
    header, _rule, *lines = text.splitlines()
    assert header.split() == ["experiment", "k_max", "metric", "k", "silhouette", "CH", "DB"]
    assert "n_init" not in text and "random_state" not in text  # the same everywhere: not shown
    assert lines[0].split() == ["main", "10", "distortion", "5", "0.3244", "1,243", "1.04"]
    assert all(len(line) <= WIDTH for line in text.splitlines())


def test_compare_puts_experiments_side_by_side_with_segment_sizes():
    text = compare(parse_show(sample_show(), P))
    lines = {
        line.split()[0] if not line.startswith("size") else " ".join(line.split()[:2]): line.split()
        for line in text.splitlines()[2:]
    }
    assert lines["train.k_max"][1:] == ["10", "12"]
    assert lines["size 4"][-2:] == ["312", "-"]
    assert all(len(line) <= WIDTH for line in text.splitlines())


def test_compare_shows_the_algorithm_its_k_rule_and_noise():
    base = show_entry("main", {"train": {"algorithm": "kmeans", "k_max": 10}}, 5, 0.32, [500, 400])
    hdb = show_entry("hdb", {"train": {"algorithm": "hdbscan", "k_max": 10}}, 2, 0.40, [300, 1180])
    base["data"]["metrics"][P["train_metrics"]]["data"]["k_rule"] = "elbow"
    hdb["data"]["metrics"][P["train_metrics"]]["data"]["k_rule"] = "density"
    hdb["data"]["metrics"][P["evaluate_metrics"]]["data"].update(noise_share=0.3291, size_noise=728)
    base["experiments"] = [{"revs": [hdb]}]
    text = compare(parse_show([base], P))
    lines = {line.rsplit(None, 2)[0].strip(): line.split()[-2:] for line in text.splitlines()[2:]}
    assert lines["train.algorithm"] == ["kmeans", "hdbscan"]
    assert lines["k rule"] == ["elbow", "density"]
    assert lines["noise"] == ["-", "0.3291"]
    assert lines["size noise"] == ["-", "728"]


@pytest.mark.pipeline
def test_make_experiment_leaves_the_workspace_and_experiments_do_not_carry_over(tmp_path):
    root = copy_project(tmp_path / "project")
    env = project_env(tmp_path)
    use_fixture_data(root, env)
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "results"], root, env)
    params_before = (root / "params.yaml").read_bytes()

    first = run(["make", "experiment", "ARGS=-S train.k_max=3 -n k3"], root, env)
    second = run(["make", "experiment", "ARGS=-S train.n_init=5 -n n5"], root, env)

    assert (root / "params.yaml").read_bytes() == params_before  # not rewritten, not reformatted
    assert run(["git", "status", "--porcelain"], root, env).stdout == ""
    assert "k3" in first.stdout
    shown = run(["make", "exps"], root, env).stdout
    rows = {line.split()[0]: line.split() for line in shown.splitlines() if line.split()}
    header = rows["experiment"]
    k_max, n_init = header.index("k_max"), header.index("n_init")
    assert rows["k3"][k_max] == "3" and rows["k3"][n_init] == "10"
    assert rows["n5"][k_max] == "8" and rows["n5"][n_init] == "5"  # no carry-over of k3's override
    assert rows["k3"][header.index("k")] == "2"  # k_best within k_max
    assert all(len(line) <= WIDTH for line in shown.splitlines())
    assert "n5" in second.stdout
    compared = run(["make", "compare", "NAMES=k3"], root, env).stdout
    assert "size 0" in compared and "n5" not in compared

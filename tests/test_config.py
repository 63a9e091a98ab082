from __future__ import annotations

import pytest

from segmentation.config import flatten, load_section, parse_section
from segmentation.errors import UserError


def train_params(**override):
    base = {"k_min": 2, "k_max": 10, "metric": "distortion", "n_init": 10, "random_state": 0, "n_threads": 1}
    return {**base, **override}


def test_project_params_are_valid(repo):
    for section in ("preprocess", "train", "evaluate"):
        load_section(section, repo / "params.yaml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"k_max": 1}, "train: k_max (1) must not be below k_min (2)"),
        ({"k_min": 1}, "train.k_min: Input should be greater than or equal to 2 (got 1)"),
        ({"metric": "manhattan"}, "train.metric: Input should be 'distortion', 'silhouette' or 'calinski_harabasz'"),
        ({"selection": "best_score"}, "selection 'best_score' needs metric silhouette or calinski_harabasz"),
        ({"n_init": "auto"}, "train.n_init: Input should be a valid integer"),
        ({"n_clusters": 4}, "train.n_clusters: unknown parameter"),
        ({"search_sample_size": 99}, "train: search_sample_size (99) must be at least k_max x min_cluster_size (100)"),
    ],
)
def test_train_params_errors_name_the_parameter(override, expected):
    with pytest.raises(UserError) as err:
        parse_section("train", train_params(**override))
    message = str(err.value)
    assert message.startswith("params.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_missing_required_parameter():
    raw = train_params()
    del raw["random_state"]
    with pytest.raises(UserError, match=r"train.random_state: required parameter is missing"):
        parse_section("train", raw)


def test_preprocess_params_cross_checks(repo, preprocess_params):
    raw = preprocess_params.model_dump(mode="json")
    raw["pca_components"] = len(raw["features"]) + 1
    with pytest.raises(UserError, match=r"pca_components .* exceeds the number of features"):
        parse_section("preprocess", raw)
    raw = preprocess_params.model_dump(mode="json")
    raw["marketing_campaign"]["single_statuses"].append("Married")
    with pytest.raises(UserError, match=r"both partnered and single: \['Married'\]"):
        parse_section("preprocess", raw)
    raw = preprocess_params.model_dump(mode="json")
    raw["outliers"]["Age"] = {"min": 90, "max": 10}
    with pytest.raises(UserError, match=r"preprocess.outliers.Age: min \(90.0\) is greater than max \(10.0\)"):
        parse_section("preprocess", raw)
    raw = preprocess_params.model_dump(mode="json")
    raw["marketing_campaign"]["reference_date"] = "2015-13-45"
    with pytest.raises(UserError, match=r"preprocess\.marketing_campaign\.reference_date"):
        parse_section("preprocess", raw)


def test_params_file_problems(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_section("train", tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  k_min: [2\n")
    with pytest.raises(UserError, match=r"not valid YAML \(line \d+\)"):
        load_section("train", bad)
    bad.write_text("preprocess: {}\n")
    with pytest.raises(UserError, match="section 'train' is missing"):
        load_section("train", bad)


def test_flatten_keeps_python_types(preprocess_params):
    flat = flatten(preprocess_params, "preprocess.")
    assert flat["preprocess.pca_components"] == 3
    assert flat["preprocess.scale"] is True
    assert flat["preprocess.outliers.Income.max"] == 600000
    assert flat["preprocess.marketing_campaign.reference_date"] == "2015-01-01"
    assert flat["preprocess.features"].startswith("Income,")


@pytest.mark.parametrize("path", ["../x.csv", "data/../../x.csv", "/tmp/x.csv", "data/outside/x.csv"])
def test_a_data_path_outside_the_project_is_refused_with_its_line(path, tmp_path, monkeypatch):
    """dvc.lock would record it and a clone could not reproduce: one line naming params.yaml, the line, the param."""
    import yaml

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "outside").symlink_to(tmp_path)  # a folder linked out of the project is outside too
    raw = {"data": {"path": path, "separator": ","}, "features": ["a"]}
    (project / "params.yaml").write_text(yaml.safe_dump({"preprocess": raw}, sort_keys=False))
    monkeypatch.chdir(project)
    with pytest.raises(UserError) as err:
        load_section("preprocess")
    assert str(err.value) == (
        f"params.yaml:3: preprocess.data.path: {path} is outside the project: copy the file under data/ and "
        "`dvc add` it"
    )


@pytest.mark.parametrize(
    ("path", "engine"),
    [("data/raw/x.csv", "local"), ("./x.csv", "local"), ("s3://bucket/raw/*.csv", "dask"), ("/shared/x.csv", "dask")],
)
def test_data_paths_inside_the_project_or_read_by_dask_are_accepted(path, engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {"data": {"path": path, "separator": ","}, "features": ["a"], "engine": engine}
    assert parse_section("preprocess", raw).data.path == path

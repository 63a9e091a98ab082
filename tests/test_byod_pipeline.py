"""Bring your own data end to end: another real table, only params.yaml edited, the real `dvc repro`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_wine

from pipeline_helpers import FIXTURE_PARAMS, copy_project, paths, project_env, run

pytestmark = pytest.mark.pipeline

P = paths()  # every path as dvc.yaml declares it
FEATURES = ["alcohol", "malic_acid", "color_intensity", "proline", "flavanoids"]


def wine_csv(path) -> pd.DataFrame:
    """scikit-learn's bundled wine table (178 rows, shipped in the wheel: no download), made less tidy."""
    wine = load_wine(as_frame=True).frame.drop(columns=["target"])
    # A categorical column derived from the data, and blanks in a feature and in the categorical column.
    wine.insert(2, "hue_band", pd.cut(wine["hue"], [0, 0.8, 1.1, 9], labels=["dull", "mid", "vivid"]).astype(str))
    wine.loc[[5, 50, 100], "proline"] = np.nan
    wine.loc[[7, 70], "hue_band"] = np.nan
    wine.to_csv(path, sep=";", index=False)
    return wine


@pytest.fixture(scope="module")
def byod(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("byod") / "project")
    env = project_env(root.parent)
    wine = wine_csv(root / "data" / "wine.csv")
    params = yaml.safe_load((root / FIXTURE_PARAMS).read_text())  # the tests' own train/evaluate params
    pre = params["preprocess"]
    pre["data"] = {"path": "data/wine.csv", "separator": ";", "encoding": "utf-8", "id_column": None}
    pre.update(
        recipe=None,
        features=FEATURES,
        categorical={"columns": ["hue_band"], "encoding": "onehot", "max_categories": 10},
        missing="median",
        outliers={},
        pca_components=None,
    )
    params["train"]["k_max"] = 6
    params["evaluate"]["profile_columns"] = ["hue", "magnes*"]  # wine columns not clustered: profiled only
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = run(["dvc", "repro"], root, env)
    return root, env, wine, repro


def test_byod_repro_segments_every_row(byod):
    root, _, wine, repro = byod
    assert "Running stage 'evaluate'" in repro.stdout
    segments = pd.read_csv(root / P["segments"])
    assert list(segments.columns) == ["row_id", "cluster"]
    assert segments["row_id"].tolist() == list(range(1, len(wine) + 1))  # blanks imputed: no row lost
    pre = json.loads((root / P["preprocess_metrics"]).read_text())
    assert pre == {"rows_in": 178, "imputed_rows": 5, "dropped_outliers": 0, "rows_out": 178}
    k_best = json.loads((root / P["train_metrics"]).read_text())["k_best"]
    evaluate = json.loads((root / P["evaluate_metrics"]).read_text())
    assert evaluate["n_clusters"] == k_best == segments["cluster"].nunique()
    assert sum(evaluate[f"size_cluster_{i}"] for i in range(k_best)) == 178
    assert 0 < evaluate["silhouette"] <= 1


def test_byod_matrix_and_profile(byod):
    root, _, _, _ = byod
    matrix = pd.read_parquet(root / P["matrix"])
    onehot = ["hue_band_dull", "hue_band_mid", "hue_band_vivid"]
    assert list(matrix.columns) == ["row_id", *FEATURES, *onehot]
    assert set(np.unique(matrix[onehot].to_numpy())) == {0.0, 1.0}
    assert (matrix[onehot].sum(axis=1) == 1).all()
    profile = pd.read_csv(root / P["profile"])
    assert list(profile.columns) == ["cluster", "name", "size", "share", *FEATURES, "hue", "magnesium", "hue_band=dull",
                                     "hue_band=mid", "hue_band=vivid", "hue_band=(blank)"]  # fmt: skip
    # The 2 blank hue_band rows are shown: each cluster's shares add up to 1.
    shares = profile[[c for c in profile.columns if c.startswith("hue_band=")]].sum(axis=1)
    assert np.allclose(shares, 1.0, atol=1e-3)  # the CSV's shares are rounded to 4 decimals
    # Profiles are on the unscaled features: mean alcohol of wines is about 13 (12.4 .. 13.7 per cultivar).
    assert profile["alcohol"].between(11, 15).all()


def test_byod_status_clean_afterwards(byod):
    root, env, _, _ = byod
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}

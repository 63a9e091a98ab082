"""Bring your own data: the generic path (no recipe), optional ID, categorical columns; pure functions only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation.config import ROW_ID_COLUMN, parse_section
from segmentation.core.data import as_categories, with_row_id
from segmentation.core.quality import cluster_profile
from segmentation.core.transform import preprocess
from segmentation.errors import UserError


def params(**override):
    base = {
        "data": {"path": "shop.csv", "separator": ";", "id_column": None},
        "recipe": None,
        "features": ["spend", "visits"],
        "categorical": {"columns": ["channel"], "encoding": "onehot"},
        "missing": "drop",
        "outliers": {},
        "scale": True,
        "pca_components": None,
    }
    return parse_section("preprocess", {**base, **override})


@pytest.fixture
def shop() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "spend": [10.0, 20.0, np.nan, 40.0, 50.0, 60.0],
            "visits": [1, 2, 3, 4, 5, 6],
            "channel": ["web", "store", "web", None, "app", "web"],
        }
    )


def test_defaults_keep_the_old_params_valid():
    p = params(categorical={}, data={"path": "x.csv", "separator": ","})
    assert p.data.id_column is None
    assert p.categorical.columns == [] and p.categorical.encoding == "onehot"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"categorical": {"columns": ["spend"]}}, "listed twice in features / categorical.columns: ['spend']"),
        ({"categorical": {"columns": ["channel"], "encoding": "label"}}, "categorical.encoding: Input should be"),
        ({"categorical": {"cols": ["channel"]}}, "preprocess.categorical.cols: unknown parameter"),
        ({"features": ["row_id", "spend"]}, "the ID column row_id cannot also be a feature"),
        ({"pca_components": 4}, "pca_components (4) exceeds the number of features (3)"),
    ],
)
def test_categorical_params_are_checked(override, expected):
    with pytest.raises(UserError) as err:
        params(**override)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_row_id_is_generated_and_numbered_from_one(shop):
    out = with_row_id(shop, "shop.csv")
    assert list(out.columns) == [ROW_ID_COLUMN, "spend", "visits", "channel"]
    assert out[ROW_ID_COLUMN].tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(UserError, match=r"already has a column row_id; set preprocess\.data\.id_column: row_id"):
        with_row_id(out, "shop.csv")


def test_categories_are_strings_and_blanks_stay_blank():
    codes = as_categories(pd.Series([1.0, 2.0, np.nan]))
    assert codes.tolist()[:2] == ["1", "2"] and pd.isna(codes.iloc[2])
    assert as_categories(pd.Series([0.5, 1.0])).tolist() == ["0.5", "1.0"]


def test_onehot_columns_flow_into_the_matrix_sorted(shop):
    result = preprocess(shop, params(), "shop.csv")
    # Rows 3 (blank spend) and 4 (blank channel) are dropped; the rest keep their row_id.
    assert result.metrics == {"rows_in": 6, "dropped_missing": 2, "dropped_outliers": 0, "rows_out": 4}
    assert result.matrix[ROW_ID_COLUMN].tolist() == [1, 2, 5, 6]
    assert list(result.matrix.columns) == [ROW_ID_COLUMN, "spend", "visits", "channel_app", "channel_store",
                                           "channel_web"]  # fmt: skip
    assert result.matrix["channel_web"].tolist() == [1.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(result.matrix["spend"].mean(), 0, atol=1e-12)  # numeric scaled, one-hot not
    assert list(result.features.columns) == [ROW_ID_COLUMN, "spend", "visits", "channel"]
    # Unknown categories at transform time are ignored (all zeros), not an error.
    unseen = pd.DataFrame({"spend": [1.0], "visits": [1.0], "channel": ["phone"]})
    assert result.transformer.transform(unseen)[0, 2:].tolist() == [0.0, 0.0, 0.0]


def test_median_imputes_numbers_and_the_most_frequent_category(shop):
    result = preprocess(shop, params(missing="median"), "shop.csv")
    assert result.metrics["imputed_rows"] == 2 and result.metrics["rows_out"] == 6
    assert result.matrix.loc[3, "channel_web"] == 1.0  # the blank channel became 'web'
    assert not result.matrix.isna().any().any()


def test_dropped_categorical_is_kept_for_profiles_only(shop):
    result = preprocess(shop, params(categorical={"columns": ["channel"], "encoding": "drop"}), "shop.csv")
    assert list(result.matrix.columns) == [ROW_ID_COLUMN, "spend", "visits"]
    assert result.metrics["dropped_missing"] == 1  # a blank channel does not matter any more
    assert result.features["channel"].isna().sum() == 1


def test_onehot_with_pca_and_a_given_id(shop):
    shop.insert(0, "customer", [f"c{i}" for i in range(6)])
    p = params(pca_components=2, data={"path": "s.csv", "separator": ";", "id_column": "customer"})
    result = preprocess(shop, p, "s.csv")
    assert list(result.matrix.columns) == ["customer", "PC1", "PC2"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda df: df.drop(columns=["channel"]),
            r"^shop.csv: categorical \(preprocess.categorical.columns\) column\(s\) missing: channel$",
        ),
        (
            lambda df: df.assign(visits=["a", 2, 3, 4, 5, 6]),
            r"^shop.csv: column visits must be numeric; e.g. 'a' on line 2; if it holds categories, list it in "
            r"preprocess.categorical.columns instead of preprocess.features$",
        ),
    ],
)
def test_named_column_errors(shop, change, expected):
    with pytest.raises(UserError, match=expected):
        preprocess(change(shop), params(), "shop.csv")


def test_too_many_categories_is_an_error(shop):
    shop["channel"] = [f"x{i}" for i in range(6)]
    with pytest.raises(UserError, match=r"categorical column channel has 6 distinct values \(more than .*= 5\)"):
        preprocess(shop, params(categorical={"columns": ["channel"], "max_categories": 5}), "shop.csv")


def test_profile_has_category_shares_per_cluster():
    features = pd.DataFrame(
        {"row_id": [1, 2, 3, 4], "spend": [1.0, 3.0, 10.0, 20.0], "channel": ["web", "app", "web", np.nan]}
    )
    profile = cluster_profile(features, np.array([0, 0, 1, 1]), "row_id", ["channel"])
    assert list(profile.columns) == [
        "cluster", "size", "share", "spend", "channel=app", "channel=web", "channel=(blank)"
    ]  # fmt: skip
    assert profile["spend"].tolist() == [2.0, 15.0]
    assert profile["channel=web"].tolist() == [0.5, 0.5]
    assert profile["channel=app"].tolist() == [0.5, 0.0]
    assert profile["channel=(blank)"].tolist() == [0.0, 0.5]  # shown, so that each cluster's shares add up to 1

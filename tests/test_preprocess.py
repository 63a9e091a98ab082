from __future__ import annotations

import numpy as np
import pytest

from segmentation.core.transform import preprocess
from segmentation.errors import UserError


def test_example_rows_and_shapes(raw_full, preprocess_params):
    result = preprocess(raw_full, preprocess_params, "x.csv")
    assert result.metrics == {
        "rows_in": 428,  # the sample: 400 complete rows + the rows below
        "dropped_missing": 24,  # blank Income
        "outliers_Age": 3,  # born 1893, 1899, 1900
        "outliers_Income": 1,  # 666666
        "dropped_outliers": 4,
        "rows_out": 400,
    }
    assert list(result.matrix.columns) == ["ID", "PC1", "PC2", "PC3"]
    assert list(result.features.columns) == ["ID", *preprocess_params.features]
    assert result.matrix["ID"].equals(result.features["ID"])
    assert not result.matrix.isna().any().any()
    # The transformer reproduces the matrix from the unscaled features.
    again = result.transformer.transform(result.features[preprocess_params.features])
    np.testing.assert_allclose(again, result.matrix[["PC1", "PC2", "PC3"]].to_numpy())


def test_without_pca_the_matrix_is_standardised(raw_full, preprocess_params):
    result = preprocess(raw_full, preprocess_params.model_copy(update={"pca_components": None}), "x.csv")
    values = result.matrix[preprocess_params.features].to_numpy()
    np.testing.assert_allclose(values.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(values.std(axis=0), 1, atol=1e-12)


def test_median_imputation_keeps_blank_income_rows(raw_full, preprocess_params):
    result = preprocess(raw_full, preprocess_params.model_copy(update={"missing": "median"}), "x.csv")
    assert result.metrics["imputed_rows"] == 24
    assert result.metrics["rows_out"] == 428 - 4
    assert not np.isnan(result.matrix[["PC1", "PC2", "PC3"]].to_numpy()).any()


def test_same_input_same_output(raw_full, preprocess_params):
    a = preprocess(raw_full, preprocess_params, "x.csv")
    b = preprocess(raw_full, preprocess_params, "x.csv")
    assert a.matrix.equals(b.matrix)


def test_missing_column_is_named(raw, preprocess_params):
    with pytest.raises(UserError, match=r"^data/x.csv: marketing_campaign recipe column\(s\) missing: Kidhome$"):
        preprocess(raw.drop(columns=["Kidhome"]), preprocess_params, "data/x.csv")


def test_missing_feature_is_named(raw, preprocess_params):
    params = preprocess_params.model_copy(update={"features": ["Income", "Shoe_Size"]})
    with pytest.raises(UserError, match=r"feature \(preprocess.features\) column\(s\) missing: Shoe_Size"):
        preprocess(raw, params, "x.csv")


def test_non_numeric_column_is_named_with_a_value(raw, preprocess_params):
    raw["Income"] = raw["Income"].astype("object")
    raw.loc[5, "Income"] = "58k"
    with pytest.raises(UserError, match=r"x.csv: column Income must be numeric; e.g. '58k' on line 7"):
        preprocess(raw, preprocess_params, "x.csv")


def test_duplicate_ids_are_an_error(raw, preprocess_params):
    raw.loc[3, "ID"] = raw.loc[2, "ID"]
    with pytest.raises(UserError, match="ID column ID has duplicates"):
        preprocess(raw, preprocess_params, "x.csv")


def test_everything_filtered_out_is_an_error(raw, preprocess_params):
    from segmentation.config import Bounds

    params = preprocess_params.model_copy(update={"outliers": {"Income": Bounds(max=1)}})
    with pytest.raises(UserError, match="only 0 row"):
        preprocess(raw, params, "x.csv")

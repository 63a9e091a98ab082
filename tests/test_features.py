from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from segmentation.config import Bounds
from segmentation.core.data import outlier_rows
from segmentation.errors import UserError
from segmentation.recipes.marketing_campaign import adults_in_household, derive_marketing_features, parse_dates


def test_dates_are_day_first():
    # pandas would guess month-first from "01-02-2013" and then fail on day 21.
    parsed = parse_dates(pd.Series(["01-02-2013", "21-08-2013"], name="Dt_Customer"), "%d-%m-%Y", "x.csv")
    assert list(parsed.dt.date) == [dt.date(2013, 2, 1), dt.date(2013, 8, 21)]


def test_dates_parsed_once_each_are_what_pandas_parses_row_by_row():
    """Each distinct value is parsed once: the result is pandas' own, blanks, repeats, index and name kept."""
    values = ["01-02-2013", None, "21-08-2013", "01-02-2013", np.nan, "21-08-2013"]
    series = pd.Series(values, index=[10, 3, 7, 1, 4, 9], name="Dt_Customer", dtype="str")
    expected = pd.to_datetime(series, format="%d-%m-%Y", errors="coerce")
    pd.testing.assert_series_equal(parse_dates(series, "%d-%m-%Y", "x.csv"), expected)
    blank = pd.Series([None, None], name="Dt_Customer", dtype="str")
    pd.testing.assert_series_equal(parse_dates(blank, "%d-%m-%Y", "x.csv"), pd.to_datetime(blank, format="%d-%m-%Y"))


def test_bad_date_names_file_column_value_and_line():
    series = pd.Series(["21-08-2013", "2013-08-22", None], name="Dt_Customer")
    with pytest.raises(UserError) as err:
        parse_dates(series, "%d-%m-%Y", "data/raw/x.csv")
    assert str(err.value) == (
        "data/raw/x.csv: column Dt_Customer: '2013-08-22' on line 3 does not match date format '%d-%m-%Y' "
        "(1 such value(s))"
    )


def test_adults_mapping_covers_the_odd_statuses():
    status = pd.Series(
        ["Married", "Together", "Single", "YOLO", "Absurd", "Alone", "Widow", None], name="Marital_Status"
    )
    adults = adults_in_household(
        status, ["Married", "Together"], ["Single", "Divorced", "Widow", "Alone", "Absurd", "YOLO"], "x.csv"
    )
    assert adults.iloc[:7].tolist() == [2, 2, 1, 1, 1, 1, 1]
    assert np.isnan(adults.iloc[7])


def test_unlisted_status_is_an_error():
    status = pd.Series(["Married", "Complicated"], name="Marital_Status")
    with pytest.raises(UserError, match=r"value\(s\) \['Complicated'\] not listed"):
        adults_in_household(status, ["Married"], ["Single"], "x.csv")


def test_derived_features_on_the_example(raw_full, preprocess_params):
    recipe = preprocess_params.marketing_campaign
    out = derive_marketing_features(raw_full, recipe, "x.csv")
    row = out.loc[out["ID"] == 5524].iloc[0]  # first row of the Kaggle file
    assert row["Age"] == 2015 - 1957
    assert row["Children"] == 0
    assert row["Family_Size"] == 1  # Single, no children
    assert row["Total_Spent"] == 635 + 88 + 546 + 172 + 88 + 88
    assert row["Total_Purchases"] == 3 + 8 + 10 + 4
    assert row["Enrollment_Days"] == (dt.date(2015, 1, 1) - dt.date(2012, 9, 4)).days
    assert out["Family_Size"].between(1, 5).all()
    assert "Age" not in raw_full.columns  # pure: the input is untouched


def test_reference_date_before_enrollment_is_an_error(raw_full, preprocess_params):
    recipe = preprocess_params.marketing_campaign.model_copy(update={"reference_date": dt.date(2013, 1, 1)})
    with pytest.raises(UserError, match=r"reference_date \(2013-01-01\) is before the latest Dt_Customer"):
        derive_marketing_features(raw_full, recipe, "x.csv")


def test_outlier_bounds_are_inclusive_and_ignore_blanks():
    df = pd.DataFrame({"Age": [18, 90, 91, np.nan], "Income": [0, 600000, 600001, 5]})
    masks = outlier_rows(df, {"Age": Bounds(max=90), "Income": Bounds(min=1, max=600000)})
    assert masks["Age"].tolist() == [False, False, True, False]
    assert masks["Income"].tolist() == [True, False, True, False]

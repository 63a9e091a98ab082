"""Degenerate raw data (issue 8 §3): a one-line error naming the column and the physical line, never a silent result.

Small synthetic CSV files and frames built here; the preprocess stage CLI is run for real in a temporary directory.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_helpers import run_stage_cli, the_error
from segmentation.config import PreprocessParams
from segmentation.core import data as data_module
from segmentation.core.data import load_csv
from segmentation.core.transform import preprocess
from segmentation.errors import UserError

OUTPUTS = ["--features", "out/f.csv", "--matrix", "out/m.csv", "--transformer", "out/t.joblib",
           "--metrics", "out/p.json", "--dagshub-dir", "out/dh"]  # fmt: skip


def section(path: str = "data.csv", **override) -> dict:
    """A preprocess section for a plain table: ID ``id``, numeric features ``a`` and ``b``."""
    base = {
        "data": {"path": path, "separator": ",", "encoding": "utf-8", "id_column": "id"},
        "recipe": None,
        "features": ["a", "b"],
        "missing": "median",
        "outliers": {},
        "scale": True,
        "pca_components": None,
    }
    return {**base, **override}


def params(**override) -> PreprocessParams:
    return PreprocessParams(**section(**override))


def table(rows: int = 8, **columns) -> pd.DataFrame:
    """``rows`` rows of ids 1.. and spread-out features ``a``, ``b`` (overridden by ``columns``)."""
    base = {"id": np.arange(1, rows + 1), "a": np.linspace(1.0, 9.0, rows), "b": np.arange(rows, dtype=float) ** 2}
    return pd.DataFrame({**base, **columns})


def run_preprocess(tmp_path: Path, preprocess_section: dict) -> subprocess.CompletedProcess:
    """The real stage CLI in ``tmp_path`` (its own params.yaml; outputs would go under out/)."""
    return run_stage_cli(tmp_path, "preprocess", OUTPUTS, preprocess=preprocess_section)


# --- the stage CLI: one line naming the file, the column and the physical line --------------------------------------

MULTILINE_CSV = (
    'id,note,a,b\r\n'
    '1,"a note\r\non two lines",1.5,1\r\n'
    '\r\n'  # a blank line: pandas skips it, the line count does not
    '2,"three\nline\nnote",2.5,2\r\n'
    '3,plain,oops,3\r\n'
)  # fmt: skip

CLI_CASES = {
    # SimpleImputer would drop the column silently (and PCA would hide it): an error instead.
    "blank_feature_median": (
        "id,a,b\n" + "".join(f"{i},{i}.5,\n" for i in range(1, 9)),
        {"pca_components": 1},
        "error: data.csv: column b is blank on all 8 rows; preprocess.missing: median cannot impute it: "
        "fill it in or remove it from preprocess.features",
    ),
    "inf": (
        "id,a,b\n1,1,1\n2,2,2\n3,inf,3\n4,4,4\n5,-inf,5\n",
        {},
        "error: data.csv: column a must be finite; inf on line 4 (2 such value(s)); fix or blank the value",
    ),
    "overflow_when_scaled": (
        "id,a,b\n1,1,1\n2,2,2\n3,3,3\n4,1e308,4\n5,5,5\n",
        {},
        "error: data.csv: column a: 1e+308 on line 5 is too large to compute with (its square overflows float64); "
        "fix the value or bound the column in preprocess.outliers",
    ),
    # Lines 2-3 hold row 1, line 4 is blank, lines 5-7 hold row 2: 'oops' is on line 8, not "line 5".
    "line_after_multiline_fields": (
        MULTILINE_CSV,
        {"features": ["a", "b"]},
        "error: data.csv: column a must be numeric; e.g. 'oops' on line 8; if it holds categories, list it in "
        "preprocess.categorical.columns instead of preprocess.features",
    ),
    # Malformed rows: pandas used the first column as the index (first row), raised (later) or filled NaN (short).
    "extra_field_first_row": (
        "id,a,b\n1,1,1,9\n2,2,2\n3,3,3\n",
        {},
        "error: data.csv: line 2 has 4 fields where the header has 3 (1 such row(s)); fix the file, or set "
        "preprocess.data.bad_rows: skip to skip them",
    ),
    "extra_field_later_and_short_row": (
        "id,a,b\r\n1,1,1\r\n2,2\r\n3,3,3\r\n4,4,4,9\r\n",
        {},
        "error: data.csv: line 3 has 2 fields where the header has 3 (2 such row(s)); fix the file, or set "
        "preprocess.data.bad_rows: skip to skip them",
    ),
    "duplicate_id_is_a_plain_value": (
        "id,a,b\n5524,1,1\n7,2,2\n8,3,3\n5524,4,4\n",
        {},
        "error: data.csv: ID column id has duplicates, e.g. 5524 on lines 2 and 5",
    ),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_preprocess_cli_names_column_and_line(tmp_path, case):
    text, override, expected = CLI_CASES[case]
    (tmp_path / "data.csv").write_bytes(text.encode("utf-8"))
    assert the_error(run_preprocess(tmp_path, section(**override)), tmp_path) == expected


def test_bad_rows_skip_drops_malformed_rows_and_counts_them(tmp_path):
    rows = "".join(f"{i},{i}.5,{i % 3}\n" for i in range(1, 9))
    (tmp_path / "data.csv").write_text(f"id,a,b\n{rows}9,9\n10,1,2,3\n", encoding="utf-8")
    data = {**section()["data"], "bad_rows": "skip"}
    assert run_preprocess(tmp_path, section(data=data)).returncode == 0
    metrics = json.loads((tmp_path / "out/p.json").read_text())
    assert list(metrics)[:2] == ["rows_malformed", "rows_in"] and metrics["rows_malformed"] == 2
    assert metrics["rows_in"] == 8 and pd.read_csv(tmp_path / "out/f.csv")["id"].tolist() == list(range(1, 9))


def test_field_count_respects_quotes_and_block_edges(tmp_path, monkeypatch):
    # Quoted separators and newlines change the byte count, not the fields; lines cut by a block edge still count.
    monkeypatch.setattr(data_module, "BLOCK", 7)
    path = tmp_path / "data.csv"
    path.write_text('id,a,b\n1,"x,y",1\n\n2,"two\nlines",2\r\n3,3,3', encoding="utf-8")
    assert data_module.malformed_rows(path, ",", "utf-8") == []
    path.write_text("id,a,b\n1,1,1\n2,2\n" + "3,3,3\n" * 20 + "4" + ",4" * 300 + "\n", encoding="utf-8")
    assert data_module.malformed_rows(path, ",", "utf-8") == [(3, 2, 3), (24, 301, 3)]
    path.write_text("id,a,b\n1," + ",".join(["9"] * 257) + "\n2,2\n", encoding="utf-8")  # 258 = 2 modulo 256
    assert data_module.malformed_rows(path, ",", "utf-8") == [(2, 258, 3), (3, 2, 3)]


def test_undecodable_byte_gives_its_offset_and_line_in_the_file(tmp_path):
    # Far past pandas' first read chunk: pandas' own offset (exc.start) is relative to a chunk.
    lines = ["id,a,b", *(f"{i},{i},{i % 7}" for i in range(1, 60001))]
    lines[50000] = "50000,50000,caf\xe9"  # latin-1 é in a utf-8 file, on line 50001
    raw = ("\n".join(lines) + "\n").encode("latin-1")
    (tmp_path / "data.csv").write_bytes(raw)
    error = the_error(run_preprocess(tmp_path, section()), tmp_path)
    offset = raw.index(b"\xe9")
    assert error == (
        f"error: data.csv: cannot decode as utf-8: byte 0xe9 at offset {offset} (line 50001); "
        "set preprocess.data.encoding (e.g. latin-1)"
    )


def test_data_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "data.csv").mkdir()
    assert the_error(run_preprocess(tmp_path, section()), tmp_path) == (
        "error: data.csv: is a directory, not a CSV file (set preprocess.data.path in params.yaml)"
    )


# --- the pure functions: every branch of the rules ------------------------------------------------------------------


def test_blank_feature_with_missing_drop_names_it_rather_than_dropping_every_row():
    with pytest.raises(UserError) as err:
        preprocess(table(b=np.nan), params(missing="drop"), "x.csv")
    assert str(err.value) == (
        "x.csv: column b is blank on all 8 rows; preprocess.missing: drop would drop every row: "
        "fill it in or remove it from preprocess.features"
    )


def test_feature_blank_on_every_row_left_after_outliers_is_an_error():
    b = np.full(8, np.nan)
    b[3] = 1000.0  # its only value is an outlier
    with pytest.raises(UserError, match=r"column b is blank on all 7 rows left after dropping outliers; "):
        preprocess(table(b=b), params(outliers={"b": {"max": 100}}), "x.csv")


def test_one_hot_column_blank_everywhere_is_named():
    frame = table().assign(channel=np.nan)
    override = {"categorical": {"columns": ["channel"], "encoding": "onehot"}}
    with pytest.raises(UserError, match=r"column channel is blank on all 8 rows; .*preprocess.categorical.columns"):
        preprocess(frame, params(**override), "x.csv")


@pytest.mark.parametrize(("value", "shown"), [(-np.inf, "-inf"), (np.inf, "inf")])
def test_infinite_outlier_column_is_an_error_even_if_a_bound_would_drop_it(value, shown):
    c = np.ones(8)
    c[5] = value
    with pytest.raises(UserError, match=rf"column c must be finite; {shown} on line 7 \(1 such value"):
        preprocess(table(c=c), params(outliers={"c": {"min": 0, "max": 10}}), "x.csv")


def test_large_but_computable_values_pass_and_bounds_can_drop_huge_ones():
    a = np.linspace(1.0, 9.0, 8)
    a[2] = 1e150
    assert np.isfinite(preprocess(table(a=a), params(), "x.csv").matrix[["a", "b"]].to_numpy()).all()
    a[2] = 1e308
    result = preprocess(table(a=a), params(outliers={"a": {"max": 1e6}}), "x.csv")
    assert result.metrics["dropped_outliers"] == 1 and result.metrics["rows_out"] == 7


def test_pca_with_more_components_than_rows_is_a_params_error():
    with pytest.raises(UserError, match=r"preprocess.pca_components \(3\) exceeds the 2 rows left in x.csv"):
        preprocess(table(rows=2, c=[1.0, 2.0]), params(features=["a", "b", "c"], pca_components=3), "x.csv")


def test_identical_rows_stop_preprocess_before_pca_divides_by_zero():
    frame = table(rows=50, a=np.full(50, 3.0), b=np.full(50, 7.0))
    frame.loc[4, "b"] = np.nan  # imputed with the median: still one value
    with pytest.raises(UserError) as err:
        preprocess(frame, params(pca_components=2), "x.csv")
    assert str(err.value) == (
        "x.csv: every model column (a, b) has a single value on all 50 rows kept: nothing to cluster; check the data"
    )
    frame.loc[9, "a"] = 4.0  # one row differs: fine
    assert preprocess(frame, params(pca_components=2), "x.csv").metrics["rows_out"] == 50


def test_line_of_a_value_inside_a_multiline_row(tmp_path):
    # Row 2 starts on line 3; its note spans lines 3-4, so its value of b (after the note) is on line 4.
    (tmp_path / "data.csv").write_text('id,a,note,b\n1,1,x,1\n2,2,"two\nlines",bad\n3,3,y,3\n', encoding="utf-8")
    raw = load_csv(params(path=str(tmp_path / "data.csv")).data)
    with pytest.raises(UserError, match=r"column b must be numeric; e.g. 'bad' on line 4; if it holds categories"):
        preprocess(raw, params(path=str(tmp_path / "data.csv")), "data.csv")
    # a's value in the same row sits before the line break: line 3.
    (tmp_path / "data.csv").write_text('id,a,note,b\n1,1,x,1\n2,bad,"two\nlines",2\n3,3,y,3\n', encoding="utf-8")
    raw = load_csv(params(path=str(tmp_path / "data.csv")).data)
    with pytest.raises(UserError, match=r"column a must be numeric; e.g. 'bad' on line 3; if it holds categories"):
        preprocess(raw, params(path=str(tmp_path / "data.csv")), "data.csv")


# --- the marketing_campaign recipe: impossible values are errors by rule ---------------------------------------------

SPEND = ["MntWines", "MntFruits", "MntMeatProducts", "MntFishProducts", "MntSweetProducts", "MntGoldProds"]
PURCHASES = ["NumDealsPurchases", "NumWebPurchases", "NumCatalogPurchases", "NumStorePurchases"]
RECIPE = {
    "date_column": "Dt_Customer",
    "date_format": "%d-%m-%Y",
    "reference_date": "2015-01-01",
    "partnered_statuses": ["Married", "Together"],
    "single_statuses": ["Single"],
}


def marketing_table(rows: int = 12) -> pd.DataFrame:
    """A small table in the Kaggle marketing-campaign schema."""
    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {
            "ID": np.arange(100, 100 + rows),
            "Year_Birth": rng.integers(1950, 1995, rows),
            "Marital_Status": rng.choice(["Married", "Together", "Single"], rows),
            "Income": rng.integers(20000, 90000, rows).astype(float),
            "Kidhome": rng.integers(0, 3, rows),
            "Teenhome": rng.integers(0, 2, rows),
            "Dt_Customer": [f"{d:02d}-03-2013" for d in rng.integers(1, 28, rows)],
            "Recency": rng.integers(0, 99, rows),
            "NumWebVisitsMonth": rng.integers(0, 10, rows),
        }
    )
    for column in [*SPEND, *PURCHASES]:
        frame[column] = rng.integers(0, 500, rows)
    return frame


def marketing_params(**override) -> PreprocessParams:
    base = section(
        data={"path": "m.csv", "separator": ",", "id_column": "ID"},
        recipe="marketing_campaign",
        marketing_campaign=RECIPE,
        features=["Income", "Age", "Children", "Total_Spent", "Total_Purchases", "Recency"],
        missing="drop",
    )
    return PreprocessParams(**{**base, **override})


def test_marketing_table_passes():
    assert preprocess(marketing_table(), marketing_params(), "m.csv").metrics["rows_out"] == 12


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("MntWines", -40, r"m.csv: column MntWines cannot be negative \(a count or an amount\); -40 on line 5 "),
        ("Kidhome", -1, r"m.csv: column Kidhome cannot be negative .*; -1 on line 5 "),
        ("NumStorePurchases", -3, r"column NumStorePurchases cannot be negative .*; -3 on line 5 "),
        ("Recency", -9, r"column Recency cannot be negative .*; -9 on line 5 "),
        ("Income", -5.0, r"column Income cannot be negative .*; -5.0 on line 5 "),
        (
            "Year_Birth",
            2020,
            r"m.csv: column Year_Birth: 2020 on line 5 is after preprocess.marketing_campaign.reference_date "
            r"\(2015-01-01\), a negative age \(1 such value\(s\)\); fix the value or move reference_date",
        ),
    ],
)
def test_impossible_recipe_values_are_errors(column, value, expected):
    frame = marketing_table()
    frame.loc[3, column] = value
    with pytest.raises(UserError, match=expected):
        preprocess(frame, marketing_params(), "m.csv")


def test_a_date_format_pandas_cannot_use_is_a_params_error():
    recipe = {**RECIPE, "date_format": "%Q"}
    with pytest.raises(UserError) as err:
        preprocess(marketing_table(), marketing_params(marketing_campaign=recipe), "m.csv")
    assert str(err.value) == (
        "params.yaml: preprocess.marketing_campaign.date_format ('%Q'): 'Q' is a bad directive in format '%Q'; "
        "use strftime codes, e.g. '%d-%m-%Y'"
    )


def test_recipe_sum_that_overflows_names_the_derived_column():
    frame = marketing_table().astype({"MntWines": float, "MntMeatProducts": float})
    frame.loc[6, ["MntWines", "MntMeatProducts"]] = 1.7e308  # each finite, their sum is not
    with pytest.raises(UserError) as err:
        preprocess(frame, marketing_params(), "m.csv")
    assert str(err.value) == (
        "m.csv: column Total_Spent (derived from other columns: they overflow) must be finite; inf on line 8 "
        "(1 such value(s)); fix or blank the value"
    )


def test_infinite_recipe_input_names_the_input_column():
    frame = marketing_table().astype({"MntFruits": float})
    frame.loc[2, "MntFruits"] = np.inf
    with pytest.raises(UserError, match=r"m.csv: column MntFruits must be finite; inf on line 4 "):
        preprocess(frame, marketing_params(), "m.csv")

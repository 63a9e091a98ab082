"""The fitted preprocessing: check and select the raw rows, then fit the transformer (imputer, scaler, one-hot
encoder, PCA) and build the model matrix. Pure: DataFrames in, results out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from segmentation import recipes
from segmentation.config import ROW_ID_COLUMN, PreprocessParams
from segmentation.core import data
from segmentation.errors import UserError
from segmentation.files import LineLocator

CATEGORIES_HINT = "; if it holds categories, list it in preprocess.categorical.columns instead of preprocess.features"


@dataclass
class PreprocessResult:
    """What preprocess produces: unscaled features, the model matrix, the fitted transformer, row counts."""

    features: pd.DataFrame  # ID, features unscaled, categorical columns as read, evaluate.profile_columns
    matrix: pd.DataFrame  # ID + transformed columns (what the clusterer sees)
    transformer: Any  # a scikit-learn Pipeline
    metrics: dict[str, int]


def input_columns(params: PreprocessParams) -> list[str]:
    """The raw columns read: ID, the recipe's inputs and checked columns, features, categorical and outlier columns."""
    recipe = None if params.recipe is None else recipes.get(params.recipe)
    own = [*recipe.inputs(params.recipe_params), *recipe.checked] if recipe else []
    columns = [params.data.id_column or ROW_ID_COLUMN, *own, *params.features, *params.categorical.columns]
    return list(dict.fromkeys([*columns, *params.outliers]))


def onehot_columns(params: PreprocessParams) -> list[str]:
    """The categorical columns that go into the model matrix (one-hot encoded)."""
    return list(params.categorical.columns) if params.categorical.encoding == "onehot" else []


def model_columns(params: PreprocessParams) -> list[str]:
    """The columns the transformer reads, in order: the numeric features, then the one-hot columns."""
    return [*params.features, *onehot_columns(params)]


def build_transformer(params: PreprocessParams):
    """Numeric features: imputer (``missing: median``) -> StandardScaler (``scale``), beside one-hot columns
    (most-frequent imputer, OneHotEncoder ignoring unknown categories, not scaled); then PCA (``pca_components``)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    impute = params.missing == "median"
    numeric: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))] if impute else []
    numeric += [("scale", StandardScaler())] if params.scale else []
    steps = numeric
    if onehot := onehot_columns(params):
        categorical: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="most_frequent"))] if impute else []
        categorical.append(("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=float)))
        numeric_step = Pipeline(numeric) if numeric else "passthrough"
        columns = [("numeric", numeric_step, list(params.features)), ("categorical", Pipeline(categorical), onehot)]
        steps = [("columns", ColumnTransformer(columns, verbose_feature_names_out=False))]
    if params.pca_components is not None:
        # Deterministic (the randomized solver would need a seed); eigendecomposition of the features' covariance:
        # ~10x faster than the full SVD on a million rows, and no rows x features copies.
        steps = [*steps, ("pca", PCA(n_components=params.pca_components, svd_solver="covariance_eigh"))]
    return Pipeline(steps or [("identity", "passthrough")])


@dataclass
class Rows:
    """The row-wise part of preprocess (:func:`select_rows`) on one table, or on one partition of a larger one."""

    table: pd.DataFrame  # the kept rows and columns, under the raw row labels (messages name their lines)
    metrics: dict[str, int]  # rows_in, dropped_missing (or imputed_rows), outliers_<column>..., rows_out
    blank: list[str]  # the model columns blank on every row read
    profiled: list[str]  # the passed-through profile columns (evaluate.profile_columns), in output order
    derived: list[str]  # the columns the recipe computed (named as such in messages)
    categories: dict[str, list[Any]] = field(default_factory=dict)  # with ``distinct``: each one-hot column's values


def select_rows(raw: pd.DataFrame, params: PreprocessParams, id_col: str, source: str, lines: LineLocator,
                profile_columns: list[str] | None = None, distinct: bool = False) -> Rows:  # fmt: skip
    """Check the raw rows, derive the recipe's columns, keep the columns that matter and drop the rows with blanks
    (``missing: drop``) or outside the ``outliers`` bounds. Row by row: whole-table checks are the caller's."""
    df, derived = recipes.apply(params.recipe, raw, params.recipe_params, source, lines)
    categorical = list(params.categorical.columns)
    onehot = onehot_columns(params)
    data.require_columns(df, params.features, source, what="feature (preprocess.features)")
    data.require_columns(df, categorical, source, what="categorical (preprocess.categorical.columns)")
    data.require_columns(df, params.outliers, source, what="outlier (preprocess.outliers)")
    data.require_numeric(df, params.features, source, lines, hint=CATEGORIES_HINT)
    data.require_numeric(df, params.outliers, source, lines)
    data.require_finite(df, [*params.features, *params.outliers], source, lines, derived=derived)
    data.require_few_categories(df, onehot, params.categorical.max_categories, source)
    categories = {c: df[c].dropna().unique().tolist() for c in onehot} if distinct else {}
    profiled = data.expand_columns(profile_columns or [], df.columns, "evaluate.profile_columns", source)
    extra = [c for c in profiled if c not in {id_col, *params.features, *categorical}]
    # From here on only the columns that matter: no copy of the whole raw table.
    df = df[list(dict.fromkeys([id_col, *params.features, *categorical, *params.outliers, *extra]))]
    df = df.astype({c: "float64" for c in [*params.features, *params.outliers]})
    df = df.assign(**{c: data.as_categories(df[c]) for c in categorical})
    metrics: dict[str, int] = {"rows_in": len(df)}
    used = [*params.features, *onehot]  # the columns the model sees: blanks there are "missing"
    blank = [c for c in used if df[c].isna().all()]
    missing = df[used].isna().any(axis=1)
    metrics["dropped_missing" if params.missing == "drop" else "imputed_rows"] = int(missing.sum())
    kept = ~missing if params.missing == "drop" else pd.Series(True, index=df.index)
    # Outliers are counted among the rows kept so far; the rows are then filtered once.
    any_outlier = pd.Series(False, index=df.index)
    for column, mask in data.outlier_rows(df, params.outliers).items():
        mask &= kept
        metrics[f"outliers_{column}"] = int(mask.sum())
        any_outlier |= mask
    metrics["dropped_outliers"] = int(any_outlier.sum())
    kept &= ~any_outlier
    if not kept.all():
        df = df[kept]
    metrics["rows_out"] = len(df)
    return Rows(table=df, metrics=metrics, blank=blank, profiled=extra, derived=derived, categories=categories)


def preprocess(
    raw: pd.DataFrame, params: PreprocessParams, source: str, profile_columns: list[str] | None = None
) -> PreprocessResult:
    """Validate ``raw``, derive features, drop missing/outlier rows, fit the transformer (profile columns as read)."""
    return fit_preprocessing(keep_rows(raw, params, source, profile_columns), params)


def keep_rows(
    raw: pd.DataFrame, params: PreprocessParams, source: str, profile_columns: list[str] | None = None
) -> Rows:
    """The first half of :func:`preprocess` (the stage then drops ``raw``): the checked, kept rows, ID first."""
    lines = LineLocator.of(raw)  # physical lines of the CSV's rows, for messages
    raw, id_col = data.identify_rows(raw, params.data.id_column, source, lines)
    rows = select_rows(raw, params, id_col, source, lines, profile_columns)
    df, metrics, used = rows.table, rows.metrics, model_columns(params)
    require_values(used, rows.blank, metrics["rows_in"], params, source)
    require_enough_rows(metrics["rows_out"], params, source)
    if metrics["dropped_outliers"]:
        blank = [c for c in used if df[c].isna().all()]
        require_values(used, blank, len(df), params, source, after=" left after dropping outliers")
    require_computable(df, params.features, source, lines, rows.derived)
    if all(df[c].nunique(dropna=True) <= 1 for c in used):  # one distinct row: PCA would divide by a zero variance
        raise UserError(single_value_message(used, len(df), source))
    return rows


def fit_preprocessing(rows: Rows, params: PreprocessParams) -> PreprocessResult:
    """The second half of :func:`preprocess`: features table, fitted transformer, model matrix (finite: checked)."""
    id_col = rows.table.columns[0]
    table = output_table(rows.table, params, id_col, rows.profiled)
    transformer = build_transformer(params)
    values = transformer.fit_transform(table[model_columns(params)])
    matrix = pd.concat([table[[id_col]], pd.DataFrame(values, columns=matrix_names(params, transformer))], axis=1)
    return PreprocessResult(features=table, matrix=matrix, transformer=transformer, metrics=rows.metrics)


def output_table(df: pd.DataFrame, params: PreprocessParams, id_col: str, profiled: list[str]) -> pd.DataFrame:
    """The features table of kept rows: ID, features, categorical and profile columns (text ones as categories)."""
    table = df[[id_col, *params.features, *params.categorical.columns, *profiled]].reset_index(drop=True)
    text = [c for c in profiled if not pd.api.types.is_numeric_dtype(table[c])]
    return table.assign(**{c: data.as_categories(table[c]) for c in text}) if text else table


def matrix_names(params: PreprocessParams, transformer) -> list[str]:
    """The model matrix's column names: ``PC1..`` with PCA, else the features (and one-hot columns)."""
    if params.pca_components is not None:
        return [f"PC{i + 1}" for i in range(params.pca_components)]
    if onehot_columns(params):
        return [str(n) for n in transformer.get_feature_names_out(model_columns(params))]
    return list(params.features)


def require_enough_rows(rows_out: int, params: PreprocessParams, source: str) -> None:
    """Fail when fewer than two rows, or fewer rows than ``pca_components``, are left after the filters."""
    if rows_out < 2:
        raise UserError(f"{source}: only {rows_out} row(s) left after dropping missing values and outliers")
    if params.pca_components is not None and params.pca_components > rows_out:
        raise UserError(
            f"params.yaml: preprocess.pca_components ({params.pca_components}) exceeds the {rows_out} rows left in "
            f"{source}; lower it or set it to null"
        )


def single_value_message(used: list[str], rows: int, source: str) -> str:
    """The error when every model column holds one value on every kept row (nothing to cluster)."""
    return (
        f"{source}: every model column ({', '.join(used)}) has a single value on all {rows} rows kept: "
        "nothing to cluster; check the data"
    )


def require_values(
    used: list[str], blank: list[str], rows: int, params: PreprocessParams, source: str, after: str = ""
) -> None:
    """Fail naming the first model column blank on every row (median cannot impute it, drop would drop every row)."""
    for col in (c for c in used if c in blank):
        setting = "preprocess.features" if col in params.features else "preprocess.categorical.columns"
        consequence = "median cannot impute it" if params.missing == "median" else "drop would drop every row"
        raise UserError(
            f"{source}: column {col} is blank on all {rows} rows{after}; preprocess.missing: {consequence}: "
            f"fill it in or remove it from {setting}"
        )


def require_computable(
    df: pd.DataFrame, columns: list[str], source: str, lines: LineLocator, derived: list[str]
) -> None:
    """Fail when a column's sum of squares overflows float64 (scaling, PCA would), naming its largest value's line."""
    for col in columns:
        x = df[col].to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(over="ignore", invalid="ignore"):
            ok = np.isfinite(np.nansum(np.square(x)))
        if not ok:
            i = int(np.nanargmax(np.abs(x)))
            what = f"{col} (derived from other columns)" if col in derived else col
            line = lines.line(df.index[i], None if col in derived else col)
            raise UserError(
                f"{source}: column {what}: {float(x[i])!r} on line {line} is too large to compute with (its square "
                "overflows float64); fix the value or bound the column in preprocess.outliers"
            )

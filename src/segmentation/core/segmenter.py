"""The segmenter: one scikit-learn ``Pipeline`` from a raw CSV row to a segment: the recipe's features
(:class:`RecipeFeatures`), the fitted preprocessing and the fitted clusterer. The train stage builds it;
``segmentation.tools.score`` and ``mlflow models serve`` use it as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from segmentation import recipes
from segmentation.config import DataParams, PreprocessParams
from segmentation.core import data
from segmentation.core.transform import onehot_columns
from segmentation.files import LineLocator


class RecipeFeatures(TransformerMixin, BaseEstimator):
    """Raw rows -> the columns the fitted preprocessing reads, as preprocess computes them (numeric ``features``, then
    one-hot ``categorical`` columns as text); stateless. ``source`` names the rows in preprocess's error messages."""

    def __init__(self, recipe=None, recipe_params=None, features=(), categorical=(), source="input") -> None:
        self.recipe = recipe
        self.recipe_params = recipe_params
        self.features = features
        self.categorical = categorical
        self.source = source

    @classmethod
    def from_params(cls, params: PreprocessParams) -> RecipeFeatures:
        """The feature step of the preprocess params (the recipe, ``features``, one-hot ``categorical`` columns)."""
        knobs = None if params.recipe_params is None else params.recipe_params.model_dump(mode="json")
        return cls(params.recipe, knobs, tuple(params.features), tuple(onehot_columns(params)))

    def _recipe(self) -> tuple[recipes.Recipe | None, Any]:
        """The recipe's registry entry and its knobs (validated by its params model), or (None, None)."""
        recipe = None if self.recipe is None else recipes.get(self.recipe)
        knobs = recipe is not None and recipe.params is not None and self.recipe_params is not None
        return recipe, recipe.params.model_validate(self.recipe_params) if knobs else None

    def raw_columns(self) -> list[str]:
        """The raw columns it reads: the recipe's inputs and checked features, the raw features, categorical columns."""
        recipe, knobs = self._recipe()
        own = [*recipe.inputs(knobs), *(c for c in recipe.checked if c in self.features)] if recipe else []
        derived = recipe.derived if recipe else ()
        return list(dict.fromkeys([*own, *(c for c in self.features if c not in derived), *self.categorical]))

    def model_columns(self) -> list[str]:
        """The columns it outputs, in the order the preprocessing was fitted on."""
        return [*self.features, *self.categorical]

    def fit(self, X: Any, y: Any = None) -> RecipeFeatures:
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True  # nothing to learn

    def derive(self, X: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        """``X`` checked as preprocess checks it, with the recipe's derived columns added (all columns kept)."""
        source, lines = source or self.source, LineLocator.of(X)
        df, derived = recipes.apply(self.recipe, X, self._recipe()[1], source, lines)
        data.require_columns(df, self.features, source, what="feature (preprocess.features)")
        data.require_columns(df, self.categorical, source, what="categorical (preprocess.categorical.columns)")
        data.require_numeric(df, self.features, source, lines)
        data.require_finite(df, self.features, source, lines, derived=derived)
        return df

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        """The model's columns of a :meth:`derive`\\ d frame: features as float64, categorical columns as text."""
        out = df[self.model_columns()].astype({c: "float64" for c in self.features})
        return out.assign(**{c: data.as_categories(out[c]) for c in self.categorical})

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"RecipeFeatures takes a DataFrame of raw columns, not {type(X).__name__}")
        return self.select(self.derive(X))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.model_columns(), dtype=object)


def build_segmenter(params: PreprocessParams, preprocessor: Any, model: Any):
    """The fitted ``Pipeline``: the recipe's features, the fitted preprocessing, the fitted clusterer."""
    features = RecipeFeatures.from_params(params)
    return Pipeline([("features", features), ("preprocess", preprocessor), ("cluster", model)])


def _text_columns(step: RecipeFeatures) -> set[str]:
    """The raw columns that are text: the one-hot columns and the recipe's text inputs (the others are numbers)."""
    recipe, knobs = step._recipe()
    return {*step.categorical, *(recipe.text_inputs(knobs) if recipe else [])}


def input_schema(segmenter: Any):
    """MLflow's input signature of the raw columns (numbers as double, text as string): declared, as a sample without
    a blank Income would make it an integer column."""
    from mlflow.models import infer_signature

    step: RecipeFeatures = segmenter.named_steps["features"]
    text = _text_columns(step)
    example = {c: pd.Series(["x"], dtype=object) if c in text else pd.Series([1.0]) for c in step.raw_columns()}
    return infer_signature(pd.DataFrame(example), np.zeros(1, dtype=np.int32))


def example_rows(segmenter: Any, data: DataParams) -> pd.DataFrame | None:
    """The MLflow model's input example: a typical row (medians, most frequent texts) of the first 100 rows of the
    local raw CSV, so that no customer's own values travel with the model; None when the segmenter cannot score it."""
    if not Path(data.path).is_file():  # a folder or a remote table (engine dask): no example
        return None
    step: RecipeFeatures = segmenter.named_steps["features"]
    text = _text_columns(step)
    try:  # optional: a file it cannot read as CSV (Parquet) or a row it rejects leave the model without one
        head = pd.read_csv(data.path, sep=data.separator, encoding=data.encoding, nrows=100)
        rows = head[step.raw_columns()].dropna()
        row = pd.DataFrame({c: [rows[c].mode()[0] if c in text else float(rows[c].median())] for c in rows})
        segmenter.predict(row)
    except Exception:
        return None
    return row


def requirements(package: str = "segmentation") -> list[str]:
    """The pip requirements of a model that imports ``package``: its distribution's dependencies (extras left out),
    pinned to the installed versions, and cloudpickle (which pickled the model)."""
    from importlib.metadata import packages_distributions, requires, version

    from packaging.requirements import Requirement

    wanted = [Requirement(r) for r in requires(packages_distributions()[package][0]) or []]
    pinned = [f"{r.name}{'[' + ','.join(sorted(r.extras)) + ']' if r.extras else ''}=={version(r.name)}"
              for r in wanted if r.marker is None or r.marker.evaluate({"extra": ""})]  # fmt: skip
    return [*pinned, f"cloudpickle=={version('cloudpickle')}"]

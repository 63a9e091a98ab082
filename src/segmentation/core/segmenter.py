"""The segmenter: one scikit-learn ``Pipeline`` from a raw CSV row to a segment.

``Pipeline([("features", RecipeFeatures(...)), ("preprocess", <models/preprocessor.joblib>), ("cluster", model)])``:
the feature recipe of :mod:`segmentation.core.features` (derived columns, the model's columns in order), the fitted
preprocessing and the fitted clusterer of ``train.algorithm`` (always one with ``predict``: for an algorithm without
one, :class:`segmentation.algorithms.CentroidAssigner`, the nearest centroid of its training assignment). The train
stage builds it (``models/segmenter.joblib`` and the MLflow model ``segmenter`` of the train run);
``python -m segmentation.tools.score`` and ``mlflow models serve`` use it as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from segmentation.config import MarketingCampaignParams, PreprocessParams
from segmentation.core import data, features
from segmentation.files import LineLocator

RECIPES = ("marketing_campaign",)


class RecipeFeatures(TransformerMixin, BaseEstimator):
    """Raw rows (a DataFrame with the CSV's columns) -> the columns the fitted preprocessing reads, as preprocess
    computes them: the recipe's derived columns (ages and enrollment lengths at ``reference_date``), the numeric
    ``features`` as float64, then the one-hot ``categorical`` columns as text.

    Stateless (``fit`` learns nothing); the recipe's params are its constructor's arguments. Bad values (a date not
    in ``date_format``, a non-numeric feature, an unlisted marital status...) raise
    :class:`segmentation.errors.UserError` with the same one-line message as the preprocess stage.
    """

    def __init__(
        self,
        recipe: str | None = None,
        date_column: str = "Dt_Customer",
        date_format: str = "%d-%m-%Y",
        reference_date: str = "2015-01-01",
        partnered_statuses: tuple[str, ...] = (),
        single_statuses: tuple[str, ...] = (),
        features: tuple[str, ...] = (),
        categorical: tuple[str, ...] = (),
        source: str = "input",
    ) -> None:
        self.recipe = recipe
        self.date_column = date_column
        self.date_format = date_format
        self.reference_date = reference_date
        self.partnered_statuses = partnered_statuses
        self.single_statuses = single_statuses
        self.features = features
        self.categorical = categorical
        self.source = source

    @classmethod
    def from_params(cls, params: PreprocessParams) -> RecipeFeatures:
        """The feature step of the preprocess params (the recipe, ``features``, one-hot ``categorical`` columns)."""
        onehot = list(params.categorical.columns) if params.categorical.encoding == "onehot" else []
        recipe: dict[str, Any] = {}
        if params.recipe == "marketing_campaign" and params.marketing_campaign is not None:
            mc = params.marketing_campaign
            recipe = {
                "date_column": mc.date_column,
                "date_format": mc.date_format,
                "reference_date": mc.reference_date.isoformat(),
                "partnered_statuses": tuple(mc.partnered_statuses),
                "single_statuses": tuple(mc.single_statuses),
            }
        return cls(recipe=params.recipe, features=tuple(params.features), categorical=tuple(onehot), **recipe)

    # -- what it reads and writes ---------------------------------------------------------------------------
    def _recipe_params(self) -> MarketingCampaignParams:
        return MarketingCampaignParams(
            date_column=self.date_column,
            date_format=self.date_format,
            reference_date=self.reference_date,
            partnered_statuses=list(self.partnered_statuses),
            single_statuses=list(self.single_statuses),
        )

    def raw_columns(self) -> list[str]:
        """The raw columns it reads: the recipe's inputs (with the columns it checks), the raw features and the
        categorical columns (an ID is not among them)."""
        columns: list[str] = []
        if self.recipe == "marketing_campaign":
            columns += [*features.marketing_inputs(self._recipe_params())]
            columns += [c for c in features.NON_NEGATIVE_COLUMNS if c in self.features]
        derived = features.MARKETING_DERIVED if self.recipe == "marketing_campaign" else []
        columns += [c for c in self.features if c not in derived]
        return list(dict.fromkeys([*columns, *self.categorical]))

    def numeric_raw_columns(self) -> list[str]:
        """Of :meth:`raw_columns`, those read as numbers."""
        text = set(self.categorical)
        if self.recipe == "marketing_campaign":
            text |= {self.date_column, features.MARITAL_STATUS_COLUMN}
        return [c for c in self.raw_columns() if c not in text]

    def model_columns(self) -> list[str]:
        """The columns it outputs, in the order the preprocessing was fitted on."""
        return [*self.features, *self.categorical]

    # -- scikit-learn ---------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> RecipeFeatures:
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True  # nothing to learn

    def derive(self, X: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        """``X`` checked as preprocess checks it, with the recipe's derived columns added (all columns kept)."""
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}")
        source = source or self.source
        lines = LineLocator.of(X)
        df = X
        derived: list[str] = []
        if self.recipe == "marketing_campaign":
            params = self._recipe_params()
            data.require_columns(df, features.marketing_inputs(params), source, what="marketing_campaign recipe")
            data.require_numeric(df, features.MARKETING_NUMERIC_INPUTS, source, lines)
            data.require_finite(df, features.MARKETING_NUMERIC_INPUTS, source, lines)
            df = features.derive_marketing_features(df, params, source, lines)
            derived = features.MARKETING_DERIVED
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
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [("features", RecipeFeatures.from_params(params)), ("preprocess", preprocessor), ("cluster", model)]
    )


def input_schema(segmenter: Any):
    """MLflow's input signature of the raw columns the segmenter reads (numbers as double, text as string).

    Declared from the recipe rather than inferred from a sample of rows: a sample without a blank Income would make
    it an integer column and reject a request with a blank or a fraction.
    """
    from mlflow.models import infer_signature

    step: RecipeFeatures = segmenter.named_steps["features"]
    numeric = set(step.numeric_raw_columns())
    example = pd.DataFrame(
        {c: pd.Series([1.0], dtype="float64") if c in numeric else pd.Series(["x"], dtype=object) for c in
         step.raw_columns()}
    )  # fmt: skip
    return infer_signature(example, np.zeros(1, dtype=np.int32))

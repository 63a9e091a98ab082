"""Feature recipes: ``preprocess.recipe`` names one entry of :data:`REGISTRY` (null: the table's own columns).
Adding a recipe is its module (the function that derives the columns) and one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pydantic import BaseModel

from segmentation.core import data
from segmentation.files import LineLocator
from segmentation.recipes import marketing_campaign


@dataclass(frozen=True)
class Recipe:
    """One feature recipe of ``preprocess.recipe``."""

    # (raw rows, its params, source, lines) -> the rows with the derived columns added; bad values raise UserError
    derive: Callable[[pd.DataFrame, Any, str, LineLocator | None], pd.DataFrame]
    derived: tuple[str, ...]  # the columns it adds (messages name them as derived)
    inputs: Callable[[Any], list[str]]  # (its params) -> the raw columns it reads: all must be in the table
    numeric: Callable[[Any], list[str]]  # (its params) -> those of its inputs that are numbers (checked before derive)
    params: type[BaseModel] | None = None  # the model of preprocess.<name> (required when selected); None: no knobs
    checked: tuple[str, ...] = ()  # raw columns derive checks when the table has them (read with the inputs)

    def text_inputs(self, params: Any) -> list[str]:
        """Its inputs that are text (not :attr:`numeric`)."""
        return [c for c in self.inputs(params) if c not in self.numeric(params)]


_mc = marketing_campaign
# The one list of recipes: a name here is a valid preprocess.recipe.
REGISTRY: dict[str, Recipe] = {
    "marketing_campaign": Recipe(
        derive=_mc.derive_marketing_features, derived=tuple(_mc.MARKETING_DERIVED), inputs=_mc.marketing_inputs,
        numeric=lambda p: list(_mc.MARKETING_NUMERIC_INPUTS),  # the date and the marital status are text
        params=_mc.MarketingCampaignParams, checked=tuple(_mc.NON_NEGATIVE_COLUMNS),
    ),
}  # fmt: skip


def get(name: str) -> Recipe:
    """The registry entry of recipe ``name`` (a ``ValueError`` naming the known ones when there is none)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown recipe {name!r}; one of: {', '.join(REGISTRY) or 'none'} (or null)")
    return REGISTRY[name]


def apply(
    name: str | None, df: pd.DataFrame, params: Any, source: str, lines: LineLocator | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """``df`` with recipe ``name``'s derived columns (its inputs checked first) and their names."""
    if name is None:
        return df, []
    recipe = get(name)
    data.require_columns(df, recipe.inputs(params), source, what=f"{name} recipe")
    numeric = recipe.numeric(params)
    data.require_numeric(df, numeric, source, lines)
    data.require_finite(df, numeric, source, lines)
    return recipe.derive(df, params, source, lines), list(recipe.derived)

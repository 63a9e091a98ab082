"""Feature recipes: ``preprocess.recipe`` names one entry of :data:`REGISTRY` (null: no recipe, the table's own
columns are the features).

A recipe is a :class:`Recipe`: its params model (the section ``preprocess.<name>``; None: no knobs), the raw columns
it reads (and which of them are numbers), ``derive(df, params, source, lines)`` that returns the rows with its
derived columns added, the names of those columns, and the raw columns it checks when a table has them (e.g. counts
that cannot be negative). The preprocess stage (both engines), the segmenter (scoring new rows) and
:mod:`segmentation.config` (``preprocess.recipe`` and its section) ask this registry and nothing else.

Adding a recipe is its module (the function that derives the columns) and one entry in :data:`REGISTRY`; a project
then selects it with ``preprocess.recipe: <name>`` (its knobs in ``preprocess.<name>``), whatever data it was
generated with. tests/test_extensions.py registers one at run time and runs preprocess and scoring with it.
"""

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

    # (raw rows, its params, the input's name for messages, their lines) -> the rows with the derived columns added
    # (a shallow copy: the input's columns are shared). Bad values raise segmentation.errors.UserError naming the
    # column and the line (``lines.line(row_label, column)``).
    derive: Callable[[pd.DataFrame, Any, str, LineLocator | None], pd.DataFrame]
    derived: tuple[str, ...]  # the columns it adds (messages name them as derived)
    inputs: Callable[[Any], list[str]]  # (its params) -> the raw columns it reads: all must be in the table
    numeric: Callable[[Any], list[str]]  # (its params) -> those of its inputs that are numbers (checked before derive)
    params: type[BaseModel] | None = None  # the model of preprocess.<name> (required when selected); None: no knobs
    checked: tuple[str, ...] = ()  # raw columns derive checks when the table has them (read with the inputs)

    def text_inputs(self, params: Any) -> list[str]:
        """Its inputs that are text (not :attr:`numeric`)."""
        numeric = set(self.numeric(params))
        return [c for c in self.inputs(params) if c not in numeric]


_mc = marketing_campaign
# The one list of recipes: a name here is a valid preprocess.recipe.
REGISTRY: dict[str, Recipe] = {
    "marketing_campaign": Recipe(
        derive=_mc.derive_marketing_features,
        derived=tuple(_mc.MARKETING_DERIVED),
        inputs=_mc.marketing_inputs,
        numeric=_mc.numeric_inputs,
        params=_mc.MarketingCampaignParams,
        checked=tuple(_mc.NON_NEGATIVE_COLUMNS),
    ),
}


def get(name: str) -> Recipe:
    """The registry entry of recipe ``name`` (a ``ValueError`` naming the known ones when there is none)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown recipe {name!r}; one of: {', '.join(REGISTRY) or 'none'} (or null)")
    return REGISTRY[name]


def input_columns(name: str | None, params: Any) -> list[str]:
    """The raw columns recipe ``name`` reads with its ``params``, then those it checks (read when present)."""
    if name is None:
        return []
    recipe = get(name)
    return list(dict.fromkeys([*recipe.inputs(params), *recipe.checked]))


def apply(
    name: str | None, df: pd.DataFrame, params: Any, source: str, lines: LineLocator | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """``df`` with recipe ``name``'s derived columns and their names; ``(df, [])`` for no recipe (null).

    First its inputs are checked (present; the numeric ones numbers and finite), each failure one
    :class:`segmentation.errors.UserError` naming the file, the column and the line; then ``derive`` runs."""
    if name is None:
        return df, []
    recipe = get(name)
    data.require_columns(df, recipe.inputs(params), source, what=f"{name} recipe")
    numeric = recipe.numeric(params)
    data.require_numeric(df, numeric, source, lines)
    data.require_finite(df, numeric, source, lines)
    return recipe.derive(df, params, source, lines), list(recipe.derived)

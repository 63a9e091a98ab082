"""Generic row checks and filters: pure functions on DataFrames (the feature recipes are in
:mod:`segmentation.recipes`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from segmentation.errors import UserError
from segmentation.files import LineLocator, plain


def require_non_negative(df: pd.DataFrame, columns: list[str], source: str, lines: LineLocator | None = None) -> None:
    """Fail naming the first of ``columns`` (those present in ``df``) with a negative value, and its line."""
    for col in [c for c in columns if c in df.columns]:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values[values < 0]
        if len(bad):
            raise UserError(
                f"{source}: column {col} cannot be negative (a count or an amount); {plain(bad.iloc[0])!r} on line "
                f"{(lines or LineLocator()).line(bad.index[0], col)} ({len(bad)} such value(s)); fix or blank it"
            )


def outlier_rows(df: pd.DataFrame, bounds: dict[str, Any]) -> dict[str, pd.Series]:
    """One boolean mask per bounded column: rows outside the inclusive [min, max] range (blanks are not outliers)."""
    masks = {}
    for column, rule in bounds.items():
        values = df[column]
        mask = pd.Series(False, index=df.index)
        if rule.min is not None:
            mask |= values < rule.min
        if rule.max is not None:
            mask |= values > rule.max
        masks[column] = mask.fillna(False).astype(bool)
    return masks

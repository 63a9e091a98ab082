"""Generic row checks and filters: pure functions on DataFrames (the recipes are in :mod:`segmentation.recipes`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from segmentation.errors import UserError
from segmentation.files import LineLocator, plain


def require_non_negative(df: pd.DataFrame, columns: list[str], source: str, lines: LineLocator | None = None) -> None:
    """Fail naming the first of ``columns`` (those present in ``df``) with a negative value, and its line."""
    for col in [c for c in columns if c in df.columns]:
        values = pd.to_numeric(df[col], errors="coerce")
        if len(bad := values[values < 0]):
            raise UserError(
                f"{source}: column {col} cannot be negative (a count or an amount); {plain(bad.iloc[0])!r} on line "
                f"{(lines or LineLocator()).line(bad.index[0], col)} ({len(bad)} such value(s)); fix or blank it"
            )


def outlier_rows(df: pd.DataFrame, bounds: dict[str, Any]) -> dict[str, pd.Series]:
    """One boolean mask per bounded column: rows outside the inclusive [min, max] range (blanks are not outliers)."""
    masks = {}
    for column, rule in bounds.items():
        values, mask = df[column], pd.Series(False, index=df.index)
        mask |= (values < rule.min) if rule.min is not None else False
        mask |= (values > rule.max) if rule.max is not None else False
        masks[column] = mask.fillna(False).astype(bool)
    return masks

"""User-facing errors and the wrapper that turns them into one readable line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input (data, params, paths): reported in one line, no traceback."""


def stage_entrypoint(func: Callable[..., None]) -> Callable[..., None]:
    """Run a stage's ``main``; a :class:`UserError` prints ``error: ...`` and exits with status 2.

    Anything else is a bug in the template and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> None:
        try:
            func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper

"""User-facing errors and the wrapper that turns them into one readable line."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable

RESTORE = "python -m segmentation.stages.runner --restore"


class UserError(Exception):
    """A problem with the user's input (data, params, paths): reported in one line, no traceback."""


def restore_hint() -> str:
    """Under DVC, which removes a stage's outputs before running it: how to get the last good ones back."""
    hint = f"; dvc removed its outputs: the last good ones (dvc.lock) come back with {RESTORE} (make repro does it)"
    return hint if os.environ.get("DVC_STAGE") else ""


def stage_entrypoint(func: Callable[..., None], name: str | None = None) -> Callable[..., None]:
    """Run a stage's ``main``: a :class:`UserError` is one ``error:`` line (exit 2), Ctrl-C one ``interrupted:`` line
    naming ``name`` (default: ``func``'s module; exit 130). Anything else is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C raises (see __init__.py)
        try:
            func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}{restore_hint()}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            spec = getattr(sys.modules.get(func.__module__), "__spec__", None)  # `python -m` runs it as __main__
            stage = name or (spec.name if spec else func.__module__).rpartition(".")[2]
            print(f"interrupted: {stage} stopped; no output is half-written{restore_hint()}", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper

"""User-facing errors and the wrapper that turns them into one readable line."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input (data, params, paths): reported in one line, no traceback."""


def stage_entrypoint(func: Callable[..., None], name: str | None = None) -> Callable[..., None]:
    """Run a stage's ``main``: a :class:`UserError` is one ``error:`` line (exit 2), Ctrl-C one ``interrupted:`` line
    naming ``name`` (default: ``func``'s module; exit 130). Anything else is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> None:
        previous = _watch_interrupts()
        try:
            func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            spec = getattr(sys.modules.get(func.__module__), "__spec__", None)  # `python -m` runs it as __main__
            stage = name or (spec.name if spec else func.__module__).rpartition(".")[2]
            print(f"interrupted: {stage} stopped; its outputs are replaced all together or not at all", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    return wrapper


_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _watch_interrupts():
    """Note Ctrl-C as well as raising it: Python drops one that lands in a finalizer ("Exception ignored in ..."),
    and the stage would go on to commit; :func:`raise_if_interrupted` stops it."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if sys.unraisablehook is not _quiet_unraisable:
        _quiet_unraisable.previous = sys.unraisablehook
        sys.unraisablehook = _quiet_unraisable
    return signal.signal(signal.SIGINT, _on_sigint)


def _quiet_unraisable(unraisable) -> None:
    """No stray traceback for a Ctrl-C swallowed in a finalizer: the stage stops at the next check, in one line."""
    if _interrupted and unraisable.exc_type is KeyboardInterrupt:
        return
    _quiet_unraisable.previous(unraisable)


_quiet_unraisable.previous = sys.unraisablehook


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came at any point, even where Python swallowed it."""
    if _interrupted:
        raise KeyboardInterrupt

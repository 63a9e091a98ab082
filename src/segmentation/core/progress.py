"""Progress of long steps: live on a terminal (a tqdm bar), one line per step in logs (dvc, CI, a file)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LONG_STEP_S = 1.0  # a step shorter than this prints nothing in a log: small data stays quiet


@contextmanager
def parts(stage: str, what: str, total: int, unit: str = "it", every_s: float = 0.0) -> Iterator[Callable[[str], None]]:
    """A step of ``total`` parts: a tqdm bar on a terminal, else one line per part (at most one per ``every_s``
    seconds: many short parts stay quiet); yields the function "part done"."""
    if not sys.stderr.isatty():
        last = time.perf_counter()

        def line(message: str) -> None:
            nonlocal last
            if time.perf_counter() - last >= every_s:
                print(f"{stage}: {message}", file=sys.stderr, flush=True)
                last = time.perf_counter()

        yield line
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=f"{stage}: {what}", unit=unit, file=sys.stderr, leave=False) as bar:

        def done(message: str) -> None:
            bar.set_postfix_str(message, refresh=False)
            bar.update(1)

        yield done


@contextmanager
def step(stage: str, what: str) -> Iterator[None]:
    """A single long step: ``<stage>: <what> ...`` then its time on a terminal; in a log one line with its time if
    it took ``LONG_STEP_S`` or more. A failed step prints nothing: its error is the one line."""
    tty = sys.stderr.isatty()
    clear = "\r\033[K" if tty else ""  # a terminal's "... " line is cleared for what comes next
    print(f"{stage}: {what} ..." if tty else "", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(clear, end="", file=sys.stderr, flush=True)  # the error says what happened
        raise
    seconds = time.perf_counter() - start
    if tty or seconds >= LONG_STEP_S:
        print(f"{clear}{stage}: {what} ({seconds:.1f} s)", file=sys.stderr, flush=True)

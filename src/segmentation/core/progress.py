"""Progress of long steps: live on a terminal (a tqdm bar), one line per step in logs (dvc, CI, a file)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

# A step shorter than this prints nothing in a log: small data stays quiet.
LONG_STEP_S = 1.0


def _tty() -> bool:
    return sys.stderr.isatty()


class Progress:
    """A step made of ``total`` parts (the k values of a search): a tqdm bar on a terminal; elsewhere one line
    per part, ``<stage>: <message>``, as each part ends."""

    def __init__(self, stage: str, what: str, total: int, unit: str = "it") -> None:
        self.stage = stage
        self.bar = None
        if _tty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{stage}: {what}", unit=unit, file=sys.stderr, leave=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()

    def step(self, message: str) -> None:
        """One part done."""
        if self.bar is not None:
            self.bar.set_postfix_str(message, refresh=False)
            self.bar.update(1)
        else:
            print(f"{self.stage}: {message}", file=sys.stderr, flush=True)


@contextmanager
def step(stage: str, what: str) -> Iterator[None]:
    """A single long step (reading a big file, a fit, a score): on a terminal ``<stage>: <what> ...`` while it runs,
    then its time; in a log one line with its time, only when it took ``LONG_STEP_S`` or more. A step that fails
    prints nothing: its error is the one line."""
    tty = _tty()
    if tty:
        print(f"{stage}: {what} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        if tty:  # the error says what happened: clear the line for it
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        raise
    seconds = time.perf_counter() - start
    if tty:
        print(f"\r\033[K{stage}: {what} ({seconds:.1f} s)", file=sys.stderr, flush=True)
    elif seconds >= LONG_STEP_S:
        print(f"{stage}: {what} ({seconds:.1f} s)", file=sys.stderr, flush=True)

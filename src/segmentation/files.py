"""A stage's outputs written all together or not at all, and reading what earlier stages wrote."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from segmentation.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _temp_beside(path: Path) -> Path:
    """A new empty file named like ``path``, in a new hidden folder beside it.

    Same filesystem, so the final move is an atomic rename; same name, so it can be logged (an MLflow artifact)
    before it is moved into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = folder / path.name
    tmp.touch()
    os.chmod(tmp, 0o666 & ~_UMASK)  # outputs get the usual permissions
    return tmp


def _remove_temp(tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: someone else's file, left alone
        tmp.parent.rmdir()


class StageOutputs:
    """A stage's outputs, committed all together or not at all.

    Every output is first written to a temporary file beside its target. :meth:`commit` then moves them all into
    place; should a move fail halfway, the targets already replaced get their previous content back (from hard-linked
    backups). Until the commit, and on any failure before it (an error, Ctrl-C, a full disk, an unwritable folder),
    the previous outputs stay byte-identical, in step with ``dvc.lock``. Use as a context manager: temporary files
    are removed whatever happens.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # target -> temporary file

    def __enter__(self) -> StageOutputs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    def path(self, target: str | Path) -> Path:
        """A temporary file to write ``target``'s new content to."""
        target = Path(target)
        if target in self._staged:
            return self._staged[target]
        if target.is_dir():
            raise UserError(f"{target}: is a directory, expected a file; remove it and run again")
        try:
            tmp = _temp_beside(target)
        except OSError as exc:
            raise UserError(f"{target}: cannot write ({exc.strerror}); earlier results are unchanged") from None
        self._staged[target] = tmp
        return tmp

    def write_json(self, target: str | Path, data: dict[str, Any]) -> None:
        """Indented JSON (keys in insertion order, for readable diffs)."""
        self._write(target, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))

    def write_csv(self, target: str | Path, df: pd.DataFrame) -> None:
        """Comma-separated CSV without the index (floats round-trip exactly)."""
        self._write(target, lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n"))

    def dump_model(self, target: str | Path, obj: Any) -> None:
        """A fitted estimator, pickled with joblib."""

        def dump(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                joblib.dump(obj, fh)

        self._write(target, dump)

    def save_figure(self, target: str | Path, fig: Any, dpi: int) -> None:
        """A matplotlib figure as PNG (then closed)."""
        import matplotlib.pyplot as plt

        # PNG metadata without a Software version keeps the bytes identical across matplotlib patch releases.
        try:
            self._write(
                target,
                lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None}),
            )
        finally:
            plt.close(fig)

    def _write(self, target: str | Path, write) -> None:
        tmp = self.path(target)
        try:
            write(tmp)
        except OSError as exc:  # a full disk, a quota, an I/O error: the user's to fix, nothing replaced yet
            raise UserError(f"{target}: cannot write ({exc.strerror or exc}); earlier results are unchanged") from None

    def commit(self) -> None:
        """Move every staged file into place; on a failure, put back what was already replaced, then raise."""
        backups: dict[Path, Path] = {}
        done: list[Path] = []
        current = None
        try:
            for current in self._staged:
                if current.is_file():
                    backup = current.with_name(f".{current.name}.{os.getpid()}.bak")
                    backup.unlink(missing_ok=True)
                    os.link(current, backup)
                    backups[current] = backup
            for current, tmp in self._staged.items():
                os.replace(tmp, current)
                done.append(current)
                _remove_temp(tmp)
        except OSError as exc:
            for target in done:
                if target in backups:
                    os.replace(backups[target], target)
                else:
                    target.unlink(missing_ok=True)
            raise UserError(f"{current}: cannot replace ({exc.strerror}); earlier results are unchanged") from None
        finally:
            for backup in backups.values():
                backup.unlink(missing_ok=True)
        self._staged.clear()

    def discard(self) -> None:
        """Remove the temporary files that were not committed."""
        for tmp in self._staged.values():
            _remove_temp(tmp)
        self._staged.clear()

    def staged(self, target: str | Path) -> Path | None:
        """The file holding ``target``'s new content until the commit (None if ``target`` is not an output)."""
        return self._staged.get(Path(target))


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV written by a previous stage; a missing file is a :class:`~segmentation.errors.UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run the earlier stages first (dvc repro)")
    return pd.read_csv(path)


def load_model(path: str | Path) -> Any:
    """Load a joblib pickle written by a previous stage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run the earlier stages first (dvc repro)")
    return joblib.load(path)

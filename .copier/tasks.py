"""Run by copier after copy and update, in the generated project (see copier.yml `_tasks`).

1. uv.lock names the project: rename its root package to the project's [project] name, or
   `uv sync --frozen` (make setup) refuses the lock.
2. DVC and the tests need a git repository: `git init` unless the project is already inside one.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT_PACKAGE = re.compile(r'(\[\[package\]\]\nname = )"[^"]*"(\nversion = "[^"]*"\nsource = \{ editable = "\." \})')


def rename_lock(root: Path) -> None:
    lock = root / "uv.lock"
    if not lock.is_file():
        return
    name = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]
    text = lock.read_text(encoding="utf-8")
    renamed, n = ROOT_PACKAGE.subn(rf'\g<1>"{name}"\g<2>', text)
    if n != 1:
        raise SystemExit("uv.lock: cannot find the project's own package entry")
    if renamed != text:
        lock.write_text(renamed, encoding="utf-8")


def ensure_git(root: Path) -> None:
    inside = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True)
    if inside.returncode != 0:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)


if __name__ == "__main__":
    here = Path.cwd()
    rename_lock(here)
    ensure_git(here)

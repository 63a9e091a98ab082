"""Run by copier after copy and update, in the generated project (see copier.yml `_tasks`).

1. uv.lock names the project: rename its root package to the project's [project] name, or
   `uv sync --frozen` (make setup) refuses the lock. A project generated without an extra of the template (dask:
   the optional Dask engine) gets a lock without it and without the packages only it needs: the lock `uv lock`
   would make for the project's pyproject.toml (offline: no resolver run).
2. A template with uncommitted changes: copier includes them through a temporary commit of its own and records
   that commit, which exists nowhere, so a later `copier update` fails. Record the template's real HEAD instead
   and say so: the draft changes stay in the project as if they were its own edits.
3. A template given by a relative path is recorded by its absolute path, so `copier update` finds it.
4. DVC, `dvc exp run` and `copier update` need a git repository with a first commit: on copy, `git init` (unless
   the project is already inside a repository) and commit the generated files.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT_PACKAGE = re.compile(r'(\[\[package\]\]\nname = )"[^"]*"(\nversion = "[^"]*"\nsource = \{ editable = "\." \})')
ANSWERS = ".copier-answers.yml"
COMMIT_LINE = re.compile(r"^_commit: (\S+)$", re.M)
SRC_LINE = re.compile(r"^_src_path: (.+)$", re.M)
DRAFT_COMMIT = "Copier automated commit for draft changes"  # copier's own message (copier/_vcs.py)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


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


PACKAGE_HEADER = "\n[[package]]\n"


def drop_undeclared_extras(root: Path) -> None:
    """Take out of uv.lock the extras of the project's own package that its pyproject.toml does not declare (the
    template's lock has them all), then every package nothing else needs: its requirements, dev groups and remaining
    extras, followed through the packages' own dependencies and extras."""
    lock = root / "uv.lock"
    if not lock.is_file():
        return
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    declared = set(pyproject["project"].get("optional-dependencies", {}))
    head, *blocks = lock.read_text(encoding="utf-8").split(PACKAGE_HEADER)
    parsed = [tomllib.loads(f"[[package]]\n{block}")["package"][0] for block in blocks]
    (own,) = [i for i, p in enumerate(parsed) if p.get("source") == {"editable": "."}]
    dropped = sorted(set(parsed[own].get("optional-dependencies", {})) - declared)
    if not dropped:
        return
    block = blocks[own]
    for extra in dropped:
        block = re.sub(rf"^{re.escape(extra)} = \[\n(?: {{4}}.*\n)*\]\n", "", block, flags=re.M)
        block = re.sub(rf"^ {{4}}.*extra == '{re.escape(extra)}'.*\n", "", block, flags=re.M)
    block = block.replace("[package.optional-dependencies]\n\n", "")
    provides = [e for e in parsed[own].get("metadata", {}).get("provides-extras", []) if e not in dropped]
    listed = "provides-extras = [" + ", ".join(f'"{e}"' for e in provides) + "]\n" if provides else ""
    block = re.sub(r"^provides-extras = \[.*\]\n", listed, block, flags=re.M)
    blocks[own], parsed[own] = block, tomllib.loads(f"[[package]]\n{block}")["package"][0]

    by_name = {p["name"]: p for p in parsed}
    own_deps = [*parsed[own].get("dependencies", [])]
    for group in (parsed[own].get("dev-dependencies", {}), parsed[own].get("optional-dependencies", {})):
        own_deps += [dep for deps in group.values() for dep in deps]
    needed, extras, todo = {parsed[own]["name"]}, set(), own_deps
    while todo:
        dep = todo.pop()
        name, package = dep["name"], by_name[dep["name"]]
        if name not in needed:
            needed.add(name)
            todo += package.get("dependencies", [])
        for extra in dep.get("extra", []):
            if (name, extra) not in extras:
                extras.add((name, extra))
                todo += package.get("optional-dependencies", {}).get(extra, [])
    kept = [b for b, p in zip(blocks, parsed, strict=True) if p["name"] in needed]
    lock.write_text(PACKAGE_HEADER.join([head, *kept]), encoding="utf-8")


def record_real_template_commit(root: Path, template_clone: Path) -> None:
    """Replace copier's temporary draft commit in the answers file by the template's real commit (its parent)."""
    answers = root / ANSWERS
    commit = COMMIT_LINE.search(answers.read_text(encoding="utf-8")) if answers.is_file() else None
    if commit is None:
        return
    subject = git("log", "-1", "--format=%s", commit.group(1), cwd=template_clone).stdout.strip()
    if subject != DRAFT_COMMIT:
        return
    real = git("describe", "--tags", "--always", f"{commit.group(1)}^", cwd=template_clone).stdout.strip()
    if not real:
        return
    text = answers.read_text(encoding="utf-8")
    answers.write_text(COMMIT_LINE.sub(f"_commit: {real}", text, count=1), encoding="utf-8")
    print(
        f"note: the template had uncommitted changes; they are in this project as your own edits on top of the "
        f"template's commit {real} (commit them in the template first to have them recorded as the template's)",
        file=sys.stderr,
    )


def absolute_template_path(root: Path) -> None:
    """A template given by a relative path (``copier copy ../template x``) is recorded as such, and `copier update`,
    run from the project, cannot find it: record it absolute (copier leaves the shell's ``PWD`` as it was)."""
    answers = root / ANSWERS
    src = SRC_LINE.search(answers.read_text(encoding="utf-8")) if answers.is_file() else None
    if src is None or "://" in src.group(1) or src.group(1).startswith(("/", "gh:", "gl:", "git@", "'", '"')):
        return
    absolute = Path(os.environ.get("PWD", "."), src.group(1)).resolve()
    if (absolute / ".git").exists():
        text = answers.read_text(encoding="utf-8")
        answers.write_text(SRC_LINE.sub(f"_src_path: {absolute}", text, count=1), encoding="utf-8")


def ensure_git(root: Path) -> bool:
    """``git init`` unless ``root`` is inside a repository; True when a repository was created."""
    if git("rev-parse", "--git-dir", cwd=root).returncode == 0:
        return False
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return True


def first_commit(root: Path) -> None:
    """Commit the generated project, with the user's git identity or, when none is set, a neutral one."""
    identity = []
    if not git("config", "user.email", cwd=root).stdout.strip() and not os.environ.get("GIT_AUTHOR_EMAIL"):
        identity = ["-c", "user.name=copier", "-c", "user.email=copier@localhost"]
    git("add", "-A", cwd=root)
    done = git(*identity, "commit", "-q", "-m", "Generated from the customer-segmentation template", cwd=root)
    if done.returncode != 0:
        print(f"note: no first commit ({done.stderr.strip()}); commit the project yourself", file=sys.stderr)


if __name__ == "__main__":
    operation, template_clone = sys.argv[1], Path(sys.argv[2])
    here = Path.cwd()
    rename_lock(here)
    drop_undeclared_extras(here)
    record_real_template_commit(here, template_clone)
    absolute_template_path(here)
    created = ensure_git(here)
    if created and operation == "copy":
        first_commit(here)

"""``make check``: the committed results are what the committed code, params and data produce.

``lock``: no dependency or param recorded in ``dvc.lock`` differs from the working tree. ``clone``: in a fresh clone
of HEAD (this DVC cache, its own MLflow store), ``dvc repro`` then ``dvc repro --force`` leave ``git status`` empty.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from segmentation.config import flatten
from segmentation.errors import UserError, stage_entrypoint
from segmentation.pipeline import load_yaml

TIMEOUT_S = 1800  # one pipeline run; bounded so a hung stage cannot hold CI


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or ["(no output)"])[-1]


def stale_lock(root: Path) -> list[str]:
    """The deps and params (``train.k_max 8 -> 9``) that differ from ``dvc.lock``; missing ones (outputs of earlier
    stages on a fresh clone) are not stale."""
    status = _run(_dvc("status", "--json"), root)
    if status.returncode != 0:
        raise UserError(f"dvc status failed: {_last_line(status)}")
    problems = []
    for stage, items in json.loads(status.stdout or "{}").items():
        for item in items if isinstance(items, list) else []:
            for path, state in ((item.get("changed deps") if isinstance(item, dict) else None) or {}).items():
                if state == "modified":
                    problems.append(f"{stage}: {path} changed since dvc.lock")
                elif isinstance(state, dict):  # a params file: {param: "modified"}
                    changed = ", ".join(_param_changes(root, stage, path)) or ", ".join(state)
                    problems.append(f"{stage}: {path} params changed since dvc.lock ({changed})")
    return problems


def _param_changes(root: Path, stage: str, params_file: str) -> list[str]:
    """``train.k_max 8 -> 9``: the params of ``stage`` whose value in ``params_file`` is not the one in ``dvc.lock``."""
    try:
        recorded = load_yaml((root / "dvc.lock").read_text(encoding="utf-8"))["stages"][stage]["params"][params_file]
        current = flatten(load_yaml((root / params_file).read_text(encoding="utf-8")))
    except Exception:  # unreadable: the line names the params dvc status found changed
        return []
    old = flatten(recorded)
    new = {k: v for k, v in current.items() if any(k == r or k.startswith(f"{r}.") for r in recorded)}
    # Compared as text: PyYAML reads DVC's 1e-06 in dvc.lock as a string.
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old | new) if str(old.get(k)) != str(new.get(k))]


def fresh_clone_differences(root: Path) -> list[str]:
    """What ``git status`` shows in a fresh clone of HEAD after ``dvc repro``, then after ``dvc repro --force``."""
    with tempfile.TemporaryDirectory(prefix="segmentation-check-") as tmp:
        clone = Path(tmp) / "clone"
        cloned = _run(["git", "clone", "-q", "--no-hardlinks", str(root), str(clone)], root)
        if cloned.returncode != 0:
            raise UserError(f"git clone of {root} failed: {cloned.stderr.strip()}")
        env = dict(os.environ)
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            MLFLOW_TRACKING_URI=f"sqlite:///{clone / 'mlflow.db'}",  # the check's runs stay in the clone
            DVC_SITE_CACHE_DIR=str(clone.parent / "dvc-site-cache"),
        )
        _run(_dvc("cache", "dir", "--local", str((root / ".dvc" / "cache").resolve())), clone, env)
        # Data tracked by .dvc files (the raw data): from the shared cache, else the default remote.
        for dvc_file in _run(["git", "ls-files", "*.dvc"], clone).stdout.split():
            checkout, pull = _dvc("checkout", "--quiet", dvc_file), _dvc("pull", "--quiet", dvc_file)
            if _run(checkout, clone, env).returncode != 0 and _run(pull, clone, env).returncode != 0:
                raise UserError(f"{dvc_file}: data neither in the DVC cache nor on the remote; run dvc push")
        problems = []
        for args in (("repro",), ("repro", "--force")):
            repro = _run(_dvc(*args), clone, env)
            if repro.returncode != 0:
                return [f"dvc {' '.join(args)} failed in a fresh clone: {_last_line(repro)}"]
            changed = _run(["git", "status", "--porcelain"], clone, env).stdout.splitlines()
            problems += [f"after dvc {' '.join(args)}: {line.strip()}" for line in changed]
        return problems


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m segmentation.tools.checks [lock|clone|all]``; exit status 1 with one line per problem."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", nargs="?", choices=["lock", "clone", "all"], default="all")
    args = parser.parse_args(argv)
    checks = [
        ("lock", stale_lock, "run `dvc repro` and commit dvc.lock with the results",
         "dvc.lock matches the code, params and data"),
        ("clone", fresh_clone_differences, "commit every result of `dvc repro` (dvc.lock, metrics/, reports/)",
         "in a fresh clone, dvc repro and dvc repro --force leave git status empty"),
    ]  # fmt: skip
    for name, check, fix, passed in checks:
        if args.check not in (name, "all"):
            continue
        problems = check(Path.cwd())
        if problems:  # a stale lock makes the clone check moot: stop at the first that fails
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            print(f"fix: {fix}", file=sys.stderr)
            raise SystemExit(1)
        print(f"check: {passed}")


if __name__ == "__main__":
    main()

"""Check that the committed results are what the committed code, params and data produce (``make check``).

1. ``lock``: no dependency or param recorded in ``dvc.lock`` differs from the working tree (a code or param change
   committed without re-running the pipeline is named, with the fix).
2. ``clone``: in a fresh clone of HEAD, ``dvc repro`` and then ``dvc repro --force`` leave ``git status`` empty:
   the commit reproduces itself byte for byte. The clone shares this project's DVC cache (for DVC-tracked data),
   tracks to its own local MLflow store (never a remote) and is deleted afterwards.

Exit status 1 with one line per problem; CI runs both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from segmentation.errors import UserError, stage_entrypoint
from segmentation.pipeline import load_yaml

TIMEOUT_S = 1800  # one pipeline run; bounded so a hung stage cannot hold CI


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def stale_lock(root: Path) -> list[str]:
    """Dependencies and params whose recorded hash or value in ``dvc.lock`` differs from the working tree.

    Deleted or missing inputs (outputs of earlier stages on a fresh clone) are not staleness: only "modified".
    """
    status = _run(_dvc("status", "--json"), root)
    if status.returncode != 0:
        raise UserError(f"dvc status failed: {status.stderr.strip().splitlines()[-1:]}")
    problems = []
    for stage, items in json.loads(status.stdout or "{}").items():
        for item in items if isinstance(items, list) else []:
            for path, state in ((item or {}).get("changed deps") or {}).items() if isinstance(item, dict) else []:
                if state == "modified":
                    problems.append(f"{stage}: {path} changed since dvc.lock")
                elif isinstance(state, dict):
                    changed = ", ".join(_param_changes(root, stage, path)) or ", ".join(state)
                    problems.append(f"{stage}: {path} params changed since dvc.lock ({changed})")
    return problems


def _param_changes(root: Path, stage: str, params_file: str) -> list[str]:
    """The params of ``stage`` whose value in ``params_file`` differs from ``dvc.lock``, e.g. ``train.k_max 8 -> 9``."""
    import yaml

    from segmentation.config import flatten

    try:
        recorded = load_yaml((root / "dvc.lock").read_text(encoding="utf-8"))["stages"][stage]["params"]
        current = load_yaml((root / params_file).read_text(encoding="utf-8"))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []
    old = flatten(recorded.get(params_file) or {})
    new = {}
    for key in recorded.get(params_file) or {}:
        value = current
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        new.update(flatten({key: value}))
    keys = sorted(old.keys() | new.keys())
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _clone_env(clone: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_TRACKING_URI=f"sqlite:///{clone / 'mlflow.db'}",  # the check's runs stay in the clone
        DVC_SITE_CACHE_DIR=str(clone.parent / "dvc-site-cache"),
    )
    return env


def fresh_clone_differences(root: Path) -> list[str]:
    """Run the pipeline in a fresh clone of HEAD (``dvc repro``, then ``dvc repro --force``); list what git sees
    changed after each. Empty: the commit reproduces itself."""
    with tempfile.TemporaryDirectory(prefix="segmentation-check-") as tmp:
        clone = Path(tmp) / "clone"
        cloned = _run(["git", "clone", "-q", "--no-hardlinks", str(root), str(clone)], root)
        if cloned.returncode != 0:
            raise UserError(f"git clone of {root} failed: {cloned.stderr.strip()}")
        env = _clone_env(clone)
        cache = (root / ".dvc" / "cache").resolve()
        _run(_dvc("cache", "dir", "--local", str(cache)), clone, env)
        # Data tracked by .dvc files (the raw data): from the shared cache, else the default remote.
        for dvc_file in _run(["git", "ls-files", "*.dvc"], clone).stdout.split():
            if _run(_dvc("checkout", "--quiet", dvc_file), clone, env).returncode != 0:
                pulled = _run(_dvc("pull", "--quiet", dvc_file), clone, env)
                if pulled.returncode != 0:
                    raise UserError(f"{dvc_file}: data neither in the DVC cache nor on the remote; run dvc push")
        problems = []
        for args in (("repro",), ("repro", "--force")):
            repro = _run(_dvc(*args), clone, env)
            if repro.returncode != 0:
                tail = (repro.stderr.strip().splitlines() or ["(no output)"])[-1]
                return [f"dvc {' '.join(args)} failed in a fresh clone: {tail}"]
            changed = _run(["git", "status", "--porcelain"], clone, env).stdout.splitlines()
            problems += [f"after dvc {' '.join(args)}: {line.strip()}" for line in changed]
        return problems


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m segmentation.tools.checks [lock|clone|all]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", nargs="?", choices=["lock", "clone", "all"], default="all")
    args = parser.parse_args(argv)
    root = Path.cwd()
    checks = [
        ("lock", stale_lock, "run `dvc repro` and commit dvc.lock with the results",
         "dvc.lock matches the code, params and data"),
        ("clone", fresh_clone_differences, "commit every result of `dvc repro` (dvc.lock, metrics/, reports/)",
         "in a fresh clone, dvc repro and dvc repro --force leave git status empty"),
    ]  # fmt: skip
    for name, check, fix, passed in checks:
        if args.check not in (name, "all"):
            continue
        problems = check(root)
        if problems:  # a stale lock makes the clone check moot: stop at the first that fails
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            print(f"fix: {fix}", file=sys.stderr)
            raise SystemExit(1)
        print(f"check: {passed}")


if __name__ == "__main__":
    main()

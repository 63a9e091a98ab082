"""`make check-lock`: dvc.lock against the working tree. Each dependency or params section that `dvc status` finds
modified since dvc.lock is an error; outputs missing (as on a fresh clone) are not stale."""

import json
import subprocess
import sys


def stale(status: dict) -> list[str]:
    """``stage: path`` (``stage: params file: section``) of each dependency ``dvc status --json`` reports modified."""
    found = []
    for stage, changes in status.items():
        for change in changes:  # a dict per kind ("changed deps", "changed outs"), or a line ("changed command")
            for path, state in (change.get("changed deps", {}) if isinstance(change, dict) else {}).items():
                sections = state.items() if isinstance(state, dict) else [(None, state)]  # a params file's sections
                found += [f"{stage}: {path}" + (f": {s}" if s else "") for s, what in sections if what == "modified"]
    return found


def main() -> int:
    proc = subprocess.run(["dvc", "status", "--json"], stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        return proc.returncode
    if found := stale(json.loads(proc.stdout or "{}")):
        for line in found:
            print(f"error: {line} changed since dvc.lock", file=sys.stderr)
        print("fix: run `dvc repro` and commit dvc.lock with the results", file=sys.stderr)
        return 1
    print("check: dvc.lock matches the code, params and data")
    return 0


if __name__ == "__main__":
    sys.exit(main())

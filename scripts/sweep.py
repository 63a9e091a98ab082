"""`make sweep`: DVC expands each comma list in ARGS (-S train.k_max=8,10,12; also range(...), choice(...)) to one
queued experiment per combination; its queue workers run them JOBS at a time, each in a temporary copy (workspace
untouched; the local MLflow store takes one writer at a time). The sweep waits for its own tasks (those new in the
queue), at most SWEEP_WAIT_S seconds. Interrupted, the queue goes on: `dvc queue status` shows it, `dvc queue stop
--kill` ends it. ARGS are split as a shell would, never run: `$(...)` in them is data."""

import os
import re
import shlex
import subprocess
import sys
import time

POLL_S = 5


def queue() -> dict[str, dict]:
    """The tasks of DVC's experiment queue, as ``dvc queue status`` lists them (rev, name, status), by rev."""
    from dvc.repo import Repo

    with Repo() as repo:
        return {task["rev"]: task for task in repo.experiments.celery_queue.status()}


def table(tasks: list[dict]) -> str:
    return "\n".join(f"{task['rev'][:7]}  {task['name']}  {task['status']}" for task in tasks)


def main() -> int:
    jobs, wait_s = os.environ.get("SEGMENTATION_SWEEP_JOBS", ""), os.environ.get("SEGMENTATION_SWEEP_WAIT_S", "")
    if not (re.fullmatch(r"[1-9][0-9]*", jobs) and re.fullmatch(r"[0-9]+", wait_s)):
        print("error: JOBS and SWEEP_WAIT_S must be numbers", file=sys.stderr)
        return 2
    deadline = time.monotonic() + int(wait_s)
    try:
        args = shlex.split(os.environ.get("SEGMENTATION_EXP_ARGS", ""))
    except ValueError as exc:
        print(f"error: ARGS: {exc}", file=sys.stderr)
        return 2
    before = queue()
    if code := subprocess.run(["dvc", "exp", "run", "--queue", *args]).returncode:
        return code
    mine = set(queue()) - set(before)
    if not mine:
        print("error: no experiment queued", file=sys.stderr)
        return 1
    if code := subprocess.run(["dvc", "queue", "start", "-j", jobs]).returncode:
        return code
    try:
        while True:
            tasks = [task for rev, task in queue().items() if rev in mine]
            if not any(task["status"] in ("Queued", "Running") for task in tasks):
                break
            if time.monotonic() >= deadline:
                print(f"error: the sweep still runs after SWEEP_WAIT_S; its tasks:\n{table(tasks)}", file=sys.stderr)
                return 1
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print("interrupted: the queue goes on (dvc queue status); dvc queue stop --kill ends it", file=sys.stderr)
        return 130
    if failed := [t for t in tasks if t["status"] != "Success"]:
        print(f"error: experiments that failed (dvc queue logs NAME says why):\n{table(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

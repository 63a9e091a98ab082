"""The runner every stage's CLI shares: paths and params in, the work done, the run logged, the outputs written.

A stage is a module with a pure function and a ``work(args, params, raw_params) -> Outcome`` that reads its inputs,
calls it and says what to write; ``main = cli("mystage", __doc__, work, {"table": "input: ..."}, MyParams)``; plus
its entry in ``dvc.yaml`` and its section in ``params.yaml``. tests/test_extensions.py adds one.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from segmentation.config import PARAMS_FILE, declare_section, parse_section, read_params_file
from segmentation.errors import RESTORE, UserError, stage_entrypoint
from segmentation.files import StageOutputs
from segmentation.tracking.lineage import LOCK_FILE
from segmentation.tracking.logger import DualLogger

RESTORE_TIMEOUT_S = 600  # `dvc checkout` of the last good outputs (10M rows: a few GB from the cache)


def restore() -> list[str]:
    """Put back the outputs ``dvc.lock`` records that a failed stage left removed: cached ones by ``dvc checkout``,
    those kept in git from DVC's cache (the run-cache keeps a copy) or else from HEAD. Returns the files put back."""
    from dvc.repo import Repo

    lock = yaml.safe_load(Path(LOCK_FILE).read_text()) if Path(LOCK_FILE).is_file() else {}  # none: nothing ran yet
    outs = [out for entry in (lock or {}).get("stages", {}).values() for out in entry.get("outs", [])]
    missing = [out for out in outs if not Path(out["path"]).exists()]
    if not missing:
        return []
    try:
        subprocess.run([sys.executable, "-m", "dvc", "checkout", "--quiet"], check=False, timeout=RESTORE_TIMEOUT_S)
        with Repo() as repo, StageOutputs() as put_back:
            for out in (out for out in missing if not Path(out["path"]).exists()):
                cached = Path(repo.cache.local.oid_to_path(out["md5"]))
                git = ["git", "show", f"HEAD:{out['path']}"]
                data = (
                    cached.read_bytes()
                    if cached.is_file()
                    else subprocess.run(git, capture_output=True, timeout=60).stdout
                )
                if hashlib.md5(data).hexdigest() == out["md5"]:
                    put_back.path(out["path"]).write_bytes(data)
            put_back.commit()
    except subprocess.TimeoutExpired as exc:  # the command that hung, and what to run instead
        what = "dvc checkout" if "checkout" in exc.cmd else "git show"
        raise UserError(f"{what} did not finish within {exc.timeout:g} s; run `dvc checkout` yourself") from None
    return [out["path"] for out in missing if Path(out["path"]).exists()]


@dataclass(frozen=True)
class Outcome:
    """What a stage's work hands back to the runner."""

    write: Callable[[StageOutputs, DualLogger], None]  # outputs through ``out``, the record on ``log``
    summary: str  # one line, printed once the outputs are in place


def cli(
    stage: str,
    description: str | None,
    work: Callable[[argparse.Namespace, Any, dict[str, Any]], Outcome],
    files: Mapping[str, str],
    optional: Collection[str] = (),
    params_model: type[BaseModel] | None = None,
) -> Callable[[list[str] | None], None]:
    """The ``main(argv)`` of a stage: parse the file options, load its params section, run ``work``, commit.

    ``files`` maps each option (``matrix`` -> ``--matrix``) to its help, all required but ``optional`` ones.
    ``params_model`` (pydantic) validates the stage's section of ``params.yaml`` (none: passed as written).
    ``work(args, params, raw_params)`` gets the options, that section and the whole file; returns an :class:`Outcome`.
    """
    if params_model is not None:
        declare_section(stage, params_model)

    def main(argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--params", default=PARAMS_FILE, help="the params file (default %(default)s)")
        for name, help_text in files.items():
            parser.add_argument(f"--{name.replace('_', '-')}", required=name not in optional, help=help_text)
        parser.add_argument("--dagshub-dir", required=True, help="output: DAGsHubLogger metrics.csv + params.yml")
        args = parser.parse_args(argv)

        raw_params = read_params_file(args.params)
        params = parse_section(stage, raw_params.get(stage), args.params)
        log = DualLogger(stage, dagshub_dir=args.dagshub_dir)  # checks where runs go before the work
        outcome = work(args, params, raw_params)
        with StageOutputs() as out:  # the DagsHub files and the run logged, then every output put in place
            outcome.write(out, log)
            for name, text in files.items():  # the input tables become the run's MLflow datasets
                if text.startswith("input") and getattr(args, name):
                    log.log_input(getattr(args, name))
            log.finish(out)
        print(outcome.summary)

    main.__doc__ = f"CLI of the ``{stage}`` stage (paths come from dvc.yaml, knobs from params.yaml)."
    return stage_entrypoint(main, name=stage)


@stage_entrypoint
def restore_main() -> None:
    """``python -m segmentation.stages.runner --restore`` (make repro, after a failed stage)."""
    back = restore()
    print(f"restored the last good outputs (dvc.lock): {', '.join(back) or 'none were missing'}", file=sys.stderr)


if __name__ == "__main__":
    restore_main() if sys.argv[1:] == ["--restore"] else sys.exit(f"usage: {RESTORE}")

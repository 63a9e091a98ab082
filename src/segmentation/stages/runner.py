"""The runner every stage's CLI shares: paths and params in, the work done, the run logged, all outputs committed.

A stage is a module with a pure function and a ``work(args, params, raw_params) -> Outcome`` that reads its inputs,
calls it and says what to write; ``main = cli("mystage", __doc__, work, {"table": "input: ..."}, MyParams)``; plus
its entry in ``dvc.yaml`` and its section in ``params.yaml``. tests/test_extensions.py adds one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from segmentation.config import PARAMS_FILE, declare_section, parse_section, read_params_file
from segmentation.errors import UserError, raise_if_interrupted, stage_entrypoint
from segmentation.files import StageOutputs
from segmentation.tracking.lineage import dvc_process
from segmentation.tracking.logger import DualLogger

# The dvc process this stage runs under, looked up when the stage starts (its CLI imports this module first): once
# dvc is killed, the stage is re-parented and its ancestry no longer shows it.
STARTED_BY_DVC = dvc_process()


@contextmanager
def run(stage: str, dagshub_dir: str | Path) -> Iterator[tuple[StageOutputs, DualLogger]]:
    """Collect a stage's outputs and its record; if the block succeeds, add the DagsHub files, log the run (locally,
    then to a remote tracker), then commit all outputs at once. A failure (an error, Ctrl-C, dvc gone) before the
    commit replaces nothing and withdraws the logged run."""
    log = DualLogger(stage, dagshub_dir=dagshub_dir)
    dvc = STARTED_BY_DVC
    with StageOutputs() as outputs:
        yield outputs, log
        log.stage_dagshub_files(outputs)
        _require_dvc(stage, dvc)
        log.log_run(outputs)  # MLflow reads the artifacts from the staged files
        try:
            _require_dvc(stage, dvc)  # Ctrl-C while logging (Python may have swallowed it in a finalizer)
            log.deliver()  # best effort, bounded; before the commit, so that little can stop a stage after it
            _require_dvc(stage, dvc)
        except BaseException:
            log.withdraw_run()  # no run in the store for outputs that were never committed
            raise
        outputs.commit()


def _require_dvc(stage: str, dvc) -> None:
    """Stop before the commit if Ctrl-C came (even one Python swallowed) or if dvc (which sets DVC_STAGE for its
    commands) has gone: it could not record the new outputs in dvc.lock."""
    import psutil

    raise_if_interrupted()
    # A killed dvc not yet reaped is a zombie, not alive.
    try:
        alive = dvc is not None and dvc.is_running() and dvc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        alive = False
    if os.environ.get("DVC_STAGE") and not alive:
        raise UserError(
            f"{stage}: dvc stopped before the stage finished (killed?); outputs left as they were, in step with "
            "dvc.lock: run dvc repro again"
        )


@dataclass(frozen=True)
class Outcome:
    """What a stage's work hands back to the runner."""

    write: Callable[[StageOutputs, DualLogger], None]  # inside run(): outputs through ``out``, the record on ``log``
    summary: str  # one line, printed once the outputs are committed


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
    ``work(args, params, raw_params)`` gets the options, that section and the whole file, and returns an
    :class:`Outcome`.
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
        outcome = work(args, params, raw_params)
        with run(stage, args.dagshub_dir) as (out, log):
            outcome.write(out, log)
        print(outcome.summary)

    main.__doc__ = f"CLI of the ``{stage}`` stage (paths come from dvc.yaml, knobs from params.yaml)."
    return stage_entrypoint(main, name=stage)

"""The runner every stage's CLI shares: paths and params in, the work done, the run logged, then all outputs
committed together.

A stage is a module with a pure function and a ``work`` that reads its inputs, calls it and says what to write::

    def work(args, params, raw_params) -> Outcome:
        result = my_pure_function(read_csv(args.table), params)

        def write(out, log):  # inside the run: outputs through ``out``, the record on ``log``
            out.write_csv(args.result, result.table)
            log.log_metrics(result.metrics)

        return Outcome(write, f"mystage: {len(result.table)} rows")

    main = cli("mystage", __doc__, work, {"table": "input: ...", "result": "output: ..."}, params_model=MyParams)

plus its entry in ``dvc.yaml`` (the command passes every path: ``--table ${paths.table} ...``) and its section
``mystage:`` in ``params.yaml`` (validated by ``MyParams``, a pydantic model; none: the section as written). No other
list names the stages: the tools that go over them read ``dvc.yaml``. tests/test_extensions.py adds one.
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
    """Collect a stage's outputs and its record; on success log the run, then commit the outputs together.

    Inside the block, write every output through ``outputs`` and record params, metrics and artifacts on ``log``.
    If the block fails (an error, Ctrl-C), nothing is replaced and nothing is logged. Then the DagsHub logger
    files join the other outputs, the run is logged to the local MLflow store (a store problem only warns) and
    delivered to a remote tracker if there is one, and last all outputs are moved into place at once.

    Under DVC, a stage whose ``dvc`` process has gone (killed) commits nothing: DVC could not record the new
    outputs in ``dvc.lock``, so they would be out of step with it.
    """
    log = DualLogger(stage, dagshub_dir=dagshub_dir)
    dvc = STARTED_BY_DVC
    with StageOutputs() as outputs:
        yield outputs, log
        log.stage_dagshub_files(outputs)
        # DVC sets DVC_STAGE for the commands it runs: under DVC, its process must still be there to record us.
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
    """Stop before the commit if Ctrl-C came (even one Python swallowed) or if dvc has gone.

    Under DVC (it sets DVC_STAGE for the commands it runs), its process must still be there to record the new
    outputs in dvc.lock; if it has gone (killed), committing them would put them out of step with it."""
    raise_if_interrupted()
    if os.environ.get("DVC_STAGE") and (dvc is None or not _alive(dvc)):
        raise UserError(
            f"{stage}: dvc stopped before the stage finished (killed?); outputs left as they were, in step with "
            "dvc.lock: run dvc repro again"
        )


def _alive(proc) -> bool:
    """True while ``proc`` (a psutil.Process) runs: a killed process not yet reaped is a zombie, not alive."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class Outcome:
    """What a stage's work hands back to the runner."""

    # Called inside :func:`run`: write every output through ``out`` (StageOutputs), record params, metrics and
    # artifacts on ``log`` (DualLogger). Nothing is replaced until it has returned and the run is logged.
    write: Callable[[StageOutputs, DualLogger], None]
    summary: str  # one line, printed once the outputs are committed


Work = Callable[[argparse.Namespace, Any, dict[str, Any]], Outcome]


def cli(
    stage: str,
    description: str | None,
    work: Work,
    files: Mapping[str, str],
    optional: Collection[str] = (),
    params_model: type[BaseModel] | None = None,
) -> Callable[[list[str] | None], None]:
    """The ``main(argv)`` of a stage: parse the file options, load its params section, run ``work``, commit.

    ``files`` maps each option (``matrix`` -> ``--matrix``) to its help; all are required but ``optional`` ones;
    ``--params`` and ``--dagshub-dir`` (the DAGsHubLogger folder) come with every stage. ``params_model`` (a pydantic
    model) validates the stage's own section ``params.yaml: <stage>`` and is recorded as that section's model
    (:func:`segmentation.config.declare_section`); without one the section is passed as written (a dict).
    ``work(args, params, raw_params)`` gets the parsed options, the stage's own section of the params file, and the
    whole file (for the few keys a stage reads from other sections); it does the work and returns an
    :class:`Outcome`. User errors anywhere are one ``error:`` line (exit 2), Ctrl-C one ``interrupted:`` line
    (exit 130).
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

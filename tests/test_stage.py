"""The stage runner (segmentation.stages.runner.cli): a stage is a work function; the runner parses the paths, loads the
params section, logs the run and writes each output whole."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline_helpers import stage_runs
from segmentation.errors import UserError
from segmentation.stages.runner import Outcome, cli

SECTION = "evaluate:\n  silhouette_sample_size: 100\n  random_state: 7\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(SECTION)
    (tmp_path / "pyproject.toml").write_text('[tool.segmentation]\nexperiment_name = "toy"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENTATION_PIPELINE_RUN_ID", "toy-run")
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return tmp_path


ARGS = ["--table", "in.csv", "--result", "out/result.txt", "--dagshub-dir", "out/dagshub"]


def toy_stage(work):
    return cli("evaluate", "a toy stage", work, {"table": "input: a table", "result": "output: a text"})


def test_a_stage_is_a_work_function_plus_the_runner(project, capsys):
    def work(args, params, raw_params):
        assert (args.table, params.random_state, raw_params["evaluate"]["random_state"]) == ("in.csv", 7, 7)

        def write(out, log):
            out.write_text(args.result, "hello\n")
            log.log_metrics({"rows": 3})

        return Outcome(write, "evaluate: 3 rows")

    toy_stage(work)(ARGS)
    assert (project / "out" / "result.txt").read_text() == "hello\n"
    assert (project / "out" / "dagshub" / "metrics.csv").is_file()
    assert capsys.readouterr().out.endswith("evaluate: 3 rows\n")
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = stage_runs(client, [client.get_experiment_by_name("toy").experiment_id])
    assert run.info.run_name == "evaluate" and run.data.metrics == {"rows": 3.0}


def test_a_user_error_in_the_work_or_the_writing_is_one_line_and_changes_nothing(project, capsys):
    (project / "out").mkdir()
    (project / "out" / "result.txt").write_text("before\n")

    def failing_write(args, params, raw_params):
        def write(out, log):
            out.write_text(args.result, "half done\n")
            raise UserError("in.csv: column x is blank")

        return Outcome(write, "never printed")

    with pytest.raises(SystemExit) as stopped:
        toy_stage(failing_write)(ARGS)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: in.csv: column x is blank\n" and captured.out == ""
    assert (project / "out" / "result.txt").read_text() == "before\n"
    assert sorted(p.name for p in (project / "out").iterdir()) == ["result.txt"]  # no temporary file left
    assert not (project / "mlflow.db").exists()


def test_bad_params_stop_before_the_work(project, capsys):
    (project / "params.yaml").write_text(SECTION.replace("random_state: 7", "random_state: -1"))
    with pytest.raises(SystemExit) as stopped:
        toy_stage(lambda *_: pytest.fail("the work ran"))(ARGS)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("error: params.yaml: evaluate.random_state: Input should be greater")


def test_under_dvc_the_error_line_says_how_to_get_the_outputs_back(project, capsys, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "evaluate")  # dvc removed the stage's outputs before running it

    def failing(args, params, raw_params):
        raise UserError("in.csv: column x is blank")

    with pytest.raises(SystemExit):
        toy_stage(failing)(ARGS)
    assert capsys.readouterr().err == (
        "error: in.csv: column x is blank; dvc removed its outputs: the last good ones (dvc.lock) come back with "
        "python -m segmentation.stages.runner --restore (make repro does it)\n"
    )


def test_restoring_gives_up_on_a_hung_dvc_checkout_in_one_line(project, capsys, monkeypatch):
    """`make repro`'s restore waits for `dvc checkout` at most RESTORE_TIMEOUT_S, then says what to do."""
    import subprocess

    from segmentation.stages import runner

    (project / "dvc.lock").write_text("stages:\n  evaluate:\n    outs:\n    - path: gone.csv\n      md5: 0\n")
    waited = []

    def hung(cmd, **kwargs):
        waited.append(kwargs.get("timeout"))
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(runner.subprocess, "run", hung)
    with pytest.raises(SystemExit) as stopped:
        runner.restore_main()
    assert stopped.value.code == 2 and waited == [runner.RESTORE_TIMEOUT_S]
    err = capsys.readouterr().err
    assert (
        err == f"error: dvc checkout did not finish within {runner.RESTORE_TIMEOUT_S} s; run `dvc checkout` yourself\n"
    )

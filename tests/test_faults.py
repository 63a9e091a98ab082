"""Failures halfway, through the real stages and `dvc repro`: no output is ever half-written, the last good results
(dvc.lock) can always be put back, and a broken tracking store never costs the results.

Real faults only: an immutable folder or file (`chattr +i`, which stops root too), a full disk (a small tmpfs the
test mounts and removes), SIGKILL of the stage and of dvc at several moments, Ctrl-C, and a corrupt, read-only,
deleted or unknown MLflow store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline_helpers import copy_project, outputs, paths, project_env, run, stage_runs, stages, use_fixture_data

pytestmark = pytest.mark.pipeline

P = paths()  # every path as dvc.yaml declares it
RESULT_DIRS = sorted({Path(out).parts[0] for out in outputs()})  # data, metrics, models, reports
EXPERIMENT = "customer-segmentation"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project on the tests' own params and data, after one `dvc repro`, results committed."""
    root = copy_project(tmp_path_factory.mktemp("faults") / "project")
    env = project_env(root.parent)
    use_fixture_data(root, env)
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "results"], root, env)
    return root, env


def snapshot(root: Path) -> dict[str, bytes]:
    """Every result file (and dvc.lock), by content; not the hidden temporary files a killed stage leaves (ignored
    by git)."""
    files = {p for d in RESULT_DIRS for p in (root / d).rglob("*") if p.is_file() and not leftover(p)}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(files | {root / "dvc.lock"})}


def leftover(path: Path) -> bool:
    return any(part.startswith(".") and part.endswith(".tmp") for part in path.parts)


def restore(root: Path, env) -> subprocess.CompletedProcess:
    """What `make repro` runs after a failed `dvc repro`: the last good outputs put back."""
    return run([sys.executable, "-m", "segmentation.stages.runner", "--restore"], root, env)


def run_stage(root: Path, env, stage: str) -> subprocess.CompletedProcess:
    """The stage's command from dvc.yaml, run without DVC (which would remove its outputs first)."""
    cmd = stages(root)[stage].cmd.split()
    return subprocess.run([sys.executable, *cmd[1:]], cwd=root, env=env, capture_output=True, text=True, timeout=600)


def assert_intact(root: Path, env, before: dict[str, bytes]) -> None:
    """Every earlier result byte-identical, in step with dvc.lock, no temporary file left behind."""
    after = snapshot(root)
    assert sorted(after) == sorted(before), set(after) ^ set(before)
    changed = [p for p in before if after[p] != before[p]]
    assert changed == [], changed
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@contextmanager
def immutable(*paths: Path):
    run(["chattr", "+i", *map(str, paths)], paths[0].parent, os.environ.copy())
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=False)


def test_an_unwritable_folder_after_the_first_outputs_changes_nothing(project):
    """evaluate stages segments, profile and metrics first; the figure folder then refuses: nothing is replaced."""
    root, env = project
    before = snapshot(root)
    with immutable(root / P["evaluate_plots"]):
        failed = run_stage(root, env, "evaluate")
    assert failed.returncode == 2
    (line,) = error_lines(failed)
    assert line.startswith(f"error: {P['evaluate_plots']}/clusters_2d.png: cannot write (Operation not permitted)")
    assert "Traceback" not in failed.stderr
    assert_intact(root, env, before)
    segments = root / P["segments"]
    assert not list(segments.parent.glob(f".{segments.name}.*.tmp"))


def test_an_immutable_output_file_changes_nothing(project):
    root, env = project
    before = snapshot(root)
    with immutable(root / P["evaluate_metrics"]):
        failed = run_stage(root, env, "evaluate")
    assert failed.returncode == 2
    (line,) = error_lines(failed)
    assert line == f"error: {P['evaluate_metrics']}: cannot replace (Operation not permitted)"
    assert_intact(root, env, before)  # the outputs moved before it are whole, and the same on the same inputs


def test_a_stage_failing_under_dvc_says_how_to_get_its_outputs_back(project):
    """DVC removes a stage's outputs before running it (no `persist`: the run-cache needs that); they come back."""
    root, env = project
    before = snapshot(root)
    good = set_param(root, "random_state", -1, section="evaluate")
    try:
        failed = run(["dvc", "repro", "--single-item", "evaluate"], root, env, check=False)
    finally:
        (root / "params.yaml").write_text(good)
    assert failed.returncode != 0
    (line,) = error_lines(failed)
    assert line.endswith("dvc removed its outputs: the last good ones (dvc.lock) come back with "
                         "python -m segmentation.stages.runner --restore (make repro does it)")  # fmt: skip
    assert not (root / P["segments"]).exists()
    assert "restored the last good outputs (dvc.lock): " in restore(root, env).stderr
    assert_intact(root, env, before)


def test_a_full_disk_changes_nothing(project, tmp_path):
    root, env = project
    before = snapshot(root)
    folder = root / P["evaluate_plots"]
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        for name, data in saved.items():  # the same figures, on a disk with no room for new ones
            (folder / name).write_bytes(data)
        try:
            with open(folder / "filler", "wb", buffering=0) as fh:
                while True:
                    fh.write(b"\0" * 4096)
        except OSError:  # the disk is full
            pass
        failed = run_stage(root, env, "evaluate")
        assert failed.returncode == 2
        (line,) = error_lines(failed)
        assert line.endswith("cannot write (No space left on device)")
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "filler"} == saved
    finally:
        subprocess.run(["umount", str(folder)], check=False)
    assert_intact(root, env, before)


def stage_process(dvc: subprocess.Popen, module: str, timeout: float = 120) -> psutil.Process | None:
    """The stage process (python -m segmentation.<module>) that dvc started, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and dvc.poll() is None:
        for child in psutil.Process(dvc.pid).children(recursive=True):
            try:
                if f"segmentation.stages.{module}" in child.cmdline():
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    return None


def set_param(root: Path, key: str, value, section: str = "train") -> str:
    """Set <section>.<key> in params.yaml; returns the previous file text."""
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return text


def whole(path: Path) -> bool:
    """``path`` reads as a complete file of its kind."""
    data = path.read_bytes()
    if path.suffix == ".png":
        return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".joblib":
        import joblib

        return joblib.load(path) is not None
    if path.suffix == ".json":
        return isinstance(json.loads(data), dict)
    if path.suffix == ".yml":
        return isinstance(yaml.safe_load(data), dict)
    return data.endswith(b"\n") and len(data.splitlines()) > 1  # the CSV files: a header and rows


@pytest.mark.parametrize("victim", ["stage", "dvc"])
@pytest.mark.parametrize("delay_s", [0.0, 1.5, 3.0])
def test_kill_9_at_several_moments_leaves_no_half_written_file_and_results_come_back(project, victim, delay_s):
    """SIGKILL while train runs with a changed param: every output is missing (DVC removed it) or whole; the last
    good results come back, and the next repro recovers."""
    root, env = project
    before = snapshot(root)
    # A search of ~5 s, so that every kill moment lands while train runs (with the usual n_init, the stage is over
    # in about 3 s on these 400 rows); --force: not from the run-cache (an earlier case ran these params).
    good = set_param(root, "n_init", 1000)
    try:
        dvc = subprocess.Popen(
            ["dvc", "repro", "--force", "--single-item", "train"], cwd=root, env=env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stage = stage_process(dvc, "train")
        assert stage is not None, "the train stage never started"
        time.sleep(delay_s)
        (stage if victim == "stage" else psutil.Process(dvc.pid)).kill()
        if victim == "dvc":
            stage.wait(120)  # the orphaned stage goes on to the end
        dvc.communicate(timeout=120)
        present = [root / p for p in stages(root)["train"].outs if (root / p).exists()]
        assert [p for p in present if not whole(p)] == []
        restore(root, env)
        assert [p for p in outputs() if not (root / p).exists()] == []
        recovered = run(["dvc", "repro"], root, env)
        assert "Running stage 'train'" in recovered.stdout or "Stage 'train' is cached" in recovered.stdout
        assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}
    finally:
        (root / "params.yaml").write_text(good)
        run(["dvc", "repro"], root, env)
    # Back on the committed params: the committed results, the DagsHub files included (from the run-cache).
    assert run(["git", "status", "--porcelain"], root, env).stdout == ""  # temporary files left by a kill: ignored
    run(["git", "reset", "-q", "--hard"], root, env)  # dvc autostages dvc.lock: back to HEAD, index too
    run(["dvc", "checkout"], root, env)
    assert snapshot(root) == before


def test_ctrl_c_prints_one_line_and_changes_nothing(project):
    root, env = project
    before = snapshot(root)
    cmd = stages(root)["train"].cmd.split()
    good = set_param(root, "n_init", 1000)  # a search of ~5 s: the stage is still at work when Ctrl-C comes
    try:
        stage = subprocess.Popen(
            [sys.executable, *cmd[1:]], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines, reader, searching = follow(stage.stderr, "train: k=")
        searching.wait(120)  # in the elbow search (Ctrl-C while loading: test_ctrl_c_on_dvc_repro_gives_no_traceback)
        stage.send_signal(signal.SIGINT)
        stage.wait(timeout=120)
        reader.join(timeout=30)
        stderr = "".join(lines)
    finally:
        (root / "params.yaml").write_text(good)
    assert stage.returncode == 130, stderr
    # The search's progress lines (one per k fitted) may come first; then the one line, nothing else.
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("train: k=")]
    assert lines == ["interrupted: train stopped; no output is half-written"], stderr
    assert_intact(root, env, before)


def mlflow_runs(root: Path, stage: str | None = None):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = stage_runs(client, [experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return client, [r for r in runs if stage is None or r.info.run_name == stage]


def test_a_deleted_experiment_is_restored(project):
    root, env = project
    client, runs = mlflow_runs(root)
    client.delete_experiment(runs[0].info.experiment_id)  # one click in the MLflow UI
    proc = run(["dvc", "repro", "--force", "--single-item", "evaluate"], root, env)
    assert f"note: MLflow experiment '{EXPERIMENT}' had been deleted; restored it, with its runs" in proc.stderr
    client, after = mlflow_runs(root)
    assert client.get_experiment(runs[0].info.experiment_id).lifecycle_stage == "active"
    assert len(after) == len(runs) + 1


@pytest.mark.parametrize("fault", ["corrupt", "read-only", "artifacts read-only"])
def test_a_broken_store_warns_keeps_the_run_and_sync_records_it_later(project, fault):
    root, env = project
    store = root / "mlflow.db"
    good_store = store.read_bytes()
    client, runs_before = mlflow_runs(root, "evaluate")
    every_run = {r.info.run_id for r in client.search_runs([runs_before[0].info.experiment_id])}
    locked = store if fault == "read-only" else root / "mlruns"
    if fault == "corrupt":
        store.write_bytes(b"this is not a database " * 100)
    else:
        run(["chattr", "+i", str(locked)], root, env)
    try:
        proc = run(["dvc", "repro", "--force", "--single-item", "evaluate"], root, env)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=False)
    if fault == "artifacts read-only":  # the store took the run, its artifacts failed: no run left RUNNING there
        after = client.search_runs([runs_before[0].info.experiment_id])
        assert {r.info.run_id for r in after} == every_run, "a failed record left a run in the store"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:") and "k_best" not in line]
    assert len(warnings) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the run is kept in mlruns-pending/" in warnings[0] and "`make sync`" in warnings[0]
    # The stage's results are in place and recorded by DVC.
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}
    (kept,) = (root / "mlruns-pending").iterdir()
    record = json.loads((kept / "run.json").read_text())
    assert record["stage"] == "evaluate" and "silhouette" in record["metrics"]
    assert (kept / "artifacts" / "cluster_profile.csv").is_file()

    store.write_bytes(good_store)  # the user repairs the store (or moves it aside)
    pytest.importorskip("segmentation.tracking.remote")  # `make sync` (generated without it: the next stage records)
    synced = run([sys.executable, "-m", "segmentation.tracking.remote", "sync"], root, env)
    assert "recorded 1 run(s) kept in mlruns-pending/" in synced.stdout
    assert not (root / "mlruns-pending").exists()
    client, runs_after = mlflow_runs(root, "evaluate")
    assert len(runs_after) == len(runs_before) + 1
    new = runs_after[-1]
    assert new.data.metrics["silhouette"] == record["metrics"]["silhouette"]
    assert "cluster_profile.csv" in {a.path for a in client.list_artifacts(new.info.run_id)}


@pytest.mark.parametrize("where", ["env", "pyproject"])
def test_an_unusable_tracking_uri_is_one_line_before_the_work(project, where):
    root, env = project
    pyproject = (root / "pyproject.toml").read_text()
    if where == "env":
        env = {**env, "MLFLOW_TRACKING_URI": "nonsense://x"}
    else:
        (root / "pyproject.toml").write_text(
            pyproject.replace("[tool.segmentation]", '[tool.segmentation]\ntracking_uri = "nonsense://x"')
        )
    try:
        failed = run(["dvc", "repro", "--force", "--single-item", "evaluate"], root, env, check=False)
    finally:
        (root / "pyproject.toml").write_text(pyproject)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    (line,) = error_lines(failed)
    name = "MLFLOW_TRACKING_URI" if where == "env" else "[tool.segmentation] tracking_uri"
    assert line.startswith(f"error: {name}='nonsense://x': not a tracking URI MLflow can use; give http(s)://"), line
    restore(root, env)
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], root, env).stdout) == {}


def test_a_copied_project_keeps_its_artifacts_inside_itself(project, tmp_path):
    root, env = project
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)  # cp -a
    env = project_env(tmp_path)
    proc = run(["dvc", "repro", "--force", "--single-item", "evaluate"], copy, env)
    assert f"note: the project has moved: MLflow artifacts now go to {(copy / 'mlruns').as_uri()}" in proc.stderr
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (copy / "mlruns").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert all(r.info.artifact_uri.startswith((copy / "mlruns").as_uri()) for r in runs)
    newest = max(stage_runs(client, [experiment.experiment_id]), key=lambda r: r.info.start_time)
    assert (copy / "mlruns" / newest.info.run_id / "artifacts" / "profile.png").is_file()
    assert not (root / "mlruns" / newest.info.run_id).exists()


def test_queued_experiments_on_two_workers_are_all_recorded(project):
    root, env = project
    _, before = mlflow_runs(root)
    for k_max in (3, 4, 5, 6):
        run(["dvc", "exp", "run", "--queue", "-S", f"train.k_max={k_max}", "-n", f"q{k_max}"], root, env)
    run(["dvc", "queue", "start", "-j", "2"], root, env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], root, env).stdout
        if not any(state in status for state in ("Running", "Queued")):
            break
        time.sleep(2)
    logs = run(["dvc", "queue", "status"], root, env).stdout
    assert "Failed" not in logs, logs
    revs = {
        rev["name"]: rev["rev"]
        for entry in json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
        for group in entry.get("experiments") or []
        for rev in group.get("revs") or []
    }
    for k_max in (3, 4, 5, 6):
        name = f"q{k_max}"
        assert name in revs, revs
        # Each experiment's DagsHub logger files are its own: its params, whole rows of its metrics.
        params = yaml.safe_load(run(["git", "show", f"{revs[name]}:{P['dagshub']}/train/params.yml"], root, env).stdout)
        assert params["train.k_max"] == k_max
        dagshub_metrics = f"{revs[name]}:{P['dagshub']}/train/metrics.csv"
        rows = run(["git", "show", dagshub_metrics], root, env).stdout.splitlines()
        assert rows[0] == "Name,Value,Timestamp,Step" and all(len(r.split(",")) == 4 for r in rows[1:])
        log = run(["dvc", "queue", "logs", name], root, env, check=False)
        assert "database is locked" not in log.stdout + log.stderr and "warning: MLflow" not in log.stdout + log.stderr
    _, after = mlflow_runs(root)
    new = after[len(before) :]
    trains = sorted(r.data.params["train.k_max"] for r in new if r.info.run_name == "train")
    assert trains == ["3", "4", "5", "6"]
    assert all("silhouette" in r.data.metrics for r in new if r.info.run_name == "evaluate")
    assert not (root / "mlruns-pending").exists()


def follow(stream, marker: str) -> tuple[list[str], threading.Thread, threading.Event]:
    """Collect ``stream``'s lines in a thread: the list it fills, the thread, and an event set once a line holds
    ``marker`` (or the stream ends without one)."""
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in stream:
            lines.append(line)
            if marker in line:
                seen.set()
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader, seen


@pytest.mark.parametrize("moment", ["loading", "fitting"])
def test_ctrl_c_on_dvc_repro_gives_no_traceback(project, moment):
    """Ctrl-C in the terminal reaches dvc and the stage (one process group): while the libraries load, or in the
    k search. The search is made to last (n_init 400) and Ctrl-C waits for its first progress line: a fixed delay
    missed it once the stage got fast enough to end within the delay."""
    root, env = project
    before = snapshot(root)
    params_text = set_param(root, "n_init", 400) if moment == "fitting" else None
    try:
        dvc = subprocess.Popen(
            ["dvc", "repro", "--force", "--single-item", "train"], cwd=root, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines, reader, searching = follow(dvc.stderr, "train: k=")
        assert stage_process(dvc, "train") is not None
        if moment == "loading":
            time.sleep(0.3)
        else:
            searching.wait(120)
            assert any("train: k=" in line for line in lines) and dvc.poll() is None, "".join(lines)
        os.killpg(dvc.pid, signal.SIGINT)
        dvc.wait(timeout=120)
        reader.join(timeout=30)
        stderr = "".join(lines)
    finally:
        if params_text is not None:
            (root / "params.yaml").write_text(params_text)
    assert dvc.returncode != 0
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert [line for line in stderr.splitlines() if line.startswith("interrupted:")], stderr
    restore(root, env)  # DVC removed train's outputs before running it
    assert_intact(root, env, before)

"""The whole pipeline (`dvc repro`: preprocess, train, evaluate) with ``preprocess.engine: dask`` against the local
engine's, on real clusters on 127.0.0.1: the stages' own LocalCluster; a separately started `dask scheduler` and two
`dask worker` processes reached by ``DASK_SCHEDULER_ADDRESS`` (as a real cluster is); workers with a memory limit
below the data they hold; a worker killed while the preprocess stage runs. Every process a test starts is stopped
with bounded waits (tests/servers.py).

Marked ``dask``: `make test` leaves these to `make test-all`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_helpers import copy_project, outputs, paths, project_env, run, sample_lines, use_fixture_data
from segmentation.files import read_csv

# Without the dask extra (`make setup` installs none) the whole file is one skip line: make setup EXTRAS=dask.
pytest.importorskip("dask", reason="the dask extra is not installed: make setup EXTRAS=dask")

pytestmark = [pytest.mark.dask, pytest.mark.pipeline]

SMALL_BLOCKS = "8kB"  # the 428-row sample in about 14 partitions
# Below the sample's 400 kept rows: train searches k on a seeded sample of 200, then fits on all rows: on the local
# engine with scikit-learn, on Dask with dask-ml. Set for both engines.
SEARCH_SAMPLE = 200
REPRO_TIMEOUT_S = 600
KILL_POLL_TIMEOUT_S = 120  # bounded wait for the preprocess stage's first results before killing a worker
POLL_S = 0.05


def set_params(root: Path, engine: str, **dask) -> None:
    """``preprocess.engine`` (and ``preprocess.dask`` with engine dask) in the project's params.yaml."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["preprocess"]["engine"] = engine
    if engine == "dask":
        params["preprocess"]["dask"] = {"blocksize": SMALL_BLOCKS, "n_workers": 2, "memory_limit": "1GiB", **dask}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def local_project(tmp_path_factory) -> Path:
    """A project on the tests' sample after `dvc repro` on the local engine (search on a sample, final fit on all
    rows): the results every engine must give. Tests copy it."""
    tmp = tmp_path_factory.mktemp("local")
    root = copy_project(tmp / "project")
    env = project_env(tmp)
    use_fixture_data(root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["search_sample_size"] = SEARCH_SAMPLE
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], root, env, timeout=REPRO_TIMEOUT_S)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "local engine results"], root, env)
    return root


def copy_of(project: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of ``project`` (git, DVC cache and results) and an environment with no scheduler address."""
    root = tmp_path / "project"
    shutil.copytree(project, root, symlinks=True)
    env = project_env(tmp_path)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return root, env


def assert_same_results(root: Path, local: Path) -> None:
    """The Dask engine's results in ``root`` against the local engine's in ``local``: the same features (exactly)
    and matrix (to 1e-9) as Parquet folders, the same k_best, the final fit by dask-ml on all rows, labels that
    agree (ARI >= 0.99) for the same customers in the same order, the same cluster sizes."""
    from sklearn.metrics import adjusted_rand_score

    p = paths(root)
    for name in ("features", "matrix"):
        assert (root / p[name]).is_dir() and list((root / p[name]).glob("part.*.parquet")), name
    pd.testing.assert_frame_equal(read_csv(root / p["features"]), read_csv(local / p["features"]))
    matrix, local_matrix = read_csv(root / p["matrix"]), read_csv(local / p["matrix"])
    np.testing.assert_allclose(matrix.iloc[:, 1:], local_matrix.iloc[:, 1:], rtol=0, atol=1e-9)
    trained, local_trained = (json.loads((r / p["train_metrics"]).read_text()) for r in (root, local))
    assert trained["k_best"] == local_trained["k_best"]
    assert trained["search_rows"] == SEARCH_SAMPLE
    assert trained["inertia"] == pytest.approx(local_trained["inertia"], rel=1e-6)
    segments, local_segments = pd.read_csv(root / p["segments"]), pd.read_csv(local / p["segments"])
    assert segments.iloc[:, 0].equals(local_segments.iloc[:, 0])
    assert adjusted_rand_score(local_segments["cluster"], segments["cluster"]) >= 0.99
    evaluated, local_evaluated = (json.loads((r / p["evaluate_metrics"]).read_text()) for r in (root, local))
    sizes = {k: v for k, v in evaluated.items() if k.startswith("size_")}
    assert sizes == {k: v for k, v in local_evaluated.items() if k.startswith("size_")}


def dask_repro(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`dvc repro` on the Dask engine: every stage runs there (train's final fit with dask-ml)."""
    proc = run(["dvc", "repro"], root, env, timeout=REPRO_TIMEOUT_S)
    assert "partition(s) on Dask" in proc.stdout
    assert "from the sample's centres, on Dask" in proc.stderr
    return proc


def test_the_pipeline_on_a_local_cluster_gives_the_local_engine_s_segments(local_project, tmp_path):
    """`dvc repro` with `engine: dask` (each stage starts and stops a LocalCluster of 2 worker processes): the local
    engine's results; DVC caches the tables as folders, `dvc status` is clean; back to the local engine, the
    folders become files again and the results are the local engine's byte for byte."""
    root, env = copy_of(local_project, tmp_path)
    set_params(root, "dask")
    dask_repro(root, env)
    assert_same_results(root, local_project)
    status = run(["dvc", "status"], root, env)
    assert "up to date" in status.stdout, status.stdout
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = {o["path"]: o for o in lock["stages"]["preprocess"]["outs"]}
    assert outs[paths(root)["features"]]["md5"].endswith(".dir")  # DVC caches the folder

    set_params(root, "local")
    run(["dvc", "repro"], root, env, timeout=REPRO_TIMEOUT_S)
    p = paths(root)
    assert (root / p["features"]).is_file()
    for name in ("segments", "train_metrics", "evaluate_metrics", "profile", "model"):
        assert (root / p[name]).read_bytes() == (local_project / p[name]).read_bytes(), name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A `dask scheduler` and two `dask worker` processes (1 thread, 1 GiB each) on 127.0.0.1, for this module."""
    from servers import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


def test_the_pipeline_on_a_separately_started_cluster_gives_the_local_engine_s_segments(
    local_project, cluster, tmp_path
):
    """DASK_SCHEDULER_ADDRESS names the scheduler: every stage uses its two workers (which run in another folder:
    the tables are read and written at absolute paths) and gives the local engine's results."""
    from distributed import Client

    root, env = copy_of(local_project, tmp_path)
    env["DASK_SCHEDULER_ADDRESS"] = cluster.address
    set_params(root, "dask")
    with Client(cluster.address, timeout=30, set_as_default=False) as client:
        before = set(client.scheduler_info()["workers"])
        dask_repro(root, env)
        assert set(client.scheduler_info()["workers"]) == before  # the stages used these, started no others
    assert_same_results(root, local_project)


# -- workers with less memory than the data they hold -----------------------------------------------------------------
# Dask pauses a worker at 80% of its limit (even with all its data spilled: a paused worker whose memory is all
# unmanaged stays paused, the run stalls) and restarts it at 95%. A worker that ran the three stages held ~480 MiB
# with nothing in memory while it imported dask-ml (numba, LLVM) and shuffled with P2P; ~400 MiB without them.
LOW_MEMORY = "600MiB"
LOW_MEMORY_COPIES = 1200  # the sample's rows 1200 times (new IDs): ~510k rows, ~55 MB of CSV
LOW_MEMORY_BLOCKS = "2MiB"


def tiled_sample(path: Path, copies: int) -> None:
    """The sample's data lines ``copies`` times, each copy with its own IDs (ID + copy x 10^6): a CSV as large as
    wanted with the sample's values."""
    header, lines = sample_lines()
    rows = [line.split("\t", 1) for line in lines]
    with path.open("w", encoding="utf-8") as fh:
        fh.write(header)
        for copy in range(copies):
            offset = copy * 1_000_000
            fh.writelines(f"{int(key) + offset}\t{rest}" for key, rest in rows)


def worker_state(client) -> dict[str, tuple[str, int]]:
    """Each worker's address -> (its id, its process id): a worker restarted by its nanny has other ones."""
    pids = client.run(os.getpid)
    return {address: (info["id"], pids[address]) for address, info in client.scheduler_info()["workers"].items()}


def spilled_bytes(client) -> dict[str, float]:
    """Bytes each worker has written to its spill directory since it started."""

    def written(dask_worker) -> float:  # defined here: sent by value (the workers cannot import this module)
        metrics = dask_worker.data.cumulative_metrics.items()
        return sum(v for (label, unit), v in metrics if label == "disk-write" and unit == "bytes")

    return client.run(written)


def parts_prepared(client) -> int:
    """Partitions the preprocess stage's workers have read and checked, held in memory (tasks of
    ``segmentation.engines.dask.engine.prepare_block``)."""

    def count(dask_scheduler) -> int:  # defined here: sent by value
        return sum(1 for k, ts in dask_scheduler.tasks.items() if str(k).startswith("prepare_block") and
                   ts.state == "memory")  # fmt: skip

    return client.run_on_scheduler(count)


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory):
    """Two workers of LOW_MEMORY each on 127.0.0.1."""
    from servers import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("small-cluster"), memory_limit=LOW_MEMORY) as started:
        yield started


def test_data_larger_than_a_worker_s_memory_completes_without_killing_it(local_project, small_cluster, tmp_path):
    """~510k rows on two workers of 600 MiB: the partitions the stages hold (several copies of the table) exceed a
    worker's memory; Dask spills them to disk and every stage completes, the same workers (ids and processes) all
    along, no worker restarted or killed in the cluster's logs."""
    from distributed import Client

    root, env = copy_of(local_project, tmp_path)
    env["DASK_SCHEDULER_ADDRESS"] = small_cluster.address
    params = yaml.safe_load((root / "params.yaml").read_text())
    data = root / params["preprocess"]["data"]["path"]
    tiled_sample(data, LOW_MEMORY_COPIES)
    run(["dvc", "add", "--quiet", str(data.relative_to(root))], root, env)
    set_params(root, "dask", blocksize=LOW_MEMORY_BLOCKS)
    limit = 600 * 2**20
    with Client(small_cluster.address, timeout=30, set_as_default=False) as client:
        before = worker_state(client)
        assert all(info["memory_limit"] == limit for info in client.scheduler_info()["workers"].values())
        proc = dask_repro(root, env)
        assert worker_state(client) == before
        spilled = spilled_bytes(client)
    counts = [json.loads((r / paths(r)["preprocess_metrics"]).read_text()) for r in (root, local_project)]
    assert counts[0]["rows_out"] == LOW_MEMORY_COPIES * counts[1]["rows_out"], proc.stdout
    print(f"spilled to disk (MiB): { {w: round(b / 2**20) for w, b in spilled.items()} }")
    assert sum(spilled.values()) > limit, spilled  # more than a worker's limit went to disk
    logs = small_cluster.logs()
    for sign in ("exceeded 95% memory budget", "Restarting", "KilledWorker", "Worker process died"):
        assert sign not in logs, sign


# -- a worker killed mid-run ------------------------------------------------------------------------------------------
KILL_COPIES = 20  # ~8.5k rows, ~0.9 MB: 16kB blocks make ~57 partitions
KILL_BLOCKS = "16kB"
KILL_AFTER_PARTS = 20  # partitions the preprocess stage has read and checked (results in memory) before the kill


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under the outputs of the pipeline and of dvc.lock (the earlier outputs, as DVC
    recorded them)."""
    found = {}
    for out in [*outputs(root), "dvc.lock"]:
        target = root / out
        files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        for f in files:
            found[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def test_a_worker_killed_mid_run_is_retried_or_one_clear_line(local_project, tmp_path):
    """`dvc repro` on a separately started scheduler and two workers; once the preprocess stage has read and checked
    a third of its ~57 partitions, one `dask worker` (nanny and worker) is killed with SIGKILL. Either Dask reruns
    its work on the other worker and the run completes with the local engine's results, or the run fails with
    exactly one `error:` line, no traceback, and every earlier output and dvc.lock as they were, no temporary file
    left."""
    from distributed import Client

    from servers import dask_cluster

    root, env = copy_of(local_project, tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    data = root / params["preprocess"]["data"]["path"]
    tiled_sample(data, KILL_COPIES)
    run(["dvc", "add", "--quiet", str(data.relative_to(root))], root, env)
    run(["dvc", "repro"], root, env, timeout=REPRO_TIMEOUT_S)  # the earlier outputs: the local engine's, on this data
    local = tmp_path / "local"
    shutil.copytree(root, local, symlinks=True)
    earlier = tree_digest(root)
    set_params(root, "dask", blocksize=KILL_BLOCKS)

    (tmp_path / "cluster").mkdir()
    with (
        dask_cluster(tmp_path / "cluster") as started,
        Client(started.address, timeout=30, set_as_default=False) as client,
    ):
        env["DASK_SCHEDULER_ADDRESS"] = started.address
        repro = subprocess.Popen(["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + KILL_POLL_TIMEOUT_S
            while parts_prepared(client) < KILL_AFTER_PARTS:
                assert repro.poll() is None, "the stage ended before the kill"
                assert time.monotonic() < deadline, "the stage never got under way"
                time.sleep(POLL_S)
            victim = started.workers[0]
            os.killpg(victim.pid, signal.SIGKILL)  # the nanny and its worker: no restart
            victim.wait(timeout=30)
            stdout, stderr = repro.communicate(timeout=REPRO_TIMEOUT_S)
        finally:
            if repro.poll() is None:
                os.killpg(repro.pid, signal.SIGKILL)
                repro.wait(timeout=30)

    if repro.returncode == 0:  # Dask reran the lost work on the other worker
        assert "partition(s) on Dask" in stdout
        p = paths(root)
        pd.testing.assert_frame_equal(read_csv(root / p["features"]), read_csv(local / p["features"]))
        np.testing.assert_allclose(
            read_csv(root / p["matrix"]).iloc[:, 1:], read_csv(local / p["matrix"]).iloc[:, 1:], rtol=0, atol=1e-9
        )
        k_best = [json.loads((r / p["train_metrics"]).read_text())["k_best"] for r in (root, local)]
        assert k_best[0] == k_best[1]
        assert "up to date" in run(["dvc", "status"], root, env).stdout
    else:
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in stderr, stderr
        assert tree_digest(root) == earlier  # every earlier output, and dvc.lock, as they were
        leftovers = [p for p in root.rglob(".*.tmp")] + [p for p in root.rglob("*.bak")]
        assert not leftovers, leftovers
    print(f"worker killed: {'completed' if repro.returncode == 0 else 'one error line'}")

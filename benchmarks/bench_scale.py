"""Speed and scale: the seed's one-script method against this project's `dvc repro`, side by side (`make bench`).

    python benchmarks/bench_scale.py [--rows 10000,100000,1000000] [--large] [--runs 5] [--seeds 42,0,1,2,3]

For each size: synthetic marketing-campaign data (benchmarks/make_data.py: the example rows resampled with noise,
seeded, cached in .bench/), then --runs rounds, interleaved: the seed's script (benchmarks/seed_script.py), then a
first `dvc repro` in a fresh copy of this project whose params point at the data (set up as `make setup` does:
local MLflow store created). Round i seeds both with
seeds[i] (train.random_state / evaluate.random_state; the seed's KMeans random_state), so the rounds also show
whether k_best holds across seeds. Figures are the min over rounds: wall time (per stage for the project, from
dvc's output), peak RSS (the largest process: /usr/bin/time's maximum resident set of the command and the
children it waited for, or a 0.1 s sampling of every process working in the project's folder, whichever is larger:
Dask's worker processes are not children dvc waits for). The example itself (2,240 rows) is measured the
same way, plus a no-op `dvc repro`.
--large adds 3M and 10M rows (10M: the project only, one round, unless --seed-at-10m; so does --rows 10000000).

Engines: at each --dask-rows size (1M; --large adds 10M) `dvc repro` also runs once with each
``preprocess.engine`` (local, then dask: every stage on a LocalCluster it starts, one worker process per core),
same seed: wall time per stage, peak RSS of the largest process other than a worker (the stage) and of each Dask
worker process (sampled every 0.1 s), k_best. Only the engines: ``--rows 0 --no-example``.

Shared machines are noisy: the load is printed; read the ratios of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from make_data import EXAMPLE, make_data  # noqa: E402

from pipeline_helpers import copy_project, project_env, run  # noqa: E402

TIME = "/usr/bin/time"
WORKER_MARK = "spawn_main"  # a LocalCluster's worker processes are started by multiprocessing's spawn
DASK_ROWS = "1000000"
STAGES = ("preprocess", "train", "evaluate")
DATA_DIR = ROOT / ".bench"


def load() -> str:
    """The load averages (1, 5, 15 min)."""
    return " ".join(os.getloadavg()[i].__format__(".2f") for i in range(3))


class RssSampler:
    """The largest resident set of any process working in ``cwd``, sampled every 0.1 s: /usr/bin/time only sees
    the processes it waited for, not Dask's spawned workers."""

    def __init__(self, cwd: Path) -> None:
        import threading

        self.cwd, self.peak_kib, self._stop = str(cwd), 0, threading.Event()
        self.workers: dict[int, int] = {}  # Dask worker processes (spawned by a LocalCluster): pid -> peak KiB
        self.other_kib = 0  # the largest process that is not a Dask worker
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.1):
            for proc in psutil.process_iter(["cwd", "memory_info", "cmdline"]):
                if proc.info["cwd"] == self.cwd and proc.info["memory_info"] is not None:
                    kib = proc.info["memory_info"].rss // 1024
                    self.peak_kib = max(self.peak_kib, kib)
                    if any(WORKER_MARK in part for part in proc.info["cmdline"] or ()):
                        self.workers[proc.pid] = max(self.workers.get(proc.pid, 0), kib)
                    else:
                        self.other_kib = max(self.other_kib, kib)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def timed(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 3600, sampled: list | None = None
) -> tuple[float, int, str, str, list]:
    """Run ``cmd`` under /usr/bin/time; returns (wall s, peak RSS KiB, stdout, stderr, [(t, stdout line)]). Peak
    RSS is the larger of /usr/bin/time's and :class:`RssSampler`'s; ``sampled`` gets the sampler (per process)."""
    out = Path(tempfile.mktemp(prefix="time-", dir=cwd.parent))
    sampler = RssSampler(cwd)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [TIME, "-f", "%e %M", "-o", str(out), *cmd], cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    stderr = proc.stderr.read()
    proc.wait(timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{stderr[-3000:]}")
    rss = max(int(out.read_text().split()[-1]), sampler.stop())
    out.unlink()
    if sampled is not None:
        sampled.append(sampler)
    return wall, rss, "\n".join(line for _, line in lines), stderr, lines


def stage_times(lines: list[tuple[float, str]], wall: float) -> dict[str, float]:
    """Seconds per stage: from its "Running stage" line to the next stage's (or the end of the command)."""
    marks = [(t, m.group(1)) for t, line in lines if (m := re.match(r"Running stage '(\w+)'", line))]
    times = {}
    for i, (t, name) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else wall
        times[name] = end - t
    return times


def data_for(rows: int) -> Path:
    if rows == 0:
        return EXAMPLE
    path = DATA_DIR / f"marketing_{rows}.csv"
    if not path.is_file():
        start = time.perf_counter()
        make_data(rows, path, seed=0)
        print(f"  generated {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    return path


def project_copy(tmp: Path, data: Path, seed: int, engine: str = "local") -> tuple[Path, dict[str, str]]:
    """A fresh copy of the project (a git repo), params pointing at ``data`` (linked in), seeds set to ``seed``,
    ``preprocess.engine`` set to ``engine`` (dask: each stage starts a LocalCluster, its params' defaults)."""
    root = copy_project(tmp / "project")
    env = project_env(tmp)
    if data != EXAMPLE:
        for tracked in run(["git", "ls-files", "*.dvc"], root, env).stdout.split():
            run(["git", "rm", "-q", tracked], root, env)
        target = root / "data" / "bench" / data.name
        target.parent.mkdir(parents=True)
        try:
            os.link(data, target)
        except OSError:
            shutil.copyfile(data, target)
        path = f"data/bench/{data.name}"
    else:
        (root / "data" / "raw").mkdir(exist_ok=True)
        shutil.copyfile(EXAMPLE, root / "data" / "raw" / EXAMPLE.name)
        path = None
    params = yaml.safe_load((root / "params.yaml").read_text())
    if path:
        params["preprocess"]["data"]["path"] = path
    params["train"]["random_state"] = seed
    params["evaluate"]["random_state"] = seed
    params["preprocess"]["engine"] = engine
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # the bench's own LocalClusters, not a cluster of the environment
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "bench params"], root, env)
    # What `make setup` does in a new clone (the local MLflow store created), as a user has it before a first repro.
    run([sys.executable, "scripts/bootstrap.py", "--skip-pth", "--skip-data"], root, env)
    return root, env


def bench_size(rows: int, runs: int, seeds: list[int], with_seed: bool, noop: bool) -> dict:
    data = data_for(rows)
    label = f"{rows:,}" if rows else "example (2,240)"
    seed_res, proj_res = [], []
    for i in range(runs):
        seed = seeds[i % len(seeds)]
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            tmp = Path(tmp)
            root, env = project_copy(tmp, data, seed)
            if with_seed:
                wall, rss, out, _, _ = timed(
                    [sys.executable, str(ROOT / "benchmarks" / "seed_script.py"), str(data), "--random-state",
                     str(seed)], root, env,
                )  # fmt: skip
                k = int(re.search(r"k_best=(\d+)", out).group(1))
                seed_res.append({"wall": wall, "rss": rss, "k": k, "seed": seed})
            wall, rss, _, _, lines = timed(["dvc", "repro"], root, env)
            train = yaml.safe_load((root / "metrics" / "train.json").read_text())
            entry = {"wall": wall, "rss": rss, "k": train["k_best"], "seed": seed, "stages": stage_times(lines, wall),
                     "search_rows": train.get("search_rows")}  # fmt: skip
            if noop and i == runs - 1:
                entry["noop"] = min(timed(["dvc", "repro"], root, env)[0] for _ in range(3))
            proj_res.append(entry)
        s = f"seed {seed_res[-1]['wall']:6.1f} s k={seed_res[-1]['k']}  " if with_seed else ""
        print(f"  {label} round {i + 1}/{runs} (random_state {seed}): {s}project {wall:6.1f} s k={train['k_best']}"
              f"  load {load()}", flush=True)  # fmt: skip
    return {"rows": rows, "label": label, "seed": seed_res, "project": proj_res}


def dask_engine_missing() -> str | None:
    """Why the engines cannot be compared here (None: they can)."""
    if not (ROOT / "src" / "segmentation" / "engines" / "dask").is_dir():
        return "this project has no Dask engine (generated without it)"
    if importlib.util.find_spec("dask") is None:
        return "the dask extra is not installed: make setup EXTRAS=dask"
    return None


def bench_engines(rows: int, seed: int) -> list[dict]:
    """`dvc repro` once per engine (local, then dask) on ``rows`` rows, the same seed."""
    data = data_for(rows)
    found = []
    for engine in ("local", "dask"):
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            root, env = project_copy(Path(tmp), data, seed, engine)
            before, sampled = load(), []
            wall, _, _, _, lines = timed(["dvc", "repro"], root, env, sampled=sampled)
            train = yaml.safe_load((root / "metrics" / "train.json").read_text())
            workers = sampled[0].workers
            found.append({
                "rows": rows, "engine": engine, "wall": wall, "stages": stage_times(lines, wall), "k": train["k_best"],
                "driver_kib": sampled[0].other_kib, "worker_kib": max(workers.values(), default=0),
                "workers": len(workers), "load": f"{before} -> {load()}",
            })  # fmt: skip
        print(f"  {rows:,} rows, engine {engine}: {wall:6.1f} s k={train['k_best']}  load {load()}", flush=True)
    return found


def report_engines(results: list[dict]) -> None:
    print()
    print("| rows | engine | `dvc repro` | per stage (pre / train / eval) | peak RSS: largest non-worker process "
          "| peak RSS per Dask worker (processes) | k_best | load before -> after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for e in results:
        stages = " / ".join(f"{e['stages'].get(s, 0):.1f}" for s in STAGES)
        worker = f"{e['worker_kib'] / 2**20:.2f} GiB ({e['workers']})" if e["workers"] else "-"
        print(f"| {e['rows']:,} | {e['engine']} | {e['wall']:.1f} s | {stages} s | {e['driver_kib'] / 2**20:.2f} GiB "
              f"| {worker} | {e['k']} | {e['load']} |")  # fmt: skip


def report(results: list[dict]) -> None:
    print()
    print(
        "| rows | seed script | project `dvc repro` | ratio | per stage (pre / train / eval) "
        "| peak RSS seed / project | k_best seed (per random_state) | k_best project | search rows |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        proj = r["project"]
        p_wall = min(e["wall"] for e in proj)
        p_rss = max(e["rss"] for e in proj) / 2**20
        stages = " / ".join(f"{min(e['stages'].get(s, 0) for e in proj):.1f}" for s in STAGES)
        k_proj = ",".join(str(e["k"]) for e in proj)
        if r["seed"]:
            s_wall = min(e["wall"] for e in r["seed"])
            s_rss = max(e["rss"] for e in r["seed"]) / 2**20
            k_seed = ",".join(str(e["k"]) for e in r["seed"])
            seed_cols = f"{s_wall:.1f} s | {p_wall:.1f} s | {p_wall / s_wall:.2f}"
            rss = f"{s_rss:.2f} / {p_rss:.2f} GiB"
        else:
            seed_cols, rss, k_seed = f"- | {p_wall:.1f} s | -", f"- / {p_rss:.2f} GiB", "-"
        print(f"| {r['label']} | {seed_cols} | {stages} s | {rss} | {k_seed} | {k_proj} | {proj[0]['search_rows']} |")
    for r in results:
        noop = [e["noop"] for e in r["project"] if "noop" in e]
        if noop:
            print(f"\nno-op `dvc repro` ({r['label']}): {noop[0]:.2f} s (min of 3)")
    print(f"\nrandom_state per round: {', '.join(str(e['seed']) for e in results[0]['project'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000,1000000", help="comma-separated sizes (0: none)")
    parser.add_argument("--large", action="store_true", help="also 3M (3 rounds) and 10M rows (1 round)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seeds", default="42,0,1,2,3")
    parser.add_argument("--no-example", action="store_true", help="skip the example data")
    parser.add_argument("--seed-at-10m", action="store_true", help="also run the seed's script at 10M rows")
    parser.add_argument(
        "--dask-rows",
        help=f"sizes at which dvc repro also runs once per engine (default {DASK_ROWS}, and 10M with --large; 0: none)",
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"bench_scale: {os.cpu_count()} cores, load {load()} (1/5/15 min), {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"  uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    plan = [] if args.no_example else [(0, args.runs, True, True)]
    # From 10M rows the seed's script runs only with --seed-at-10m (minutes, and most of the machine's memory).
    sizes = [int(r) for r in args.rows.split(",") if int(r)]
    plan += [(rows, args.runs, rows < 10_000_000 or args.seed_at_10m, False) for rows in sizes]
    if args.large:
        plan += [(3_000_000, min(args.runs, 3), True, False), (10_000_000, 1, args.seed_at_10m, False)]
    results = [bench_size(rows, runs, seeds, with_seed, noop) for rows, runs, with_seed, noop in plan]
    if results:
        report(results)
    if args.dask_rows is None:
        dask_rows = [int(DASK_ROWS)] + ([10_000_000] if args.large else [])
    else:  # as given: "0" is none, also with --large
        dask_rows = [int(r) for r in args.dask_rows.split(",") if int(r)]
    missing = dask_engine_missing()
    if dask_rows and missing:
        print(f"\nengines: local vs dask skipped: {missing}")
        dask_rows = []
    engines = [e for rows in dask_rows for e in bench_engines(rows, seeds[0])]
    if engines:
        report_engines(engines)
    print(f"\nload at the end {load()}")


if __name__ == "__main__":
    main()

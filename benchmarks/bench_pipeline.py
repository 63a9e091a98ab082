"""Benchmarks: time the pipeline's pure functions on the example data and compare with baselines from the same run.

(`make bench` runs benchmarks/bench_scale.py: the whole pipeline against the seed's script at scale.)

Machines are shared and noisy: read the ratios, not the absolute seconds. Each figure is the median of --repeat runs.

    python benchmarks/bench_pipeline.py [--repeat 5] [--rows 0] [--pipeline]

--rows N resamples the example to N rows (with replacement) to see how the stages scale.
--pipeline also times a full `dvc repro` and a no-op `dvc repro` in a temporary copy of the project.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

# segmentation sets the no-telemetry variables on import.
from segmentation.config import load_section
from segmentation.core.data import load_csv
from segmentation.core.search import elbow_search
from segmentation.core.transform import preprocess

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_kmeans_loop(X: np.ndarray, params) -> None:
    """Baseline: the same KMeans fits as the elbow search, one after the other, without scoring or plotting."""
    for k in range(params.k_min, params.k_max + 1):
        KMeans(n_clusters=k, n_init=params.n_init, random_state=params.random_state).fit(X)


def pipeline_times() -> tuple[float, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    from pipeline_helpers import copy_project, project_env, run

    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "project")
        env = project_env(Path(tmp))
        run([sys.executable, "scripts/bootstrap.py", "--skip-pth"], root, env)
        start = time.perf_counter()
        run(["dvc", "repro"], root, env)
        full = time.perf_counter() - start
        start = time.perf_counter()
        run(["dvc", "repro"], root, env)
        return full, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--pipeline", action="store_true")
    args = parser.parse_args()

    pre = load_section("preprocess", ROOT / "params.yaml")
    pre = pre.model_copy(
        update={"data": pre.data.model_copy(update={"path": str(ROOT / "data/example/marketing_campaign.csv")})}
    )
    train = load_section("train", ROOT / "params.yaml")
    raw = load_csv(pre.data)
    if args.rows:
        raw = raw.sample(n=args.rows, replace=True, random_state=0).reset_index(drop=True)
        raw["ID"] = np.arange(len(raw))
    print(f"rows: {len(raw)}, k = {train.k_min}..{train.k_max}, n_init = {train.n_init}, repeat = {args.repeat}")

    t_pre = median_time(lambda: preprocess(raw, pre, "bench"), args.repeat)
    X = preprocess(raw, pre, "bench").matrix.drop(columns=["ID"]).to_numpy()
    with threadpool_limits(limits=train.n_threads):
        t_base = median_time(lambda: plain_kmeans_loop(X, train), args.repeat)
        t_elbow = median_time(lambda: elbow_search(X, train), args.repeat)
        t_one = median_time(lambda: plain_kmeans_loop(X, train.model_copy(update={"n_init": 1})), args.repeat)

    print(f"preprocess (pure function)           {t_pre:8.3f} s")
    print(f"baseline: plain KMeans loop over k   {t_base:8.3f} s   1.00x")
    print(f"elbow_search (scores, knee, plot)   {t_elbow:8.3f} s   {t_elbow / t_base:.2f}x baseline")
    print(f"same loop with n_init=1              {t_one:8.3f} s   {t_one / t_base:.2f}x baseline")
    if args.pipeline:
        full, noop = pipeline_times()
        print(f"dvc repro, first run (3 stages)      {full:8.3f} s")
        print(f"dvc repro, no-op                     {noop:8.3f} s   {noop / full:.2f}x first run")


if __name__ == "__main__":
    main()

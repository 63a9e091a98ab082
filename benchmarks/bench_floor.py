"""The example's fixed costs: what a first ``dvc repro`` on 2,240 rows is made of, beside the seed's script.

    python benchmarks/bench_floor.py [--runs 5]

On the example the work itself is small; the time goes to starting things. This measures each fixed part on its
own, interleaved, in fresh copies of the project (as ``bench_scale.py`` makes them), and prints the minimum over the
rounds with the load:

- the seed's script (``seed_script.py``: imports, read, fit, elbow) on the example;
- ``dvc repro`` of a pipeline of three stages that do nothing (``python -c pass``) with this project's deps and
  outs shape: DVC's own start, bookkeeping and lock updates;
- one process importing the libraries the stages use (pandas, pyarrow, scikit-learn, matplotlib, yellowbrick);
- one process importing MLflow, opening the local store (SQLite) and recording a run with a param and a metric;
- the project's first ``dvc repro`` (as ``make bench`` measures it).

The sum of DVC's part and the libraries' import is a floor for any pipeline of these tools that records its runs:
the stages cannot start before DVC starts them, and their libraries must be imported at least once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from bench_scale import load, project_copy  # noqa: E402
from make_data import EXAMPLE  # noqa: E402

from pipeline_helpers import run  # noqa: E402

LIBRARIES = (
    "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot, pandas, pyarrow.parquet, sklearn.cluster,"
    " sklearn.decomposition, sklearn.preprocessing, sklearn.metrics, yellowbrick.cluster"
)
MLFLOW_RUN = (
    "import sys, mlflow; mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_experiment('floor')\n"
    "with mlflow.start_run(): mlflow.log_param('p', 1); mlflow.log_metric('m', 1.0)"
)


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def empty_pipeline(root: Path, env: dict[str, str]) -> None:
    """Replace the copy's dvc.yaml by three stages of the same shape (deps, outs, params) that do nothing."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    empty = {}
    previous = "params.yaml"
    for name in stages:
        out = f"empty/{name}.txt"
        empty[name] = {
            "cmd": f"python -c \"open('{out}', 'w').write('{name}')\"",
            "deps": [previous],
            "outs": [out],
        }
        previous = out
    (root / "empty").mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": empty}, sort_keys=False))
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "empty pipeline"], root, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"bench_floor: {os.cpu_count()} cores, load {load()}, {time.strftime('%Y-%m-%d %H:%M')}")
    parts = ("seed script", "dvc repro, 3 empty stages", "libraries import", "MLflow: import, store, one run",
             "project dvc repro")  # fmt: skip
    times: dict[str, list[float]] = {part: [] for part in parts}
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
            tmp = Path(tmp)
            root, env = project_copy(tmp, EXAMPLE, 42)
            times["seed script"].append(timed([sys.executable, str(ROOT / "benchmarks" / "seed_script.py"),
                                               str(EXAMPLE)], root, env))  # fmt: skip
            times["libraries import"].append(timed([sys.executable, "-c", LIBRARIES], root, env))
            store = f"sqlite:///{tmp / 'floor.db'}"
            run([sys.executable, "-c", MLFLOW_RUN, store], root, env)  # the store's schema: not part of the figure
            times["MLflow: import, store, one run"].append(timed([sys.executable, "-c", MLFLOW_RUN, store], root, env))
            times["project dvc repro"].append(timed(["dvc", "repro"], root, env))
        with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
            root, env = project_copy(Path(tmp), EXAMPLE, 42)
            empty_pipeline(root, env)
            times["dvc repro, 3 empty stages"].append(timed(["dvc", "repro"], root, env))
        print(f"  round {i + 1}/{args.runs}: " + ", ".join(f"{p} {times[p][-1]:.2f} s" for p in parts)
              + f"  load {load()}", flush=True)  # fmt: skip
    best = {part: min(values) for part, values in times.items()}
    seed = best["seed script"]
    print("\n| part | s (min) | / seed script |\n|---|---|---|")
    for part in parts:
        print(f"| {part} | {best[part]:.2f} | {best[part] / seed:.2f} |")
    floor = best["dvc repro, 3 empty stages"] + best["libraries import"]
    print(f"| floor: DVC's part + the libraries' import | {floor:.2f} | {floor / seed:.2f} |")
    print(f"\nload at the end {load()}")


if __name__ == "__main__":
    main()

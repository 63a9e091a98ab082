"""Benchmarks of the remote side: what a dead or hanging tracker costs a stage, and DVC push/pull times.

Everything runs on 127.0.0.1 with the test suite's real servers (tests/servers.py). A baseline is measured in the
same run: the same stage tracking to the local store only. Figures are medians of --repeat runs.

    python benchmarks/bench_remote.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pipeline_helpers import copy_project, project_env, run  # noqa: E402
from servers import dvc_http_remote, free_port, hanging_server, moto_s3_server  # noqa: E402

EVALUATE = ["dvc", "repro", "--force", "--single-item", "evaluate"]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    run(cmd, cwd, env)
    return time.perf_counter() - start


def median(fn, repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = copy_project(tmp / "project")
        env = project_env(tmp)
        run([sys.executable, "scripts/bootstrap.py", "--skip-pth"], root, env)
        run(["dvc", "repro"], root, env)

        base = median(lambda: timed(EVALUATE, root, env), args.repeat)
        dead_env = project_env(tmp, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
        dead = median(lambda: timed(EVALUATE, root, dead_env), args.repeat)
        with hanging_server() as url:
            hang = median(lambda: timed(EVALUATE, root, project_env(tmp, MLFLOW_TRACKING_URI=url)), args.repeat)
        print(f"stage 'evaluate' (dvc repro --force --single-item), median of {args.repeat}:")
        print(f"  local store only (baseline)      {base:7.2f} s   1.00x")
        print(f"  dead tracker (refused port)       {dead:7.2f} s   {dead / base:.2f}x   +{dead - base:.2f} s")
        print(f"  hanging tracker (never answers)   {hang:7.2f} s   {hang / base:.2f}x   +{hang - base:.2f} s")

        size = sum(p.stat().st_size for p in (root / ".dvc" / "cache").rglob("*") if p.is_file())
        files = sum(1 for p in (root / ".dvc" / "cache" / "files").rglob("*") if p.is_file())
        print(f"DVC push/pull of the raw data and every cached output ({files} objects, {size / 1e6:.2f} MB):")
        with dvc_http_remote(tmp / "http-store", "user", "pw") as http_url, moto_s3_server(tmp / "moto") as s3_url:
            import boto3

            boto3.client(
                "s3", endpoint_url=s3_url, aws_access_key_id="k", aws_secret_access_key="k", region_name="us-east-1"
            ).create_bucket(Bucket="bench")
            remotes = {
                "local directory (baseline)": ["dvc", "remote", "add", "-f", "bench", str(tmp / "dir-store")],
                "HTTP, basic auth": ["dvc", "remote", "add", "-f", "bench", http_url],
                "S3 (moto)": ["dvc", "remote", "add", "-f", "bench", "s3://bench"],
            }
            results = {}
            for name, add in remotes.items():
                run(["dvc", "remote", "remove", "--local", "bench"], root, env, check=False)
                run(["dvc", "remote", "remove", "bench"], root, env, check=False)
                run(add, root, env)
                if name.startswith("HTTP"):
                    run(["dvc", "remote", "modify", "bench", "auth", "basic"], root, env)
                    run(["dvc", "remote", "modify", "--local", "bench", "user", "user"], root, env)
                    run(["dvc", "remote", "modify", "--local", "bench", "password", "pw"], root, env)
                if name.startswith("S3"):
                    run(["dvc", "remote", "modify", "bench", "endpointurl", s3_url], root, env)
                    run(["dvc", "remote", "modify", "--local", "bench", "access_key_id", "k"], root, env)
                    run(["dvc", "remote", "modify", "--local", "bench", "secret_access_key", "k"], root, env)
                push = timed(["dvc", "push", "-r", "bench"], root, env)
                cache = root / ".dvc" / "cache"
                backup = tmp / "cache-backup"
                shutil.copytree(cache, backup, dirs_exist_ok=True)
                shutil.rmtree(cache)
                pull = timed(["dvc", "pull", "-r", "bench", "--force"], root, env)
                shutil.rmtree(backup)
                results[name] = (push, pull)
            base_push, base_pull = results["local directory (baseline)"]
            for name, (push, pull) in results.items():
                ratios = f"push {push:6.2f} s ({push / base_push:.2f}x)   pull {pull:6.2f} s ({pull / base_pull:.2f}x)"
                print(f"  {name:28s} {ratios}")


if __name__ == "__main__":
    main()

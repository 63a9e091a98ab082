"""Experiments you can read, from ``dvc exp show --json``: ``make experiment``, ``make exps``, ``make compare``.

``run [dvc exp run options]`` runs ``dvc exp run --temp`` (the workspace stays as it was, no ``-S`` carries over),
then ``show``: the params that differ and the key metrics, in 80 columns. ``compare``: side by side, with sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from segmentation import pipeline
from segmentation.config import flatten
from segmentation.errors import UserError, stage_entrypoint

# (column header, metrics file by its name in dvc.yaml's paths, key): what says how good and how many the segments are.
KEY_METRICS = [
    ("k", "train_metrics", "k_best"),
    ("silhouette", "evaluate_metrics", "silhouette"),
    ("CH", "evaluate_metrics", "calinski_harabasz"),
    ("DB", "evaluate_metrics", "davies_bouldin"),
]
# Also side by side (make compare), when any row has them: how k was chosen, HDBSCAN's share of rows in no cluster.
COMPARE_METRICS = [("k rule", "train_metrics", "k_rule"), ("noise", "evaluate_metrics", "noise_share")]
SIZES_FILE, NOISE_SIZE = "evaluate_metrics", "size_noise"
WIDTH = 80


@dataclass
class Experiment:
    """One row of ``dvc exp show``: the baseline commit or one of its experiments."""

    name: str
    params: dict[str, Any]  # flat: {"train.k_max": 10}
    metrics: dict[str, dict[str, Any]]  # metrics file's name in paths -> its values

    def metric(self, name: str, key: str) -> Any:
        return self.metrics.get(name, {}).get(key)


def parse_show(entries: list[dict[str, Any]], paths: dict[str, str]) -> list[Experiment]:
    """The baselines and their experiments in ``dvc exp show --json`` (not the workspace); ``paths`` (``dvc.yaml``'s
    ``vars: paths``) names the metrics files."""
    names = {path: name for name, path in paths.items()}

    def experiment(entry: dict[str, Any], group: dict[str, Any]) -> Experiment:
        data = entry.get("data") or {}
        params = ((data.get("params") or {}).get(pipeline.PARAMS_FILE) or {}).get("data") or {}
        metrics = {names.get(p, p): (m or {}).get("data") or {} for p, m in (data.get("metrics") or {}).items()}
        name = entry.get("name") or group.get("name") or str(entry.get("rev", ""))[:7]
        return Experiment(name, flatten(params), metrics)

    rows = []
    for entry in entries:
        if entry.get("rev") != "workspace":
            rows.append(experiment(entry, {}))
            rows += [experiment(r, group) for group in entry.get("experiments") or [] for r in group.get("revs") or []]
    return rows


def changed_params(rows: list[Experiment]) -> list[str]:
    """The params whose value is not the same in every row (in the order params.yaml has them)."""
    keys = dict.fromkeys(k for row in rows for k in row.params)
    return [k for k in keys if len({json.dumps(r.params.get(k), default=str) for r in rows}) > 1]


def fmt(value: Any) -> str:
    """Short, readable numbers: 4 significant digits, thousands separators for large ones."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"  # nan and inf too
    return f"{value:,}"


def render(header: list[str], body: list[list[str]], width: int = WIDTH) -> str:
    """A plain-text table; the widest columns are cut to fit ``width`` (to no fewer than 8 characters)."""
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    while sum(widths) + 2 * (len(widths) - 1) > width and max(widths) > 8:
        widths[widths.index(max(widths))] -= 1
    lines = []
    for row in table:
        cells = [c if len(c) <= w else c[: max(w - 1, 1)] + "…" for c, w in zip(row, widths, strict=True)]
        lines.append(
            "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def table(rows: list[Experiment], width: int = WIDTH) -> str:
    """One line per experiment: name, the params that differ (``train.k_max`` as ``k_max`` when unambiguous), the
    key metrics."""
    changed = changed_params(rows)
    tails = [k.rsplit(".", 1)[-1] for k in changed]
    header = ["experiment", *(t if tails.count(t) == 1 else k for k, t in zip(changed, tails, strict=True))]
    body = [
        [r.name, *(fmt(r.params.get(k)) for k in changed), *(fmt(r.metric(p, key)) for _, p, key in KEY_METRICS)]
        for r in rows
    ]
    return render(header + [h for h, _, _ in KEY_METRICS], body, width)


def compare(rows: list[Experiment], width: int = WIDTH) -> str:
    """Side by side, one column per experiment: the params that differ, the key metrics, the k rule and noise share
    (when any has them), every cluster's size and the noise rows'."""
    sizes = sorted(
        {k for r in rows for k in r.metrics.get(SIZES_FILE, {}) if k.startswith("size_cluster_")},
        key=lambda k: int(k.rsplit("_", 1)[-1]),
    )
    sizes += [NOISE_SIZE] if any(r.metric(SIZES_FILE, NOISE_SIZE) is not None for r in rows) else []
    extra = [(h, p, key) for h, p, key in COMPARE_METRICS if any(r.metric(p, key) is not None for r in rows)]
    lines = [[k, *(fmt(r.params.get(k)) for r in rows)] for k in changed_params(rows)]
    lines += [[h, *(fmt(r.metric(p, key)) for r in rows)] for h, p, key in [*KEY_METRICS, *extra]]
    lines += [[f"size {k.rsplit('_', 1)[-1]}", *(fmt(r.metric(SIZES_FILE, k)) for r in rows)] for k in sizes]
    return render(["", *(r.name for r in rows)], lines, width)


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m segmentation.tools.experiments {run,show,compare}``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="dvc exp run --temp with the options that follow (e.g. -S train.k_max=12), then show")
    sub.add_parser("show", help="the changed params and key metrics of each experiment")
    sub.add_parser("compare", help="experiments side by side, with segment sizes").add_argument(
        "names", nargs="*", help="only these experiments (and the baseline)"
    )
    if argv[:1] == ["run"]:  # everything after `run` belongs to dvc exp run (-S ..., -n ...)
        done = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--temp", *argv[1:]])
        if done.returncode != 0:
            raise SystemExit(done.returncode)
        print()
        argv = ["show"]
    args = parser.parse_args(argv)
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True, timeout=300
    )
    if shown.returncode != 0:
        raise UserError(f"dvc exp show failed: {(shown.stderr.strip().splitlines() or ['no output'])[-1]}")
    rows = parse_show(json.loads(shown.stdout or "[]"), pipeline.paths())
    if not rows:
        raise UserError("no commit yet: commit the project, then run experiments (make experiment)")
    if args.command == "show":
        print(table(rows))
        return
    unknown = sorted(set(args.names) - {r.name for r in rows})
    if unknown:
        raise UserError(f"no experiment named {', '.join(unknown)}; see make exps")
    print(compare([rows[0], *(r for r in rows[1:] if not args.names or r.name in args.names)]))


if __name__ == "__main__":
    main()

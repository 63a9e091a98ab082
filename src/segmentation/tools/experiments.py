"""Experiments you can read: run one without touching the workspace, list them compactly, compare them.

``python -m segmentation.tools.experiments run [dvc exp run options]`` runs ``dvc exp run --temp`` (in a temporary copy:
``params.yaml`` and the results in the workspace stay as they were, and one experiment's ``-S`` overrides never
carry over into the next), then prints the table. ``show`` prints, for the baseline and each of its experiments,
the params that differ between them and the key metrics, in 80 columns; ``compare`` puts them side by side, one
column per experiment, with every cluster's size. Both read ``dvc exp show --json``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from segmentation import pipeline
from segmentation.config import flatten
from segmentation.errors import UserError, stage_entrypoint

PARAMS_FILE = "params.yaml"
# (column header, metrics file by its name in dvc.yaml's paths, key): what says how good and how many the segments are.
KEY_METRICS = [
    ("k", "train_metrics", "k_best"),
    ("silhouette", "evaluate_metrics", "silhouette"),
    ("CH", "evaluate_metrics", "calinski_harabasz"),
    ("DB", "evaluate_metrics", "davies_bouldin"),
]
SIZES_FILE = "evaluate_metrics"
# Also side by side (make compare): how k was chosen, and HDBSCAN's share of rows in no cluster (when any has one).
COMPARE_METRICS = [("k rule", "train_metrics", "k_rule"), ("noise", "evaluate_metrics", "noise_share")]
NOISE_SIZE = "size_noise"
WIDTH = 80


@dataclass
class Experiment:
    """One row of ``dvc exp show``: the baseline commit or one of its experiments."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)  # flat: {"train.k_max": 10}
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics file's name in paths -> its values

    def metric(self, name: str, key: str) -> Any:
        return self.metrics.get(name, {}).get(key)


def parse_show(entries: list[dict[str, Any]], paths: dict[str, str]) -> list[Experiment]:
    """The baseline(s) and their experiments from ``dvc exp show --json`` (the workspace row left out).

    ``paths`` (name -> path: ``dvc.yaml``'s ``vars: paths``) names the metrics files, as ``KEY_METRICS`` does."""
    names = {path: name for name, path in paths.items()}
    rows = []
    for entry in entries:
        if entry.get("rev") == "workspace":
            continue
        rows.append(_experiment(entry.get("name") or str(entry.get("rev", ""))[:7], entry.get("data") or {}, names))
        for group in entry.get("experiments") or []:
            for rev in group.get("revs") or []:
                name = rev.get("name") or group.get("name") or str(rev.get("rev", ""))[:7]
                rows.append(_experiment(name, rev.get("data") or {}, names))
    return rows


def _experiment(name: str, data: dict[str, Any], names: dict[str, str]) -> Experiment:
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
    metrics = {names.get(path, path): (m or {}).get("data") or {} for path, m in (data.get("metrics") or {}).items()}
    return Experiment(name, flatten(params), metrics)


def changed_params(rows: list[Experiment]) -> list[str]:
    """The params whose value is not the same in every row (in the order params.yaml has them)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.params))
    return [k for k in keys if len({json.dumps(r.params.get(k), default=str) for r in rows}) > 1]


def fmt(value: Any) -> str:
    """Short, readable numbers: 4 significant digits, thousands separators for large ones."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return f"{value:,}"


def short_names(keys: list[str]) -> dict[str, str]:
    """Param headers without their section when that stays unambiguous: ``train.k_max`` -> ``k_max``."""
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: t if tails.count(t) == 1 else k for k, t in zip(keys, tails, strict=True)}


def render(header: list[str], body: list[list[str]], width: int = WIDTH) -> str:
    """A plain-text table; columns are cut to fit ``width`` (the first one keeps at least 8 characters)."""
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    while sum(widths) + 2 * (len(widths) - 1) > width and max(widths) > 8:
        widths[widths.index(max(widths))] -= 1

    def cut(text: str, n: int) -> str:
        return text if len(text) <= n else text[: max(n - 1, 1)] + "…"

    lines = []
    for i, row in enumerate(table):
        cells = [
            cut(c, w).ljust(w) if j == 0 else cut(c, w).rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(rows: list[Experiment], width: int = WIDTH) -> str:
    """One line per experiment: name, the params that differ, the key metrics."""
    changed = changed_params(rows)
    names = short_names(changed)
    header = ["experiment", *(names[k] for k in changed), *(h for h, _, _ in KEY_METRICS)]
    body = [
        [r.name, *(fmt(r.params.get(k)) for k in changed), *(fmt(r.metric(p, key)) for _, p, key in KEY_METRICS)]
        for r in rows
    ]
    return render(header, body, width)


def compare(rows: list[Experiment], width: int = WIDTH) -> str:
    """Side by side, one column per experiment: the params that differ (``train.algorithm`` among them when it
    does), the key metrics, the k rule, the noise share (HDBSCAN), every cluster's size and the noise rows'."""
    changed = changed_params(rows)
    sizes = sorted(
        {k for r in rows for k in r.metrics.get(SIZES_FILE, {}) if k.startswith("size_cluster_")},
        key=lambda k: int(k.rsplit("_", 1)[-1]),
    )
    if any(r.metric(SIZES_FILE, NOISE_SIZE) is not None for r in rows):
        sizes.append(NOISE_SIZE)
    extra = [(h, p, key) for h, p, key in COMPARE_METRICS if any(r.metric(p, key) is not None for r in rows)]
    lines = [[k, *(fmt(r.params.get(k)) for r in rows)] for k in changed]
    lines += [[h, *(fmt(r.metric(p, key)) for r in rows)] for h, p, key in [*KEY_METRICS, *extra]]
    lines += [[f"size {k.rsplit('_', 1)[-1]}", *(fmt(r.metric(SIZES_FILE, k)) for r in rows)] for k in sizes]
    return render(["", *(r.name for r in rows)], lines, width)


def load(dvc: list[str] | None = None) -> list[Experiment]:
    """The experiments of the current baseline, from ``dvc exp show --json``."""
    cmd = [*(dvc or [sys.executable, "-m", "dvc"]), "exp", "show", "--json"]
    shown = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if shown.returncode != 0:
        tail = (shown.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"dvc exp show failed: {tail}")
    return parse_show(json.loads(shown.stdout or "[]"), pipeline.paths())


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m segmentation.tools.experiments {run,show,compare}``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run", help="dvc exp run --temp with the options that follow (e.g. -S train.k_max=12), then the table"
    )
    sub.add_parser("show", help="the changed params and key metrics of each experiment")
    cmp = sub.add_parser("compare", help="experiments side by side, with segment sizes")
    cmp.add_argument("names", nargs="*", help="only these experiments (and the baseline)")
    if argv[:1] == ["run"]:  # everything after `run` belongs to dvc exp run (-S ..., -n ...)
        done = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--temp", *argv[1:]])
        if done.returncode != 0:
            raise SystemExit(done.returncode)
        print()
        argv = ["show"]
    args = parser.parse_args(argv)

    rows = load()
    if not rows:
        raise UserError("no commit yet: commit the project, then run experiments (make experiment)")
    if args.command == "compare":
        if args.names:
            unknown = sorted(set(args.names) - {r.name for r in rows})
            if unknown:
                raise UserError(f"no experiment named {', '.join(unknown)}; see make exps")
            rows = [rows[0], *(r for r in rows[1:] if r.name in args.names)]
        print(compare(rows))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()

"""`make compare`'s line on how much the segment assignment changed: the adjusted Rand index (scikit-learn's
adjusted_rand_score) of HEAD's segments (paths.segments, data/segments.csv) and each named experiment's, on the
customers both hold, read from the DVC cache. 1: the same grouping, whatever the segments' numbers; about 0: no more
alike than chance."""

import sys

import dvc.api
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from segmentation import pipeline


def segments(path: str, rev: str) -> pd.Series:
    """The segment by ID (the file's first two columns) of ``path`` at ``rev`` (a commit or an experiment's name)."""
    with dvc.api.open(path, rev=rev) as fh:
        table = pd.read_csv(fh)
    return table.set_index(table.columns[0]).iloc[:, 0]


def agreement(ours: pd.Series, theirs: pd.Series) -> tuple[float, int]:
    """The adjusted Rand index of two assignments on the IDs they share, and how many those are."""
    shared = ours.index.intersection(theirs.index)
    return adjusted_rand_score(ours[shared], theirs[shared]) if len(shared) else float("nan"), len(shared)


def main(names: list[str]) -> int:
    path = pipeline.path("segments")
    try:
        head = segments(path, "HEAD")
    except Exception as exc:  # a first commit without results, a cache without them
        print(f"segments: no {path} of HEAD to compare with ({exc}); run dvc repro and commit", file=sys.stderr)
        return 1
    for name in names:
        try:
            ari, shared = agreement(head, segments(path, name))
        except Exception as exc:  # e.g. an experiment run elsewhere whose results are not in this cache
            print(f"segments: cannot read {path} of {name}: {exc}", file=sys.stderr)
            continue
        print(f"segments: adjusted Rand index {ari:.4f} between HEAD and {name} on the {shared} customer(s) both hold "
              "(1: the same grouping; about 0: as alike as chance)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

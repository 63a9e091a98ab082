"""Synthetic marketing-campaign data at any size: the example rows resampled with noise (seeded).

    python benchmarks/make_data.py ROWS OUT.csv [--seed 0]

Same schema, separator (tab), date format and kinds of value as ``data/example/marketing_campaign.csv``; rows are
drawn with replacement and jittered (amounts and income x N(1, 0.05), birth year +-2, counts +-1 now and then, the
enrollment date +-30 days), so the example's structure (and its blanks and outliers, at their rates) is kept.
Written in chunks: 10M rows (~1.2 GB) need well under 1 GB of memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data" / "example" / "marketing_campaign.csv"
AMOUNTS = ["Income", "MntWines", "MntFruits", "MntMeatProducts", "MntFishProducts", "MntSweetProducts", "MntGoldProds"]
COUNTS = [
    "Recency", "NumDealsPurchases", "NumWebPurchases", "NumCatalogPurchases", "NumStorePurchases",
    "NumWebVisitsMonth",
]  # fmt: skip
FIRST_DAY, LAST_DAY = pd.Timestamp("2012-07-30"), pd.Timestamp("2014-06-29")
CHUNK = 500_000


def noisy_chunk(example: pd.DataFrame, rows: int, first_id: int, rng: np.random.Generator) -> pd.DataFrame:
    """``rows`` example rows drawn with replacement, jittered, with IDs from ``first_id``."""
    df = example.iloc[rng.integers(0, len(example), rows)].reset_index(drop=True)
    df["ID"] = np.arange(first_id, first_id + rows)
    for col in AMOUNTS:
        values = df[col].to_numpy(dtype=float)
        df[col] = np.round(values * rng.normal(1.0, 0.05, rows)).clip(0)
    df["Income"] = df["Income"].astype("Int64")  # blanks stay blank
    for col in AMOUNTS[1:]:
        df[col] = df[col].astype("int64")
    for col in COUNTS:
        step = rng.choice([-1, 0, 0, 0, 1], rows)
        df[col] = (df[col].to_numpy() + step).clip(0)
    df["Year_Birth"] = df["Year_Birth"].to_numpy() + rng.integers(-2, 3, rows)
    days = pd.to_datetime(df["Dt_Customer"], format="%d-%m-%Y") + pd.to_timedelta(rng.integers(-30, 31, rows), "D")
    df["Dt_Customer"] = days.clip(FIRST_DAY, LAST_DAY).dt.strftime("%d-%m-%Y")
    return df


def make_data(rows: int, out: Path, seed: int = 0) -> Path:
    """Write ``rows`` synthetic rows to ``out`` (tab-separated, LF); returns ``out``."""
    example = pd.read_csv(EXAMPLE, sep="\t")
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        for start in range(0, rows, CHUNK):
            chunk = noisy_chunk(example, min(CHUNK, rows - start), start + 1, rng)
            chunk.to_csv(fh, sep="\t", index=False, header=start == 0, lineterminator="\n")
    tmp.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_data(args.rows, args.out, args.seed)
    print(f"{args.out}: {args.rows} rows", file=sys.stderr)


if __name__ == "__main__":
    main()

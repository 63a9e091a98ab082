"""The segment report: segment names, rounded profiles and one self-contained HTML page, as pure functions."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from segmentation import algorithms
from segmentation.algorithms import NOISE

CLUSTER_COLUMN = "cluster"
SIZE_COLUMN = "size"
SHARE_COLUMN = "share"
NAME_COLUMN = "name"  # the segment's name, in reports/cluster_profile.csv
BLANK = "(blank)"  # the category of a blank value in a category-share column ``column=(blank)``

MONEY = "money"  # whole currency units, thousands separators: 76,000
RATE = "rate"  # a 0/1 flag or a share: its mean is a percentage, 12.3%
NUMBER = "number"  # counts, ages, years: one decimal, 1.2
# Money columns are told by their names: the data carries no units.
MONEY_NAME = re.compile(r"income|spent|spend|mnt|amount|revenue|price|sales|salary|cost|value", re.I)

# Phrases of the example data's columns: (above the others, below the others, noun in descriptions).
# Any other column reads "High <noun>" / "Low <noun>", its noun made from its name.
PHRASES: dict[str, tuple[str, str, str]] = {
    "Income": ("High income", "Low income", "income"),
    "Recency": ("Lapsed buyers", "Recent buyers", "days since last purchase"),
    "Age": ("Older", "Younger", "age"),
    "Children": ("Many children", "Few children", "children"),
    "Family_Size": ("Large households", "Small households", "household size"),
    "Total_Spent": ("Big spenders", "Low spenders", "spending (2 years)"),
    "Total_Purchases": ("Frequent buyers", "Infrequent buyers", "purchases"),
    "NumWebVisitsMonth": ("Frequent web visitors", "Rare web visitors", "web visits per month"),
    "Enrollment_Years": ("Long-standing customers", "New customers", "years as customer"),
    "Response": ("Responsive to the last campaign", "Unresponsive to the last campaign", "accepted last campaign"),
}
NAME_FEATURES = 3  # phrases in a segment's name
EXTRA_Z = 0.5  # a profile-only column joins the description when it sets the segment apart by at least this
NOISE_SEGMENT = "Unassigned (noise)"  # the name of HDBSCAN's noise rows (-1) as a segment
NOISE_LEAD = "In no segment: HDBSCAN found them too far from every dense group"


# -- numbers ------------------------------------------------------------------------------------------------------


def column_kind(name: str, values: pd.Series) -> str:
    """How a profiled column is shown: ``rate`` (0/1 values), ``money`` (by its name) or ``number``."""
    data = values.to_numpy(dtype=float, na_value=np.nan)
    present = data[~np.isnan(data)]
    return kind_of(name, bool(len(present) and np.all((present == 0) | (present == 1))))


def kind_of(name: str, zero_one: bool) -> str:
    """:func:`column_kind` of a column whose values are (``zero_one``) or are not all 0 or 1."""
    return RATE if zero_one else MONEY if MONEY_NAME.search(name) else NUMBER


def format_value(value: float, kind: str) -> str:
    """A mean in original units for a reader: ``76,000``, ``1.2``, ``12.3%``; blank as an en dash."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:,.0f}" if kind == MONEY else f"{100 * value:.1f}%" if kind == RATE else f"{value:,.1f}"


def compact_number(value: float) -> str:
    """A short label for a heatmap cell: 29k, 1.2M, 1,393, 48.0, 0.82."""
    size = abs(value)
    if size >= 1e4 or not np.isfinite(value):
        return "–" if not np.isfinite(value) else f"{value / 1e6:.1f}M" if size >= 1e6 else f"{value / 1e3:.0f}k"
    return f"{value:,.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"


def text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with a cell of colour ``rgba`` (relative luminance, WCAG)."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in map(float, rgba[:3]))
    # Contrast ratio with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05): equal at L = 0.179.
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def rounded_profile(profile: pd.DataFrame, kinds: Mapping[str, str]) -> pd.DataFrame:
    """``cluster_profile.csv``: money to whole units, other means to 2 decimals, shares and rates as fractions to 4
    decimals (0.1234 = 12.34%). Columns not in ``kinds`` are category shares."""
    out = profile.copy()
    for column in out.columns.drop([CLUSTER_COLUMN, SIZE_COLUMN]):
        kind = RATE if column == SHARE_COLUMN else kinds.get(column, RATE)
        out[column] = out[column].round({MONEY: 0, RATE: 4}.get(kind, 2))
        if kind == MONEY:
            out[column] = out[column].astype("Int64")  # 29185, not 29185.0 (a blank mean stays blank)
    return out


# -- names and descriptions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One cluster for a reader: a short name, what sets it apart, its size."""

    cluster: int
    name: str
    description: str
    size: int
    share: float


def contrasts(values: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Per cluster (rows) and column: (cluster mean - mean of all other customers) / the column's spread over all
    customers. Blanks are left out of every mean; a constant column scores 0."""
    clusters, codes = np.unique(labels, return_inverse=True)
    sums, counts, spreads = {}, {}, {}
    # Column by column, by bincount: a group-by on a float copy of the table costs GiBs at 10M rows.
    for name, column in values.items():
        data = column.to_numpy(dtype=float, na_value=np.nan)
        present = ~np.isnan(data)
        blanks = not present.all()
        sums[name] = np.bincount(codes, np.where(present, data, 0.0) if blanks else data, minlength=len(clusters))
        counts[name] = np.bincount(codes, present if blanks else None, minlength=len(clusters))
        spreads[name] = (np.nanstd(data) if blanks else data.std()) if len(data) else 0.0
    index = [int(k) for k in clusters]
    return contrasts_of(pd.DataFrame(sums, index=index), pd.DataFrame(counts, index=index), pd.Series(spreads))


def contrasts_of(sums: pd.DataFrame, counts: pd.DataFrame, spreads: pd.Series) -> pd.DataFrame:
    """:func:`contrasts` from per-cluster sums and counts of the values present and each column's spread (ddof 0)."""
    s, n = sums.to_numpy(dtype=float), counts.to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s / n - (s.sum(axis=0) - s) / (n.sum(axis=0) - n)) / spreads[sums.columns].to_numpy(dtype=float)
    return pd.DataFrame(np.where(np.isfinite(z), z, 0.0), index=list(sums.index), columns=list(sums.columns))


def label(column: str, labels: Mapping[str, str]) -> str:
    """A column's readable label (``evaluate.labels``, else its name); a category share ``column=value`` reads
    ``label: value``."""
    name, eq, value = column.partition("=")
    return f"{labels.get(name, name)}: {value}" if eq else labels.get(column, column)


def noun(column: str, labels: Mapping[str, str] | None = None) -> str:
    """What a column measures, for a sentence: its label (lower-cased), its phrase's noun, or its name in words."""
    if text := (labels or {}).get(column):
        return text if text[:2].isupper() else text[:1].lower() + text[1:]  # "NPS score" stays
    if column in PHRASES:
        return PHRASES[column][2]
    if spend := re.fullmatch(r"Mnt(\w+?)(Products|Prods)?", column):  # the example's MntWines, MntGoldProds...
        return f"spending on {noun(spend.group(1))}"
    if campaign := re.fullmatch(r"AcceptedCmp(\d+)", column):
        return f"accepted campaign {campaign.group(1)}"
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", column).replace("_", " ").split()
    return " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words) or column


def top_columns(z: pd.Series, n: int) -> list[str]:
    """The ``n`` columns with the largest |z|; ties in column order (deterministic)."""
    return list((-z.abs().round(9)).sort_values(kind="stable").index[:n])


def describe_segments(
    profile: pd.DataFrame, overall: Mapping[str, float], z: pd.DataFrame, features: Sequence[str],
    extras: Sequence[str], kinds: Mapping[str, str], labels: Mapping[str, str] | None = None,
) -> list[Segment]:  # fmt: skip
    """A unique name and a one-sentence description per cluster: the ``NAME_FEATURES`` clustering ``features``
    furthest from the other customers (``z``), plus the profile-only column (``extras``) furthest if by ``EXTRA_Z``.
    ``labels`` name the columns in descriptions, and in names where ``PHRASES`` has none."""
    segments = []
    for _, row in profile.iterrows():
        k = int(row[CLUSTER_COLUMN])
        top = top_columns(z.loc[k, list(features)], NAME_FEATURES)
        phrases = []
        for c in top:  # "High income", "Low spending"; "No children" for a mean near 0
            word = noun(c, None if c in PHRASES else labels)
            high, low, _ = PHRASES.get(c, (f"High {word}", f"Low {word}", ""))
            none = z.loc[k, c] < 0 and np.isfinite(row[c]) and abs(row[c]) < 0.05
            phrases.append(f"No {word}" if none else high if z.loc[k, c] > 0 else low)
        name = ", ".join([phrases[0], *(p[0].lower() + p[1:] for p in phrases[1:])]) if phrases else f"Segment {k}"
        shown = top + [c for c in top_columns(z.loc[k, list(extras)], 1) if abs(z.loc[k, c]) >= EXTRA_Z]
        parts = "; ".join(
            f"{noun(c, labels)} {format_value(float(row[c]), kinds[c])} vs {format_value(overall[c], kinds[c])} overall"
            for c in shown
        )
        description = f"{parts[:1].upper()}{parts[1:]}." if parts else ""
        if k == NOISE:
            name, description = NOISE_SEGMENT, f"{NOISE_LEAD}{'; ' + parts if parts else ''}."
        segments.append(Segment(k, name, description, int(row[SIZE_COLUMN]), float(row[SHARE_COLUMN])))
    counts = pd.Series([s.name for s in segments]).value_counts()
    return [replace(s, name=f"{s.name} (segment {s.cluster})") if counts[s.name] > 1 else s for s in segments]


# -- the page ------------------------------------------------------------------------------------------------------

# Hennig's reading of a segment's stability (fpc::clusterboot's documentation), highest first.
STABILITY: list[tuple[float, str]] = [(0.85, "highly stable"), (0.75, "stable: a valid segment"),
    (0.6, "a pattern in the data, but which customers belong to it is doubtful"),
    (-np.inf, "not a real segment: it dissolves when the data vary; do not act on it alone")]  # fmt: skip
UNSTABLE = 0.6  # below this, evaluate warns


def stability_reading(value: float) -> str:
    """What a segment's stability says, by Hennig's thresholds."""
    return next(text for least, text in STABILITY if value >= least)


def stability_section(segments: Sequence[Segment], stability: Mapping[int, float], resamples: int, rows: int) -> str:
    """The page's section on each segment's stability (``stability``: cluster -> value) with its reading; empty when
    it was not measured."""
    scored = [(s.name, stability[s.cluster], stability_reading(stability[s.cluster]))
              for s in segments if s.cluster in stability]  # fmt: skip
    return SECTIONS.stability(resamples, rows, any(s.cluster == NOISE for s in segments), scored) if scored else ""


CRITERIA = ("silhouette", "calinski_harabasz", "davies_bouldin", "stability")  # the other criteria, in page order
NAMES = dict(zip(CRITERIA, ("silhouette", "Calinski–Harabasz", "Davies–Bouldin", "mean stability"), strict=True))
PREFERRED = " ★"  # marks each column's preferred k


def _score(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def k_warnings(k_values: Sequence[int], k_best: int | None, preferred: Mapping[str, int], rule: str) -> list[str]:
    """Warnings on a searched k: ``k_best`` at an edge of ``k_values``, criteria preferring a k more than one away."""
    if rule in ("fixed", "density", "?") or k_best is None or not len(k_values):
        return []
    found = []
    if k_best == max(k_values):
        found.append(f"k_best = {k_best} is the largest k searched (train.k_max): the best k may lie beyond it; "
                     "widen train.k_max")  # fmt: skip
    elif k_best == min(k_values) > 2:
        found.append(f"k_best = {k_best} is the smallest k searched (train.k_min): the best k may lie below it; "
                     "lower train.k_min")  # fmt: skip
    if far := [f"{NAMES[c]} prefers k = {k}" for c, k in preferred.items() if abs(k - k_best) > 1]:
        found.append(f"the criteria disagree with k_best = {k_best}: {', '.join(far)}")
    return found


def k_table(
    elbow: pd.DataFrame | None, train_metrics: Mapping[str, Any] | None, criteria: pd.DataFrame | None
) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """The train score and ``criteria`` (k, silhouette, ...) per k, each criterion's preferred k, and
    :func:`k_warnings`."""
    tm = dict(train_metrics or {})
    rule, metric = str(tm.get("k_rule", "?")), "score"
    if elbow is not None and "metric" in elbow and len(elbow):
        metric = str(elbow["metric"].iloc[0]) + (" (train)" if elbow["metric"].iloc[0] in CRITERIA else "")
    if rule == "density":  # an algorithm that finds k itself (HDBSCAN): no search over k
        elbow = None
    scores = None if elbow is None else elbow[["k", "score"]].rename(columns={"score": metric})
    tables = [t.set_index("k") for t in (scores, criteria) if t is not None and len(t)]
    by_k = pd.concat(tables, axis=1) if tables else pd.DataFrame()  # outer join on k
    best = {c: int(by_k[c].idxmin() if c == "davies_bouldin" else by_k[c].idxmax()) for c in CRITERIA if c in by_k}
    return by_k, best, k_warnings([int(k) for k in by_k.index], tm.get("k_best"), best, rule)


def k_choice_section(
    elbow: pd.DataFrame | None, train_metrics: Mapping[str, Any] | None, criteria: pd.DataFrame | None,
    elbow_png: bytes | None, algorithm: str = "k-means",
) -> str:  # fmt: skip
    """How k was chosen: :func:`k_table` with each column's preferred k marked, one sentence on what each criterion
    prefers, the warnings; ``algorithm`` is the registry's label."""
    tm = dict(train_metrics or {})
    rule, k_best = str(tm.get("k_rule", "?")), tm.get("k_best")
    by_k, best, warnings = k_table(elbow, tm, criteria)
    shown = by_k.map(_score)
    for c, k in [*best.items(), *((c, k_best) for c in by_k if c not in CRITERIA and rule != "fixed")]:
        if k in shown.index:  # the train score's preferred k is the one its rule chose
            shown.loc[k, c] += PREFERRED
    shown.index = [f"{k:.0f} (the model's k)" if k == k_best else f"{k:.0f}" for k in by_k.index]
    groups: dict[int, list[str]] = {}  # preferred k -> the criteria preferring it
    for c, k in best.items():
        groups.setdefault(k, []).append(NAMES[c])
    metric = next((c for c in by_k if c not in CRITERIA), "score")
    table = shown.rename(columns=NAMES).rename_axis("k").to_html() if len(by_k.columns) else ""
    noise = format_value(float(tm.get("noise_share", 0.0)), RATE)
    return SECTIONS.k_choice(algorithm, rule, k_best, metric, noise, sorted(groups.items()), table, elbow_png, warnings)


def provenance_section(params: Mapping[str, Any], data_path: str | None, data_md5: str | None) -> str:
    """The raw data, its md5 and the params that shaped the result: of ``train``'s algorithms only the one used,
    no Dask knob on the local engine."""
    unused = [f"train.{a}." for a in algorithms.REGISTRY if a != params.get("train.algorithm")]
    if params.get("preprocess.engine", "local") == "local":  # the Dask engine's knobs, in its section and data's
        unused += ["preprocess.dask.", "preprocess.data.format", "preprocess.data.files"]
    shaping = {key: visible(value) for key, value in params.items() if not key.startswith(tuple(unused))}
    return SECTIONS.provenance(data_path or "?", data_md5 or "?", shaping)


def visible(value: Any) -> str:
    """A param's value as params.yaml spells it (null, true); blank, padded or with control characters (a tab
    separator): quoted and escaped."""
    if not isinstance(value, str):
        return json.dumps(value, default=str)
    return value if value and value == value.strip() and value.isprintable() else repr(value)


def render_report(
    *, segments: Sequence[Segment], profile: pd.DataFrame, overall: Mapping[str, float], features: Sequence[str],
    extras: Sequence[str], kinds: Mapping[str, str], metrics: Mapping[str, Any], images: Mapping[str, bytes | None],
    k_choice: str, provenance: str, stability: str = "", labels: Mapping[str, str] | None = None,
) -> str:  # fmt: skip
    """The whole page (report.html.j2): one HTML string, styles and images inline, no script, no URL."""
    rows = {  # the profile: a column per segment and one for all customers
        ("Segment", "Customers"): [f"{n:,}" for n in [*profile[SIZE_COLUMN], profile[SIZE_COLUMN].sum()]],
        ("Segment", "Share"): [*(format_value(v, RATE) for v in profile[SHARE_COLUMN]), "100.0%"],
    }
    for title, columns in (
        ("Used for clustering (mean per customer)", [c for c in features if c in profile]),
        ("Profiled only, not used for clustering (mean per customer)", [c for c in extras if c in profile]),
        ("Category shares (each column's shares add up to 100%, blanks included)", [c for c in profile if "=" in c]),
    ):
        for c in columns:
            values = [*profile[c], overall[c]]
            rows[title, label(c, labels or {})] = [format_value(float(v), kinds.get(c, RATE)) for v in values]
    return PAGE.render(
        segments=segments, customers=int(profile[SIZE_COLUMN].sum()), noise=NOISE, images=images, metrics=metrics,
        profile_table=pd.DataFrame(rows, index=[*(s.name for s in segments), "All customers"]).T.to_html(),
        k_choice=k_choice, stability=stability, provenance=provenance,
        score=_score, rate=lambda v: format_value(v, RATE),
    )  # fmt: skip


# The page's markup, beside this file; autoescape: every user text (names, params, paths) is escaped.
_JINJA = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
_JINJA.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
PAGE, SECTIONS = _JINJA.get_template("report.html.j2"), _JINJA.get_template("report_sections.html.j2").module

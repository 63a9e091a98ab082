"""The segment report: names and descriptions of the segments, rounded profiles in original units, and one
self-contained HTML page (styles and images inline, no network). Pure functions: same inputs, same bytes."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

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
    """:func:`column_kind` of a column whose values are all 0 or 1 (``zero_one``: blanks aside, at least one)."""
    return RATE if zero_one else MONEY if MONEY_NAME.search(name) else NUMBER


def format_value(value: float, kind: str) -> str:
    """A mean in original units for a reader: ``76,000``, ``1.2``, ``12.3%``; blank as an en dash."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:,.0f}" if kind == MONEY else f"{100 * value:.1f}%" if kind == RATE else f"{value:,.1f}"


def compact_number(value: float) -> str:
    """A short label for a heatmap cell: 29k, 1.2M, 1,393, 48.0, 0.82."""
    size = abs(value)
    if not np.isfinite(value):
        return "–"
    if size >= 1e6:
        return f"{value / 1e6:.1f}M"
    if size >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"


def text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with a cell of colour ``rgba`` (relative luminance, WCAG)."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in map(float, rgba[:3]))
    # Contrast ratio with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05): equal at L = 0.179.
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def rounded_profile(profile: pd.DataFrame, kinds: Mapping[str, str]) -> pd.DataFrame:
    """``cluster_profile.csv`` for people and diffs: money to whole units, other means to 2 decimals, shares and
    rates as fractions to 4 decimals (0.1234 = 12.34%). Columns not in ``kinds`` are category shares."""
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
    # Column by column, sums per cluster by bincount: one pass over the rows (masking them per cluster was k passes).
    for column_name, column in values.items():
        data = column.to_numpy(dtype=float, na_value=np.nan)
        present = ~np.isnan(data)
        has_blanks = not present.all()
        filled = np.where(present, data, 0.0) if has_blanks else data
        sums[column_name] = np.bincount(codes, weights=filled, minlength=len(clusters))
        counts[column_name] = (
            np.bincount(codes, weights=present, minlength=len(clusters)) if has_blanks else np.bincount(codes)
        )
        spreads[column_name] = (np.nanstd(data) if has_blanks else data.std()) if len(data) else 0.0
    index = [int(k) for k in clusters]
    return contrasts_of(pd.DataFrame(sums, index=index), pd.DataFrame(counts, index=index), pd.Series(spreads))


def contrasts_of(sums: pd.DataFrame, counts: pd.DataFrame, spreads: pd.Series) -> pd.DataFrame:
    """:func:`contrasts` from its group-bys: per cluster (rows) and column the sum and the count of the values
    present, and per column the spread (standard deviation, ddof 0) over all customers."""
    rows = np.empty(sums.shape)
    for j, column in enumerate(sums.columns):
        s_k, n_k = sums[column].to_numpy(dtype=float), counts[column].to_numpy()
        total, count = s_k.sum(), n_k.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (s_k / n_k - (total - s_k) / (count - n_k)) / spreads[column]
        rows[:, j] = np.where(np.isfinite(z), z, 0.0)
    return pd.DataFrame(rows, index=list(sums.index), columns=list(sums.columns))


def noun(column: str) -> str:
    """What a column measures, for a sentence: its phrase's noun, or its name split into words."""
    if column in PHRASES:
        return PHRASES[column][2]
    if spend := re.fullmatch(r"Mnt(\w+?)(Products|Prods)?", column):  # the example's MntWines, MntGoldProds...
        return f"spending on {noun(spend.group(1))}"
    if campaign := re.fullmatch(r"AcceptedCmp(\d+)", column):
        return f"accepted campaign {campaign.group(1)}"
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", column).replace("_", " ").split()
    return " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words) or column


def phrase(column: str, z: float, segment_mean: float) -> str:
    """``High income`` / ``Low spending`` / ``No children``: how a segment stands out on ``column``."""
    if z < 0 and np.isfinite(segment_mean) and abs(segment_mean) < 0.05:
        return f"No {noun(column)}"
    high, low, _ = PHRASES.get(column, (f"High {noun(column)}", f"Low {noun(column)}", ""))
    return high if z > 0 else low


def top_columns(z: pd.Series, n: int) -> list[str]:
    """The ``n`` columns with the largest |z|; ties in column order (deterministic)."""
    order = sorted(range(len(z)), key=lambda i: (-round(abs(float(z.iloc[i])), 9), i))
    return [z.index[i] for i in order[:n]]


def describe_segments(
    profile: pd.DataFrame, overall: Mapping[str, float], z: pd.DataFrame, features: Sequence[str],
    extras: Sequence[str], kinds: Mapping[str, str],
) -> list[Segment]:  # fmt: skip
    """A unique name and a one-sentence description per cluster of ``profile``: the phrases of the
    ``NAME_FEATURES`` clustering ``features`` furthest from the other customers (``z``), those means against the
    overall ones, plus the profile-only column (``extras``) furthest away if by ``EXTRA_Z`` or more."""
    segments = []
    for _, row in profile.iterrows():
        k = int(row[CLUSTER_COLUMN])
        top = top_columns(z.loc[k, list(features)], NAME_FEATURES) if len(features) else []
        phrases = [phrase(c, float(z.loc[k, c]), float(row[c])) for c in top]
        name = ", ".join([phrases[0], *(p[0].lower() + p[1:] for p in phrases[1:])]) if phrases else f"Segment {k}"
        shown = list(top)
        if extras:
            (best,) = top_columns(z.loc[k, list(extras)], 1)
            if abs(float(z.loc[k, best])) >= EXTRA_Z:
                shown.append(best)
        parts = [
            f"{noun(c)} {format_value(float(row[c]), kinds[c])} vs {format_value(overall[c], kinds[c])} overall"
            for c in shown
        ]
        description = (parts[0][0].upper() + "; ".join(parts)[1:] + ".") if parts else ""
        if k == NOISE:
            name, description = NOISE_SEGMENT, f"{NOISE_LEAD}{'; ' + '; '.join(parts) if parts else ''}."
        segments.append(Segment(k, name, description, int(row[SIZE_COLUMN]), float(row[SHARE_COLUMN])))
    counts = pd.Series([s.name for s in segments]).value_counts()
    return [replace(s, name=f"{s.name} (segment {s.cluster})") if counts[s.name] > 1 else s for s in segments]


# -- the page ------------------------------------------------------------------------------------------------------

# The quality table: per score its label and readings, (the lowest value a reading is for, reading) highest first.
SCORES: dict[str, tuple[str, list[tuple[float, str]]]] = {
    "silhouette": ("Silhouette (−1 to 1, higher is better)", [
        (0.5, "well separated segments"),
        (0.25, "reasonable structure: segments overlap at their edges"),
        (-np.inf, "weak structure: segments overlap a lot; read them as tendencies")]),
    "calinski_harabasz": ("Calinski–Harabasz (higher is better)", [
        (-np.inf, "between-segment spread over within-segment spread; compare it across runs on the same data")]),
    "davies_bouldin": ("Davies–Bouldin (0 and up, lower is better)", [
        (1.5, "segments close to each other relative to their size"),
        (0.7, "segments fairly distinct"),
        (-np.inf, "compact, distinct segments")]),
    "smallest_cluster_share": ("Smallest segment", [
        (0.05, "every segment is large enough to act on"),
        (-np.inf, "a small niche: check it is worth a campaign of its own")]),
    "noise_share": ("Customers in no segment (noise)", [
        (-np.inf, "a segment of their own in the profile, left out of the scores above; new customers always get "
                  "the nearest segment")]),
}  # fmt: skip

STYLE = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:2em auto;max-width:1200px;color:#1d2733;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #d8dee6;padding-bottom:.2em;margin-top:1.8em}.lead{color:#4a5663}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card h3{margin:.1em 0 .3em 0;font-size:1.05em}
.card{flex:1 1 260px;border:1px solid #d8dee6;border-left:6px solid #2f6db5;border-radius:6px;padding:.6em .9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #d8dee6;padding:.25em .6em}
th{background:#eef2f6;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.group th{background:#dde5ee}td.overall,th.overall{background:#f7f9fb;font-weight:bold}tr.best td{background:#fff4d6}
img{max-width:100%;height:auto;border:1px solid #eef2f6}.figs{display:flex;flex-wrap:wrap;gap:16px}
.figs figure{flex:1 1 520px;margin:0}figcaption,.card .size{color:#4a5663;font-size:.9em}
code{background:#eef2f6;padding:0 .25em;border-radius:3px}.muted{color:#6b7785;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _row(head: str, cells: Sequence[str], last: str = "") -> str:
    """A table row: a header cell, number cells, and the all-customers cell ``last`` (none when empty)."""
    cells = "".join(f'<td class="num">{c}</td>' for c in cells)
    return f"<tr><th>{_e(head)}</th>{cells}" + (f'<td class="num overall">{last}</td>' if last else "") + "</tr>"


def image_tag(png: bytes | None, alt: str) -> str:
    """An inline PNG (data URI), or a note when there is none."""
    if not png:
        return f'<p class="muted">({_e(alt)}: not available)</p>'
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _score(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def profile_table(profile: pd.DataFrame, overall: Mapping[str, float], segments: Sequence[Segment],
                  features: Sequence[str], extras: Sequence[str], kinds: Mapping[str, str]) -> str:  # fmt: skip
    """The profile, one column per segment and one for all customers, one row per column profiled."""
    names = "".join(f"<th>{_e(s.name)}</th>" for s in segments)
    rows = [f'<tr><th>Segment</th>{names}<th class="overall">All customers</th></tr>']
    rows.append(_row("Customers", [f"{int(n):,}" for n in profile[SIZE_COLUMN]], f"{profile[SIZE_COLUMN].sum():,}"))
    rows.append(_row("Share", [format_value(v, RATE) for v in profile[SHARE_COLUMN]], "100.0%"))
    for title, columns in (
        ("Used for clustering (mean per customer)", [c for c in features if c in profile]),
        ("Profiled only, not used for clustering (mean per customer)", [c for c in extras if c in profile]),
        ("Category shares (each column's shares add up to 100%, blanks included)", [c for c in profile if "=" in c]),
    ):
        rows += [f'<tr class="group"><th colspan="{len(profile) + 2}">{_e(title)}</th></tr>'] if columns else []
        for c in columns:
            kind = kinds.get(c, RATE)
            values = [format_value(float(v), kind) for v in profile[c]]
            rows.append(_row(c.replace("=", ": ", 1), values, format_value(overall[c], kind)))
    return "<table>" + "".join(rows) + "</table>"


def k_choice_section(
    elbow: pd.DataFrame | None, train_metrics: Mapping[str, Any] | None, criteria: pd.DataFrame | None,
    elbow_png: bytes | None, algorithm: str = "k-means",
) -> str:  # fmt: skip
    """How k was chosen: the train stage's score per k and rule, and what the other criteria (``criteria``: k,
    silhouette, calinski_harabasz, davies_bouldin) say per k; ``algorithm`` is the registry's label."""
    tm = dict(train_metrics or {})
    k_best, rule = tm.get("k_best"), tm.get("k_rule", "?")
    metric = str(elbow["metric"].iloc[0]) if elbow is not None and "metric" in elbow and len(elbow) else "score"
    rule_text = {
        "elbow": "the elbow (knee) of the curve: where adding a segment stops paying off",
        "best_score": f"the best {metric} score",
        "min_bic": "the lowest BIC: the best trade-off between fit and the number of parameters",
        "min_aic": "the lowest AIC: the best trade-off between fit and the number of parameters",
    }.get(str(rule), str(rule))
    if rule == "density":  # an algorithm that finds k itself (HDBSCAN): no search, its one "score" the noise share
        parts = [
            f"<p>{_e(algorithm)} found <b>k = {_e(k_best)}</b> segments itself (the dense groups its settings in "
            "<code>params.yaml</code> call clusters); there was no search over k. "
            f"{format_value(float(tm.get('noise_share', 0.0)), RATE)} of the customers it fitted on are in no group "
            "(noise).</p>"
        ]
        elbow = None
    else:
        chose = (
            f"k = <b>{_e(k_best)}</b> was fixed in params (<code>train.k</code>, or k_min = k_max), whatever the "
            "curve says"
            if rule == "fixed"
            else f"it chose <b>k = {_e(k_best)}</b> by {_e(rule_text)}"
        )
        parts = [
            f"<p>The train stage fitted {_e(algorithm)} for each k and scored it by <b>{_e(metric)}</b>; {chose}.</p>"
        ]
    table = pd.DataFrame({"k": []})
    if elbow is not None and len(elbow):
        table = elbow[["k", "score"]].rename(columns={"score": metric})
    if criteria is not None and len(criteria):
        table = criteria if not len(table) else table.merge(criteria, on="k", how="outer")
    if len(table):
        says = [
            f"{label} prefers k = {int(table.loc[table[c] == better(table[c]), 'k'].iloc[0])}"
            for c, label, better in (
                ("silhouette", "silhouette (higher is better)", max),
                ("calinski_harabasz", "Calinski–Harabasz (higher is better)", max),
                ("davies_bouldin", "Davies–Bouldin (lower is better)", min),
            )
            if c in table
        ]
        if says:
            parts.append(
                "<p>The other criteria, from one k-means fit per k on the same matrix (3 restarts; above "
                "<code>evaluate.silhouette_sample_size</code> rows, on a seeded sample of that many): "
                f"{_e('; '.join(says))}.</p>"
            )
        body = [
            ('<tr class="best">' if k_best is not None and int(r["k"]) == int(k_best) else "<tr>")
            + "".join(f'<td class="num">{int(r[c]) if c == "k" else _score(r[c])}</td>' for c in table.columns)
            + "</tr>"
            for _, r in table.iterrows()
        ]
        head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
        parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
        parts.append('<p class="muted">Highlighted: the k the model uses.</p>')
    parts.append(f"<figure>{image_tag(elbow_png, 'Elbow curve: score per k')}</figure>")
    return "".join(parts)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """The quality scores with what each says (:data:`SCORES`)."""
    rows = ["<tr><th>Metric</th><th>Value</th><th>Reading</th></tr>"]
    for key, (label, readings) in SCORES.items():
        if key in metrics:
            v = float(metrics[key])
            reading = next((r for least, r in readings if v >= least), readings[-1][1])
            shown = format_value(v, RATE) if key.endswith("share") else _score(v)
            rows.append(f'<tr><th>{_e(label)}</th><td class="num">{shown}</td><td>{_e(reading)}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def provenance_section(
    params: Mapping[str, Any], data_path: str | None, data_md5: str | None, code: Mapping[str, str]
) -> str:
    """The params, the raw data and its md5, and the code (git blob id per source file) behind the page."""
    files = "<br>".join(f"<code>{_e(blob)}</code> {_e(path)}" for path, blob in code.items())
    rows = [
        f"<tr><th>Data</th><td><code>{_e(data_path or '?')}</code> (md5 <code>{_e(data_md5 or '?')}</code>)</td></tr>",
        f"<tr><th>Code (git blob ids)</th><td>{files}</td></tr>",
        *(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in params.items()),
    ]
    return (
        "<p>The git commit: <code>git log --find-object=&lt;blob id&gt;</code> lists the commits that hold each "
        "source file below (a file cannot name the commit it is committed in). The MLflow run that holds this page "
        "is tagged with the commit checked out when it ran (<code>mlflow.source.git.commit</code>).</p>"
        "<table>" + "".join(rows) + "</table>"
    )


def render_report(
    *, segments: Sequence[Segment], profile: pd.DataFrame, overall: Mapping[str, float], features: Sequence[str],
    extras: Sequence[str], kinds: Mapping[str, str], metrics: Mapping[str, Any], images: Mapping[str, bytes | None],
    k_choice: str, provenance: str,
) -> str:  # fmt: skip
    """The whole page: one HTML string, styles and images inline, no script, no URL."""
    cards = "".join(
        f'<div class="card"><h3>{_e(s.name)}</h3>'
        f'<div class="size">{s.size:,} customers · {format_value(s.share, RATE)} · '
        f"{'no cluster' if s.cluster == NOISE else f'cluster {s.cluster}'}</div><p>{_e(s.description)}</p></div>"
        for s in segments
    )
    figures = "".join(
        f"<figure>{image_tag(images.get(key), caption)}<figcaption>{_e(caption)}</figcaption></figure>"
        for key, caption in (
            ("clusters_2d", "The customers on the two main directions of the data, coloured by segment"),
            ("silhouette", "Silhouette per customer: how much closer each is to its own segment than to the next"),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Customer segments</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Customer segments</h1>
<p class="lead">{int(profile[SIZE_COLUMN].sum()):,} customers in {len(segments)} segments. Each segment is named after
what sets it apart from the other customers (features furthest above or below them).</p>
<h2>The segments</h2>
<div class="cards">{cards}</div>
<h2>Profile</h2>
<p>Averages per customer in original units (money in whole units, counts with one decimal, 0/1 flags as the share
of customers with the flag), against the average over all customers.</p>
{profile_table(profile, overall, segments, features, extras, kinds)}
<figure>{image_tag(images.get("profile"), "Heatmap of the profile")}<figcaption>Colour: how far each segment's
average is above (red) or below (blue) the overall one; cell text: the average.</figcaption></figure>
<h2>How the number of segments was chosen</h2>
{k_choice}
<h2>Quality</h2>
{metrics_table(metrics)}
<div class="figs">{figures}</div>
<h2>What produced this report</h2>
{provenance}
</body>
</html>
"""

"""The segment report (issue 10 §1): names, rounding, profile columns and the self-contained page, as pure functions;
the preprocess stage's one-line error for an unknown ``evaluate.profile_columns`` entry."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest

from pipeline_helpers import run_stage_cli, the_error
from segmentation.config import EvaluateParams, PreprocessParams, parse_section, profile_patterns
from segmentation.core import report
from segmentation.core.data import expand_columns, matches
from segmentation.core.figures import profile_plot
from segmentation.core.quality import cluster_profile
from segmentation.core.transform import preprocess
from segmentation.errors import UserError

# -- numbers --------------------------------------------------------------------------------------------------------


def test_values_are_shown_in_original_units():
    assert report.format_value(76012.4, report.MONEY) == "76,012"
    assert report.format_value(1.26, report.NUMBER) == "1.3"
    assert report.format_value(0.1234, report.RATE) == "12.3%"
    assert report.format_value(float("nan"), report.MONEY) == "–"


@pytest.mark.parametrize(
    ("value", "label"),
    [(29185.17, "29k"), (1392.59, "1,393"), (2_500_000, "2.5M"), (47.99, "48.0"), (0.8186, "0.82"), (-12000, "-12k")],
)
def test_heatmap_labels_are_short(value, label):
    assert report.compact_number(value) == label


def test_text_colour_contrasts_with_its_cell():
    assert report.text_colour((0.02, 0.19, 0.38, 1.0)) == "white"  # dark blue (RdBu_r's low end)
    assert report.text_colour((0.4, 0.0, 0.12, 1.0)) == "white"  # dark red
    assert report.text_colour((0.97, 0.97, 0.97, 1.0)) == "black"  # the near-white middle


def test_column_kinds():
    assert report.column_kind("Response", pd.Series([0, 1, 1, np.nan])) == report.RATE
    assert report.column_kind("MntWines", pd.Series([0, 120, 35])) == report.MONEY
    assert report.column_kind("Income", pd.Series([30000.0, 52000.0])) == report.MONEY
    assert report.column_kind("Children", pd.Series([0, 1, 2, 3])) == report.NUMBER


def test_rounded_profile_rounds_per_kind():
    profile = pd.DataFrame(
        {
            "cluster": [0, 1],
            "size": [3, 1],
            "share": [0.75, 0.25],
            "Income": [29185.173044925126, 77691.52320675105],
            "Age": [38.02329450915141, 46.6],
            "Response": [0.11148086522462562, 0.3],
            "Education=PhD": [0.123456, 0.0],
        }
    )
    kinds = {"Income": report.MONEY, "Age": report.NUMBER, "Response": report.RATE}
    out = report.rounded_profile(profile, kinds)
    assert out["Income"].tolist() == [29185, 77692]
    assert out["Age"].tolist() == [38.02, 46.6]
    assert out["Response"].tolist() == [0.1115, 0.3]
    assert out["Education=PhD"].tolist() == [0.1235, 0.0]
    assert out["share"].tolist() == [0.75, 0.25]
    assert "29185," in out.to_csv(index=False)  # whole units, no "29185.0"


# -- names and descriptions -----------------------------------------------------------------------------------------


def example():
    """Three segments of 4 customers: rich without children, poor families, and middling ones."""
    features = pd.DataFrame(
        {
            "Income": [90000, 95000, 85000, 92000, 20000, 22000, 25000, 21000, 50000, 52000, 51000, 49000],
            "Children": [0, 0, 0, 0, 3, 2, 3, 2, 1, 1, 1, 2],
            "Age": [50, 52, 48, 51, 40, 38, 41, 39, 45, 44, 46, 45],
            "Response": [1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0],
        },
        dtype=float,
    )
    labels = np.repeat([0, 1, 2], 4)
    profile = cluster_profile(features.assign(ID=range(12))[["ID", *features.columns]], labels, "ID")
    kinds = {c: report.column_kind(c, features[c]) for c in features}
    overall = {c: float(features[c].mean()) for c in features}
    z = report.contrasts(features, labels)
    return features, labels, profile, kinds, overall, z


def test_contrasts_compare_each_segment_with_the_other_customers():
    features, labels, _, _, _, z = example()
    others = features["Income"][labels != 0].mean()
    expected = (features["Income"][labels == 0].mean() - others) / features["Income"].std(ddof=0)
    assert z.loc[0, "Income"] == pytest.approx(expected)
    assert z.loc[0, "Income"] > 0 > z.loc[1, "Income"]


def test_segments_get_names_and_descriptions_in_original_units():
    _, _, profile, kinds, overall, z = example()
    segments = report.describe_segments(profile, overall, z, ["Income", "Children", "Age"], ["Response"], kinds)
    names = [s.name for s in segments]
    assert len(set(names)) == 3
    assert names[0].startswith("High income") and "no children" in names[0]
    assert names[1].startswith("Low income") or "many children" in names[1].lower()
    assert "income 90,500 vs 54,333 overall" in segments[0].description.lower()
    assert "accepted last campaign 75.0% vs 33.3% overall" in segments[0].description  # the profile-only column
    assert (segments[0].size, segments[0].share) == (4, pytest.approx(1 / 3))


def test_colliding_names_get_a_disambiguator():
    features = pd.DataFrame({"Income": [1.0, 1.0, 5.0, 5.0, 9.0, 9.0, 1.0, 1.0]})
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    profile = cluster_profile(features.assign(ID=range(8))[["ID", "Income"]], labels, "ID")
    z = report.contrasts(features, labels)
    segments = report.describe_segments(profile, {"Income": 4.0}, z, ["Income"], [], {"Income": report.MONEY})
    names = [s.name for s in segments]
    assert names[0] == "Low income (segment 0)" and names[3] == "Low income (segment 3)"
    assert len(set(names)) == 4


def test_names_of_other_columns_are_readable():
    assert report.noun("NumWebVisitsMonth") == "web visits per month"
    assert report.noun("MntGoldProds") == "spending on gold"
    assert report.noun("AcceptedCmp3") == "accepted campaign 3"
    assert report.noun("avg_basket_EUR") == "avg basket EUR"


# -- profile columns ------------------------------------------------------------------------------------------------


def test_globs_expand_against_the_columns_in_order():
    columns = ["ID", "MntWines", "MntFruits", "AcceptedCmp3", "AcceptedCmp1", "Response", "Income"]
    got = expand_columns(["Response", "AcceptedCmp*", "Mnt*", "Response"], columns, "evaluate.profile_columns", "x")
    assert got == ["Response", "AcceptedCmp3", "AcceptedCmp1", "MntWines", "MntFruits"]
    assert matches("MntWines", ["Mnt*"]) and not matches("mntwines", ["Mnt*"])  # case-sensitive, like the CSV


def test_an_unknown_profile_column_is_a_user_error():
    with pytest.raises(UserError, match=r"evaluate\.profile_columns: no column 'Nope\*' in data.csv"):
        expand_columns(["Response", "Nope*"], ["Response"], "evaluate.profile_columns", "data.csv")


def test_profile_columns_are_validated():
    with pytest.raises(UserError, match=r"evaluate\.profile_columns: .*listed twice"):
        parse_section("evaluate", {"silhouette_sample_size": 10, "random_state": 0, "profile_columns": ["a", "a"]})
    assert EvaluateParams(silhouette_sample_size=10, random_state=0).profile_columns == []
    assert profile_patterns({"evaluate": {"profile_columns": ["Mnt*"]}}) == ["Mnt*"]
    assert profile_patterns({"train": {}}) == []
    with pytest.raises(UserError, match=r"evaluate\.profile_columns"):
        profile_patterns({"evaluate": {"profile_columns": "Mnt*"}})


def plain_section(path: str = "data.csv") -> dict:
    return {
        "data": {"path": path, "separator": ",", "encoding": "utf-8", "id_column": "id"},
        "recipe": None,
        "features": ["a", "b"],
        "missing": "drop",
        "outliers": {},
        "scale": True,
        "pca_components": None,
    }


def test_preprocess_passes_profile_columns_through():
    raw = pd.DataFrame(
        {
            "id": range(1, 7),
            "a": [1.0, 2, 3, 4, 5, 6],
            "b": [2.0, 1, 4, 3, 6, np.nan],  # the last row is dropped (blank feature)
            "MntX": [10, 20, 30, 40, 50, 60],
            "MntY": [1, 2, 3, 4, 5, 6],
            "tier": ["gold", None, "silver", "gold", "gold", "silver"],  # text: kept as categories, blank kept
            "unused": 0,
        }
    )
    result = preprocess(raw, PreprocessParams(**plain_section()), "data.csv", ["tier", "Mnt*", "a"])
    assert result.features.columns.tolist() == ["id", "a", "b", "tier", "MntX", "MntY"]
    assert result.features["MntX"].tolist() == [10, 20, 30, 40, 50]
    assert result.features["tier"].isna().tolist() == [False, True, False, False, False]
    assert result.matrix.columns.tolist() == ["id", "a", "b"]  # never clustered


def test_an_unknown_profile_column_stops_preprocess_in_one_line(tmp_path):
    pd.DataFrame({"id": range(1, 9), "a": np.arange(8.0), "b": np.arange(8.0) ** 2, "MntX": 1}).to_csv(
        tmp_path / "data.csv", index=False
    )
    outputs = ["--features", "out/f.csv", "--matrix", "out/m.csv", "--transformer", "out/t.joblib",
               "--metrics", "out/p.json", "--dagshub-dir", "out/dh"]  # fmt: skip
    evaluate = {"silhouette_sample_size": 10, "random_state": 0, "profile_columns": ["Mnt*", "Response"]}
    proc = run_stage_cli(tmp_path, "preprocess", outputs, preprocess=plain_section(), evaluate=evaluate)
    line = the_error(proc, tmp_path)
    assert line == "error: params.yaml: evaluate.profile_columns: no column 'Response' in data.csv"


# -- the page -------------------------------------------------------------------------------------------------------


def test_category_shares_add_up_with_blanks():
    features = pd.DataFrame({"ID": range(5), "x": [1.0, 2, 3, 4, 5], "tier": ["a", None, "b", "a", None]})
    profile = cluster_profile(features, np.array([0, 0, 0, 1, 1]), "ID", ["tier"])
    shares = profile[["tier=a", "tier=b", "tier=(blank)"]]
    assert np.allclose(shares.sum(axis=1), 1.0)


def page(png: bytes = b"\x89PNG fake", stability: tuple[float, ...] = (0.9, 0.7, 0.5)) -> str:
    _, _, profile, kinds, overall, z = example()
    segments = report.describe_segments(profile, overall, z, ["Income", "Children", "Age"], ["Response"], kinds)
    elbow = pd.DataFrame({"k": [2, 3, 4], "score": [10.0, 6.0, 5.5], "metric": "distortion"})
    criteria = pd.DataFrame(
        {"k": [2, 3, 4], "silhouette": [0.5, 0.6, 0.4], "calinski_harabasz": [10.0, 30.0, 20.0],
         "davies_bouldin": [0.9, 0.5, 0.8], "stability": [0.9, 0.8, 0.95]}
    )  # fmt: skip
    return report.render_report(
        segments=segments,
        profile=profile,
        overall=overall,
        features=["Income", "Children", "Age"],
        extras=["Response"],
        kinds=kinds,
        metrics={"silhouette": 0.61, "calinski_harabasz": 30.0, "davies_bouldin": 0.5, "smallest_cluster_share": 1 / 3},
        images={"profile": png, "clusters_2d": png, "silhouette": png},
        k_choice=report.k_choice_section(elbow, {"k_best": 3, "k_rule": "elbow"}, criteria, png),
        provenance=report.provenance_section({"train.k_max": 10, "evaluate.x": "<b>"}, "d.csv", "abc"),
        stability=report.stability_section(segments, dict(enumerate(stability)), 20, 3000),
    )


def test_the_page_is_self_contained_and_deterministic():
    html = page()
    assert html == page()  # same inputs, same bytes
    assert not re.search(r"https?://", html)
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # every source inline
    assert html.count('src="data:image/png;base64,') == 4  # heatmap, elbow, 2-D view, silhouette
    assert "<script" not in html and "&lt;b&gt;" in html  # params are escaped
    assert "90,500" in html and "75.0%" in html  # rounded, original units
    sentence = "silhouette, Calinski–Harabasz and Davies–Bouldin agree and mean stability prefers k = 4 (more, finer"
    assert sentence in " ".join(html.split())
    assert "<td>0.950 ★</td>" in html and "Warning:" not in html  # stability's preferred k is one away: no warning
    assert "<b>k = 3</b>" in html


def test_each_segment_s_stability_is_shown_with_hennig_s_reading():
    html = page()
    assert "20 bootstrap resamples of 3,000 customers" in html
    for value, reading in (("0.90", "highly stable"), ("0.70", "a pattern"), ("0.50", "not a real segment")):
        assert re.search(rf"<td>{value}</td>\s*<td>{reading}", html)
    assert "Stability of each segment" not in page(stability=())  # not measured (evaluate.stability_resamples: 0)
    assert report.stability_reading(0.6) != report.stability_reading(0.5999)  # Hennig's threshold, UNSTABLE


def test_missing_figures_are_noted_not_broken():
    html = page(png=b"")
    assert "<img" not in html and "not available" in html


def test_heatmap_labels_and_colours():
    _, _, profile, _, _, _ = example()
    fig = profile_plot(profile)
    texts = fig.axes[0].texts
    labels = [t.get_text() for t in texts]
    assert "90k" in labels and "0.00" in labels  # Income of segment 0, its Children
    assert {t.get_color() for t in texts} == {"black", "white"}
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_provenance_is_folded_and_keeps_only_what_shaped_the_result():
    params = {
        "preprocess.data.separator": "\t", "preprocess.data.format": "auto", "preprocess.engine": "local",
        "preprocess.dask.blocksize": "64MiB", "train.algorithm": "gaussian_mixture", "train.kmeans.method": "lloyd",
        "train.gaussian_mixture.criterion": "bic", "train.k": None, "evaluate.x": "", "evaluate.y": " ",
        "evaluate.z": "a\x00b",
    }  # fmt: skip
    text = html.unescape(report.provenance_section(params, "d.csv", "abc"))
    assert re.match(r"<details><summary>The data and the 8 params behind this report</summary>", text)  # closed
    assert "train.gaussian_mixture.criterion" in text and "train.kmeans" not in text  # the algorithm used only
    assert "preprocess.dask" not in text and "preprocess.data.format" not in text  # the local engine: no Dask knob
    for shown in (r"'\t'", "''", "' '", r"'a\x00b'", "null", "d.csv", "abc"):  # invisible values made visible
        assert f"<code>{shown}</code>" in text, shown
    dask = html.unescape(report.provenance_section({**params, "preprocess.engine": "dask"}, None, None))
    assert "preprocess.dask.blocksize" in dask and "preprocess.data.format" in dask and "(md5 <code>?</code>)" in dask


def test_labels_name_the_columns_in_tables_descriptions_and_figures_but_not_the_example_s_names():
    _, _, profile, kinds, overall, z = example()
    labels = {"Income": "Yearly income", "Children": "Kids at home", "Response": "Said yes", "Gone": "Not in data"}
    plain = report.describe_segments(profile, overall, z, ["Income", "Children", "Age"], ["Response"], kinds)
    named = report.describe_segments(profile, overall, z, ["Income", "Children", "Age"], ["Response"], kinds, labels)
    assert [s.name for s in named] == [s.name for s in plain]  # PHRASES win for the example's columns
    assert "yearly income 90,500 vs 54,333 overall" in named[0].description.lower()
    assert "said yes 75.0%" in named[0].description
    # A column without a phrase is named by its label.
    other, other_z = profile.rename(columns={"Income": "inc"}), z.rename(columns={"Income": "inc"})
    renamed = report.describe_segments(other, {**overall, "inc": overall["Income"]}, other_z, ["inc"], [],
                                       {**kinds, "inc": report.MONEY}, {"inc": "NPS score"})  # fmt: skip
    assert renamed[0].name == "High NPS score"
    table = report.render_report(
        segments=named, profile=profile.assign(**{"tier=a": 0.5}), overall={**overall, "tier=a": 0.5},
        features=["Income", "Children", "Age"], extras=["Response"], kinds=kinds, metrics={}, images={}, k_choice="",
        provenance="", labels={**labels, "tier": "Tier"},
    )  # fmt: skip
    assert "<th>Yearly income</th>" in table and "<th>Tier: a</th>" in table and "<th>Income</th>" not in table
    fig = profile_plot(profile, labels)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["Yearly income", "Kids at home", "Age", "Said yes"]


def test_an_empty_label_is_an_error_in_one_line():
    section = {"silhouette_sample_size": 2, "random_state": 0, "labels": {"Income": " "}}
    with pytest.raises(UserError) as error:
        parse_section("evaluate", section, "params.yaml", EvaluateParams)
    assert "evaluate.labels" in str(error.value) and "empty label for ['Income']" in str(error.value)
    assert "\n" not in str(error.value)


def test_the_profile_figure_stays_legible_at_40_columns():
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(60, 40)), columns=[f"a_rather_long_column_{i}" for i in range(40)])
    labels = np.repeat(np.arange(6), 10)
    profile = cluster_profile(features.assign(ID=range(60))[["ID", *features.columns]], labels, "ID")
    fig = profile_plot(profile)
    ax = fig.axes[0]
    width, height = fig.get_size_inches()
    assert len(ax.get_yticklabels()) == 40 and len(ax.get_xticklabels()) == 6  # a row per feature
    assert height / 40 >= 0.35 and width / 6 >= 1.0  # each cell at least 0.35 in tall, 1 in wide
    assert {t.get_fontsize() for t in ax.texts} == {8}  # 8 pt (0.11 in) numbers fit the cells
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_user_text_in_the_page_stays_escaped():
    html_page = script_page()
    assert "<script" not in html_page.lower()  # the page has no script of its own either
    assert html_page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # category, column, label: shown as text


def script_page() -> str:
    """A page whose category value, column name and label are ``<script>alert(1)</script>`` (test_report_ui opens
    it in Chromium)."""
    evil = "<script>alert(1)</script>"
    features, labels, _, _, _, _ = example()
    features = features.rename(columns={"Age": evil}).assign(tier=["a", evil] * 6)
    profile = cluster_profile(features.assign(ID=range(12))[["ID", *features.columns]], labels, "ID", ["tier"])
    kinds = {c: report.column_kind(c, features[c]) for c in features if c != "tier"}
    overall = {c: float(profile[c].mean()) for c in profile if c not in ("cluster", "size", "share")}
    z = report.contrasts(features[list(kinds)], labels)
    names = {"Income": evil}
    segments = report.describe_segments(profile, overall, z, ["Income", "Children", evil], ["Response"], kinds, names)
    return report.render_report(
        segments=segments, profile=profile, overall=overall, features=["Income", "Children", evil], extras=["Response"],
        kinds=kinds, metrics={"silhouette": 0.5}, images={}, k_choice="", labels=names,
        provenance=report.provenance_section({"evaluate.labels.Income": evil, "preprocess.data.path": evil}, evil, "x"),
    )  # fmt: skip


KS = list(range(3, 11))  # a search from train.k_min = 3 to train.k_max = 10


def test_k_warnings_fire_at_the_edges_of_the_search_range():
    (top,) = report.k_warnings(KS, 10, {}, "elbow")
    assert top == ("k_best = 10 is the largest k searched (train.k_max): the best k may lie beyond it; "
                   "widen train.k_max")  # fmt: skip
    (bottom,) = report.k_warnings(KS, 3, {}, "fallback_max_curvature")
    assert "k_best = 3 is the smallest k searched (train.k_min)" in bottom and bottom.endswith("lower train.k_min")
    assert report.k_warnings(KS, 5, {}, "elbow") == []  # inside
    assert report.k_warnings(range(2, 11), 2, {}, "elbow") == []  # k = 2: there is no smaller k to search


def test_k_warnings_fire_when_the_criteria_disagree_by_more_than_one():
    assert report.k_warnings(KS, 5, {"silhouette": 6, "davies_bouldin": 4, "stability": 5}, "elbow") == []
    (line,) = report.k_warnings(KS, 5, {"silhouette": 7, "davies_bouldin": 4, "stability": 3}, "best_score")
    assert line == "the criteria disagree with k_best = 5: silhouette prefers k = 7, mean stability prefers k = 3"


@pytest.mark.parametrize("rule", ["fixed", "density"])
def test_no_k_warning_without_a_search_over_k(rule):
    assert report.k_warnings(KS, 10, {"silhouette": 3}, rule) == []


def test_the_k_section_marks_each_preferred_k_and_shows_the_warnings():
    """Constructed curves: the elbow at k_max = 6, silhouette preferring 2, Davies-Bouldin agreeing."""
    elbow = pd.DataFrame({"k": [2, 3, 4, 5, 6], "score": [50.0, 40, 30, 20, 10], "metric": "distortion"})
    criteria = pd.DataFrame({"k": [2, 3, 4, 5, 6], "silhouette": [0.6, 0.5, 0.4, 0.3, 0.2],
                             "davies_bouldin": [0.9, 0.8, 0.7, 0.6, 0.5]})  # fmt: skip
    html = report.k_choice_section(elbow, {"k_best": 6, "k_rule": "elbow"}, criteria, None)
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "it chose k = 6 by the elbow" in text
    assert "silhouette prefers k = 2 (fewer, broader segments) and Davies–Bouldin agrees." in text
    assert "Warning: k_best = 6 is the largest k searched (train.k_max)" in text
    assert "Warning: the criteria disagree with k_best = 6: silhouette prefers k = 2" in text
    assert re.findall(r"<td>([^<]*★)</td>", html) == ["0.600 ★", "10.000 ★", "0.500 ★"]  # row k = 2, then k = 6
    fixed = report.k_choice_section(elbow.tail(1), {"k_best": 6, "k_rule": "fixed"}, criteria.tail(1), None)
    assert "Warning" not in fixed and "10.000 ★" not in fixed  # a fixed k: no rule chose it from the curve

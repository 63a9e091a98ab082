"""Headless matplotlib set-up shared by the stages' plots."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")  # stages run headless (CI, dvc repro over ssh)

import matplotlib.pyplot as plt

FIGURE_SIZE = (8, 5)
FIGURE_DPI = 100
FONT = "DejaVu Sans"  # ships with matplotlib; yellowbrick's Arial/Liberation preference floods the log otherwise


def _use_bundled_font() -> None:
    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["font.sans-serif"] = [FONT]


def kelbow_visualizer_class():
    """Import yellowbrick's ``KElbowVisualizer`` quietly and keep the bundled font afterwards."""
    with warnings.catch_warnings():
        # yellowbrick 1.5 imports distutils and passes ListedColormap(N=...): deprecations that are not ours.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        from yellowbrick.cluster import KElbowVisualizer
    _use_bundled_font()  # yellowbrick's style import resets the font list
    return KElbowVisualizer


def new_figure(size: tuple[float, float] = FIGURE_SIZE):
    """A new (figure, axes) pair with the bundled font."""
    _use_bundled_font()
    return plt.subplots(figsize=size)

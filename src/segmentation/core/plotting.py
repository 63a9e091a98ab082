"""Headless matplotlib set-up shared by the stages' plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # stages run headless (CI, dvc repro over ssh)

import matplotlib.pyplot as plt

FIGURE_SIZE = (8, 5)
FIGURE_DPI = 100
FONT = "DejaVu Sans"  # ships with matplotlib; yellowbrick's Arial/Liberation preference floods the log otherwise


def new_figure(size: tuple[float, float] = FIGURE_SIZE):
    """A new (figure, axes) pair with the bundled font."""
    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["font.sans-serif"] = [FONT]
    return plt.subplots(figsize=size)

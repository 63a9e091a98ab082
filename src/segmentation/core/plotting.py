"""Headless matplotlib set-up shared by the stages' plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # stages run headless (CI, dvc repro over ssh)

import matplotlib.pyplot as plt

FIGURE_DPI = 100
FONT = "DejaVu Sans"  # ships with matplotlib; yellowbrick's Arial/Liberation preference floods the log otherwise


def new_figure(size: tuple[float, float] = (8, 5)):
    """A new (figure, axes) pair with the bundled font."""
    plt.rcParams.update({"font.family": "sans-serif", "font.sans-serif": [FONT]})
    return plt.subplots(figsize=size)

"""Shared figure plumbing: the headless backend, one colour per method group, saving PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on clusters, CI or the demo

import matplotlib.pyplot as plt  # noqa: E402

DPI = 110
# Colour-blind-safe categorical palette (Okabe & Ito), then tab10 for more groups.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
# Class colours for contours and surfaces (background excluded): bright on a grey image. No
# yellow: it is the ground truth's contour colour.
CLASS_COLORS = ("#ff3b30", "#0a84ff", "#34c759", "#bf5af2", "#ff9500", "#64d2ff", "#ff2d55", "#a2845e")
GT_COLOR = "#ffd60a"


def color(index: int) -> str:
    """The colour of the ``index``-th method group."""
    if index < len(PALETTE):
        return PALETTE[index]
    return matplotlib.colors.to_hex(plt.get_cmap("tab10")(index % 10))


def class_color(cls: int) -> str:
    """The colour of foreground class ``cls`` (1-based)."""
    return CLASS_COLORS[(cls - 1) % len(CLASS_COLORS)]


def figure(width: float, height: float) -> Any:
    return plt.figure(figsize=(width, height), dpi=DPI)


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG and free it (figures are built in loops: no leaks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path

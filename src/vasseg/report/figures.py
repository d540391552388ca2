"""Quantitative figures: per-case Dice box plots (Fig. 4) and training curves from scalars.jsonl."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from vasseg.report.collect import Group, read_scalars, seed_averaged
from vasseg.report.style import color, figure, save

log = logging.getLogger(__name__)

LINESTYLES = ("-", "--", ":", "-.")


def group_name(group: Group) -> str:
    """Legend text: the method (variant) and its labeled count."""
    return f"{group.label} · {group.labeled} labeled"


# --------------------------------------------------------------------------- box plots


def dice_boxplot(groups: list[Group], path: Path) -> Path:
    """Per-case Dice (mean over seeds) per class, one coloured box per method group."""
    classes = sorted({c for g in groups for c in g.classes})
    width = 0.8 / len(groups)
    fig = figure(max(4.5, 1.2 + 0.55 * len(groups) * len(classes)), 4.2)
    ax = fig.add_subplot(111)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice gives the same PNG
    for gi, g in enumerate(groups):
        for ci, cls in enumerate(classes):
            values = [v * 100 for v in seed_averaged(g, "dice", cls).values() if not math.isnan(v)]
            if not values:
                continue
            x = ci + (gi - (len(groups) - 1) / 2) * width
            box = ax.boxplot([values], positions=[x], widths=width * 0.8, patch_artist=True,
                             showfliers=False, medianprops={"color": "black"})
            box["boxes"][0].set(facecolor=color(gi), alpha=0.35, edgecolor=color(gi))
            jitter = rng.uniform(-width * 0.25, width * 0.25, len(values))
            ax.scatter(x + jitter, values, s=12, color=color(gi), zorder=3,
                       label=group_name(g) if ci == 0 else None)
    ax.set_xticks(range(len(classes)), [groups[0].class_name(c) for c in classes])
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylabel("Dice (%) per case")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    return save(fig, path)


# --------------------------------------------------------------------------- training curves


def panel_of(key: str) -> str | None:
    """The panel a scalar is drawn in (related terms share one); None for the step counter."""
    if key == "step":
        return None
    if key.startswith("d_acc"):
        return "discriminator accuracy"
    if key.startswith("w_"):
        return "loss weights"
    if key.startswith("grad_norm"):
        return "gradient norm"
    if key == "lr":
        return "learning rate"
    per_class = re.fullmatch(r"(.+)_c\d+", key)  # e.g. vox_l_c0, vox_l_c1: one panel per family
    return f"{per_class[1]} per class" if per_class else key


def collect_series(groups: list[Group]) -> dict[str, list[tuple[int, int, str, np.ndarray, np.ndarray]]]:
    """``panel -> [(group index, seed index, key, steps, values)]`` from every run's JSONL."""
    panels: dict[str, list[tuple[int, int, str, np.ndarray, np.ndarray]]] = {}
    for gi, g in enumerate(groups):
        for si, run in enumerate(g.runs):
            rows = read_scalars(run.run_dir)
            keys = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float))})
            for key in keys:
                panel = panel_of(key)
                pts = [(row["step"], float(row[key])) for row in rows if isinstance(row.get(key), (int, float))]
                if panel is None or not pts:
                    continue
                steps, values = (np.array(a) for a in zip(*pts))
                panels.setdefault(panel, []).append((gi, si, key, steps, values))
    return panels


def smooth(values: np.ndarray) -> np.ndarray:
    """Moving average over ~2 % of the points (raw when short), NaN-safe at the edges."""
    window = max(1, len(values) // 50)
    if window == 1:
        return values
    kernel = np.ones(window)
    num = np.convolve(np.nan_to_num(values), kernel, mode="same")
    den = np.convolve(np.isfinite(values).astype(float), kernel, mode="same")
    return num / np.maximum(den, 1)


# Set by the config, exact at every step: a moving average would only blur their steps and ramps.
SCHEDULE_PANELS = ("learning rate", "loss weights")


def drawn_lines(panel: str, values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """What a panel draws of one series: ``[(kind, values)]`` with kind markers | faint | line.

    Sparse series (validation, <= 30 points) as markers; schedules as their exact values; noisy
    training scalars faint with a moving average on top.
    """
    if len(values) <= 30:
        return [("markers", values)]
    if panel in SCHEDULE_PANELS:
        return [("line", values)]
    return [("faint", values), ("line", smooth(values))]


def panel_order(names: list[str]) -> list[str]:
    """The total loss first, then its terms, then the optimisation diagnostics, then validation."""
    fixed = ["loss weights", "learning rate", "gradient norm", "discriminator accuracy"]

    def rank(name: str) -> tuple[int, str]:
        if name == "loss":
            return (0, name)
        if name in fixed:
            return (2 + fixed.index(name), name)
        if name.startswith("loss"):
            return (1, name)
        if name.startswith("val"):
            return (7, name)
        return (6, name)
    return sorted(names, key=rank)


def training_curves(groups: list[Group], path: Path) -> Path | None:
    """One panel per loss term and diagnostic; a colour per group, a line style per key."""
    panels = collect_series(groups)
    if not panels:
        log.warning("no scalars.jsonl in any run: no training curves")
        return None
    names = panel_order(list(panels))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = figure(4.2 * cols, 2.9 * rows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_panel(ax, name, panels[name], groups)
    fig.tight_layout()
    return save(fig, path)


def wide_range(series: list[np.ndarray], ratio: float = 30.0) -> bool:
    """True when the largest value exceeds the smallest series median ``ratio`` times: on a
    linear axis the small series would be a flat line (e.g. VAS's beta = 100 loss beside mean
    teacher's, or w_feature = 100 beside w_adv = 0.01)."""
    finite = [v[np.isfinite(v)] for v in series]
    finite = [v for v in finite if v.size]
    if not finite:
        return False
    low = min(float(np.median(v)) for v in finite)
    return low > 0 and max(float(v.max()) for v in finite) > ratio * low


def panel_title(name: str, keys: list[str]) -> str:
    """The panel's name, with the keys it shows when several share it (a count for per-class families)."""
    if name.endswith("per class"):
        return f"{name} ({len(keys)} classes)"
    if len(keys) > 1 or name == "loss weights":  # which weight(s) the panel shows
        return f"{name}: {', '.join(keys)}"
    return name


def shade(base: str, index: int, count: int) -> tuple[float, float, float]:
    """The ``index``-th of ``count`` shades of ``base``, from dark to light."""
    from matplotlib.colors import to_rgb

    rgb = np.asarray(to_rgb(base))
    t = index / max(count - 1, 1)  # 0: darkest, 1: lightest
    dark, light = rgb * 0.55, rgb + (1 - rgb) * 0.6
    return tuple(float(v) for v in dark + (light - dark) * t)


def _draw_panel(ax, name: str, series, groups: list[Group]) -> None:  # noqa: ANN001 - matplotlib axes
    keys = sorted({key for _, _, key, _, _ in series})
    # One group: a shade of its colour per key (a family of per-class terms needs more than four
    # line styles); several groups: the group's colour, a line style per key.
    by_key = len({gi for gi, *_ in series}) == 1 and len(keys) > 1
    for gi, si, key, steps, values in series:
        k = keys.index(key)
        style, hue = (("-", shade(color(gi), k, len(keys))) if by_key
                      else (LINESTYLES[k % len(LINESTYLES)], color(gi)))
        label = group_name(groups[gi]) + (f" · {key}" if len(keys) > 1 else "") if si == 0 else None
        for kind, ys in drawn_lines(name, values):
            if kind == "markers":
                ax.plot(steps, ys, style, marker="o", ms=3, color=hue, alpha=0.9, label=label)
            elif kind == "faint":
                ax.plot(steps, ys, style, color=hue, alpha=0.18, lw=0.7)
            else:
                ax.plot(steps, ys, style, color=hue, lw=1.3, label=label)
    if name == "learning rate" or wide_range([v for *_, v in series]):
        if all((v > 0).all() for *_, v in series):
            ax.set_yscale("log")
    ax.set_title(panel_title(name, keys), fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, frameon=False)

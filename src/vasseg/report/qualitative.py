"""Qualitative figures (Figs. 5-6): 2-D slices with contours and 3-D surface renderings.

Each group's representative seed (the median of its seeds' mean Dice) predicts the chosen cases with the checkpoint the tables used (sliding
window, as in evaluation). Slices show the ground truth dashed and the prediction solid, one
colour per class; 3-D views are marching-cubes surfaces drawn with matplotlib (headless).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vasseg.report.collect import Group, RunRecord, run_checkpoint
from vasseg.rundir import RunDir
from vasseg.report.style import GT_COLOR, class_color, figure, save
from vasseg.errors import PathNotFound

log = logging.getLogger(__name__)

MARGIN = 0.15  # of the structure's extent, around the zoomed slice
MAX_MESH_SIDE = 80  # marching cubes step so that a side has at most ~this many cells
SMOOTH_SIGMA = 0.7  # voxels: display-only smoothing of the mask before marching cubes


@dataclass
class CaseView:
    """One case: the image on the label grid, its reference and each group's prediction."""

    case_id: str
    image: np.ndarray
    ref: np.ndarray
    spacing: tuple[float, ...]
    preds: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- predictions


def checkpoint_target(run: RunRecord) -> tuple[Path, str]:
    """``(target, which)`` for :func:`vasseg.inference.open.open_model`: the evaluated checkpoint."""
    checkpoint = run_checkpoint(run)
    if checkpoint in ("last", "best"):
        return run.run_dir, checkpoint
    path = RunDir(run.run_dir).named_checkpoint(checkpoint)
    if not path.is_file():
        raise PathNotFound(f"{path}: the checkpoint the evaluation used is gone (pruned?)")
    return path, "last"


def _overrides(data_root: str | None) -> tuple[str, ...]:
    return (f"data.root={data_root}",) if data_root else ()


def image_on_label_grid(image: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """The case image resampled (trilinear) to the reference label's grid, as numpy."""
    vol = image[0].float().cpu()
    if tuple(vol.shape) != tuple(shape):
        vol = F.interpolate(vol[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]
    return vol.numpy()


def load_trained(run: RunRecord, device: torch.device, data_root: str | None = None):  # noqa: ANN201
    """The run's method with the evaluated checkpoint's weights (a ``LoadedRun``)."""
    from vasseg.inference.open import open_model

    target, which = checkpoint_target(run)
    return open_model(target, which, device, _overrides(data_root))


def predict_views(groups: list[Group], ids: list[str], device: torch.device,
                  data_root: str | None = None) -> list[CaseView]:
    """Reference and each group's prediction (its representative seed) of the cases ``ids``."""
    from vasseg.config import load_config
    from vasseg.data.setup import load_cases
    from vasseg.inferer.inferer import Inferer

    first = groups[0].runs[0]
    exp = load_config(RunDir(first.run_dir).config, _overrides(data_root))
    cases = load_cases(exp, ids, progress=False)
    views = []
    for case in cases:
        ref, spacing = Inferer(exp, device).reference(case)
        views.append(CaseView(case.id, image_on_label_grid(case.image, ref.shape), ref, spacing))
    unique = len({g.label for g in groups}) == len(groups)
    for g in groups:
        name = g.label if unique else f"{g.label} · {g.labeled} labeled"
        loaded = load_trained(g.representative, device, data_root)
        inferer = Inferer(loaded.exp, device)
        for case, view in zip(cases, views):
            view.preds[name] = inferer.on_grid(inferer.probs(loaded.method, case.image), case)[0]
        del loaded  # one network in memory at a time
    return views


# --------------------------------------------------------------------------- 2-D slices


def best_slice(ref: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most foreground (the middle one if there is none)."""
    other = tuple(a for a in range(ref.ndim) if a != axis)
    area = (ref > 0).sum(axis=other)
    return int(area.argmax()) if area.any() else ref.shape[axis] // 2


def zoom_box(masks: list[np.ndarray], shape: tuple[int, int]) -> tuple[slice, slice]:
    """A square-ish window around the foreground of all 2-D masks, with a margin."""
    union = np.any([m > 0 for m in masks], axis=0)
    if not union.any():
        return slice(0, shape[0]), slice(0, shape[1])
    box = []
    for axis in (0, 1):
        idx = np.nonzero(union.any(axis=1 - axis))[0]
        box.append((idx[0], idx[-1] + 1))
    side = max(hi - lo for lo, hi in box)
    side = int(side * (1 + 2 * MARGIN)) + 4
    out = []
    for (lo, hi), n in zip(box, shape):
        centre = (lo + hi) // 2
        start = int(np.clip(centre - side // 2, 0, max(n - side, 0)))
        out.append(slice(start, min(start + side, n)))
    return out[0], out[1]


def overall_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean Dice over the reference's foreground classes of one 3-D case, in %."""
    scores = []
    for cls in np.unique(ref[ref > 0]):
        p, r = pred == cls, ref == cls
        scores.append(2.0 * np.logical_and(p, r).sum() / max(p.sum() + r.sum(), 1))
    return 100.0 * float(np.mean(scores)) if scores else float("nan")


def _draw_contours(ax, labels: np.ndarray, truth: bool) -> None:  # noqa: ANN001 - matplotlib axes
    """Ground truth: yellow dashed; prediction: solid in the class colour."""
    for cls in np.unique(labels[labels > 0]):
        ax.contour((labels == cls).T.astype(float), levels=[0.5],
                   colors=[GT_COLOR if truth else class_color(int(cls))],
                   linewidths=1.4 if truth else 1.5, linestyles="--" if truth else "-")


def _show(ax, image: np.ndarray) -> None:  # noqa: ANN001 - matplotlib axes
    lo, hi = np.percentile(image, (1, 99))
    ax.imshow(image.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def slices_figure(views: list[CaseView], path: Path, axis: int = 2, names: list[str] | None = None) -> Path:
    """Rows: cases; columns: ground truth, then each method (GT dashed, prediction solid)."""
    methods = list(views[0].preds)
    fig = figure(2.6 * (1 + len(methods)), 2.8 * len(views))
    for row, view in enumerate(views):
        k = best_slice(view.ref, axis)
        take = lambda vol: np.take(vol, k, axis=axis)  # noqa: E731
        crop = zoom_box([take(view.ref), *(take(p) for p in view.preds.values())], take(view.ref).shape)
        panels = [("ground truth", None), *((n, view.preds[n]) for n in methods)]
        for col, (name, pred) in enumerate(panels):
            ax = fig.add_subplot(len(views), len(panels), row * len(panels) + col + 1)
            _show(ax, take(view.image)[crop])
            ref2 = take(view.ref)[crop]
            if pred is None:
                _fill(ax, ref2)
                title = f"{view.case_id}, slice {k}\nground truth"
            else:
                _draw_contours(ax, take(pred)[crop], truth=False)
                title = f"{name}\nDice {overall_dice(pred, view.ref):.1f} % (3-D)"
            _draw_contours(ax, ref2, truth=True)
            ax.set_title(title, fontsize=8)
    fig.tight_layout(h_pad=3.0)  # room between rows: each title belongs to the panel below it
    classes = sorted({int(c) for v in views for c in np.unique(v.ref) if c})
    _contour_legend(fig, classes, names or [])
    return save(fig, path)


def _contour_legend(fig, classes: list[int], names: list[str]) -> None:  # noqa: ANN001 - matplotlib figure
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=GT_COLOR, ls="--", lw=1.4, label="ground truth")]
    handles += [Line2D([], [], color=class_color(c), lw=1.5, label=f"prediction: {names[c] if c < len(names) else f'class {c}'}") for c in classes]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles),
               frameon=False, fontsize=8)


def _fill(ax, labels: np.ndarray) -> None:  # noqa: ANN001 - matplotlib axes
    """Translucent class colours over the image (the ground-truth column)."""
    from matplotlib.colors import ListedColormap

    for cls in np.unique(labels[labels > 0]):
        layer = np.ma.masked_where(labels.T != cls, np.ones(labels.T.shape))
        ax.imshow(layer, cmap=ListedColormap([class_color(int(cls))]), alpha=0.35, origin="lower",
                  interpolation="nearest")


# --------------------------------------------------------------------------- 3-D surfaces


def bounding_box(masks: list[np.ndarray]) -> tuple[slice, ...]:
    """The box around the foreground of all masks, one voxel of margin."""
    union = np.any([m > 0 for m in masks], axis=0)
    if not union.any():
        return tuple(slice(0, n) for n in union.shape)
    box = []
    for axis in range(union.ndim):
        idx = np.nonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))[0]
        box.append(slice(max(idx[0] - 1, 0), min(idx[-1] + 2, union.shape[axis])))
    return tuple(box)


def surface(mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """Marching-cubes vertices (mm) and faces of a binary mask, coarser for big masks."""
    from skimage.measure import marching_cubes

    if mask.sum() == 0:
        return None
    from scipy.ndimage import gaussian_filter

    binary = np.pad(mask.astype(np.float32), 2)  # closed surfaces where the mask meets the box
    # Display only: voxel staircases hide the shape; sigma < 1 voxel keeps thin parts. A structure
    # of a few voxels smooths to below the 0.5 level everywhere: draw it unsmoothed instead.
    smoothed = gaussian_filter(binary, SMOOTH_SIGMA)
    padded = smoothed if smoothed.max() > 0.5 else binary
    step = max(1, int(round(max(mask.shape) / MAX_MESH_SIDE)))
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(spacing), step_size=step)
    return verts - 2 * np.asarray(spacing), faces


def light_direction(elev: float, azim: float) -> np.ndarray:
    """A head-light: from the camera (matplotlib's elev/azim), raised and turned a little."""
    e, a = np.radians(elev + 20), np.radians(azim - 25)
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


def shaded_colors(triangles: np.ndarray, rgb: str, light: np.ndarray) -> np.ndarray:
    """Per-face RGB: ambient + Lambert + a small highlight, so curvature reads in a still image."""
    from matplotlib.colors import to_rgb

    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    lambert = np.abs(normals @ light)[:, None]  # abs: the orientation of the faces does not matter
    return np.clip(np.asarray(to_rgb(rgb)) * (0.3 + 0.7 * lambert) + 0.3 * lambert**12, 0, 1)


VIEW = (25.0, -60.0)  # elevation, azimuth of the 3-D views
MULTI_CLASS_ALPHA = 0.45  # surface opacity in panels with several classes


def _draw_surface(ax, labels: np.ndarray, spacing: tuple[float, ...]) -> bool:  # noqa: ANN001
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    drawn = False
    classes = np.unique(labels[labels > 0])
    # Several classes: translucent, so that a structure (or a false positive) wrapped around
    # others does not hide them; one class: opaque, its shape reads best.
    alpha = 1.0 if len(classes) == 1 else MULTI_CLASS_ALPHA
    for cls in classes:
        mesh = surface(labels == cls, spacing)
        if mesh is None:
            continue
        verts, faces = mesh
        triangles = verts[faces]
        colors = shaded_colors(triangles, class_color(int(cls)), light_direction(*VIEW))
        rgba = np.concatenate([colors, np.full((len(colors), 1), alpha)], axis=1)
        # Opaque meshes get edges in the face colour (no hairline gaps); translucent ones none
        # (an edge would be drawn over its two faces and show as a darker net).
        edges = rgba if alpha == 1.0 else "none"
        ax.add_collection3d(Poly3DCollection(triangles, facecolors=rgba, edgecolors=edges, linewidths=0.1))
        drawn = True
    return drawn


def render_figure(views: list[CaseView], path: Path) -> Path:
    """Rows: cases; columns: ground truth, then each method; one surface colour per class."""
    names = list(views[0].preds)
    fig = figure(2.8 * (1 + len(names)), 2.9 * len(views))
    for row, view in enumerate(views):
        box = bounding_box([view.ref, *view.preds.values()])
        extent = [(s.stop - s.start) * sp for s, sp in zip(box, view.spacing)]
        panels = [("ground truth", view.ref), *((n, view.preds[n]) for n in names)]
        for col, (name, labels) in enumerate(panels):
            ax = fig.add_subplot(len(views), len(panels), row * len(panels) + col + 1, projection="3d")
            if not _draw_surface(ax, labels[box], view.spacing):
                ax.text2D(0.5, 0.5, "empty", ha="center", transform=ax.transAxes)
            for setter, size in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), extent):
                setter(0, size)
            ax.set_box_aspect(extent)
            ax.view_init(elev=VIEW[0], azim=VIEW[1])
            ax.set_axis_off()
            dice = "" if col == 0 else f"\nDice {overall_dice(labels, view.ref):.1f} %"
            ax.set_title(f"{view.case_id}: {name}{dice}" if col == 0 else f"{name}{dice}", fontsize=8)
    fig.tight_layout()
    return save(fig, path)

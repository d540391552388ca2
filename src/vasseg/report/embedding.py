"""2-D embeddings (t-SNE, or UMAP where installed) of sampled voxel features, their figures and
the numbers that summarise them (Fig. 7 and the Table III alignment view).

Numbers, per sample: the silhouette of the classes in feature space (higher: classes better
separated) and the labeled-unlabeled centroid gap (per class, the distance between the centroid
of its labeled and of its unlabeled voxels over the class's RMS spread, averaged over classes;
lower: the unlabeled features follow the labeled ones, what VAS's discriminator aims for).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from vasseg.report.features import FeatureSample
from vasseg.report.style import class_color, figure, save
from vasseg.errors import ConfigError

log = logging.getLogger(__name__)

MAX_SILHOUETTE = 2000  # points used for the silhouette (it is quadratic in the count)


def standardize(features: np.ndarray) -> np.ndarray:
    """Centre, scale by the overall std, then PCA to 50 dims when wider (t-SNE practice)."""
    x = features - features.mean(0)
    x = x / (x.std() + 1e-12)
    if x.shape[1] > 50:
        from sklearn.decomposition import PCA

        x = PCA(n_components=50, random_state=0).fit_transform(x)
    return x.astype(np.float32)


def embedding_name(kind: str) -> str:
    """``auto`` resolves to ``umap`` when umap-learn imports, else ``tsne``."""
    if kind != "auto":
        if kind not in ("tsne", "umap"):
            raise ConfigError(f"--embedding {kind!r}: choose auto, tsne or umap")
        return kind
    try:
        import umap  # noqa: F401
    except ImportError:
        return "tsne"
    return "umap"


def embed(features: np.ndarray, kind: str = "auto", seed: int = 0) -> np.ndarray:
    """``(N, 2)`` coordinates of the standardised features."""
    x = standardize(features)
    if embedding_name(kind) == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class FeatureScores:
    points: int
    silhouette: float
    centroid_gap: float


def feature_scores(sample: FeatureSample) -> FeatureScores:
    """Silhouette by class and the normalised labeled-unlabeled centroid gap (module docstring)."""
    from sklearn.metrics import silhouette_score

    x = standardize(sample.features)
    sil = math.nan
    if len(np.unique(sample.cls)) > 1:
        size = min(MAX_SILHOUETTE, len(x))
        sil = float(silhouette_score(x, sample.cls, sample_size=size, random_state=0))
    return FeatureScores(len(x), sil, centroid_gap(x, sample.cls, sample.labeled))


def centroid_gap(x: np.ndarray, cls: np.ndarray, labeled: np.ndarray) -> float:
    """Mean over classes of |labeled centroid - unlabeled centroid| / class RMS spread.

    ``x`` (N, C) features, ``cls`` (N,) class ids, ``labeled`` (N,) bool; NaN if no class has both.
    """
    gaps = []
    for c in np.unique(cls):
        lab, unl = x[(cls == c) & labeled], x[(cls == c) & ~labeled]
        if len(lab) and len(unl):
            spread = np.sqrt(((x[cls == c] - x[cls == c].mean(0)) ** 2).sum(1).mean()) + 1e-12
            gaps.append(float(np.linalg.norm(lab.mean(0) - unl.mean(0)) / spread))
    return float(np.mean(gaps)) if gaps else math.nan


def format_score(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


# --------------------------------------------------------------------------- figures

MARKERS = {True: ("^", "labeled"), False: ("o", "unlabeled")}


def _face(cls: int) -> str:
    return "#9a9a9a" if cls == 0 else class_color(int(cls))  # background grey


def scatter(ax, coords: np.ndarray, sample: FeatureSample,  # noqa: ANN001 - matplotlib axes
            streams: tuple[bool, ...] = (True, False)) -> None:
    """Points coloured by class, triangles for labeled and circles for unlabeled voxels."""
    for stream in streams:
        for c in np.unique(sample.cls):
            sel = (sample.cls == c) & (sample.labeled == stream)
            if sel.any():
                ax.scatter(coords[sel, 0], coords[sel, 1], s=11, marker=MARKERS[stream][0], c=_face(c),
                           alpha=0.6, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])


def shared_legend(fig, classes: list[int], class_names: list[str], fontsize: int = 8) -> None:  # noqa: ANN001
    """One legend above the panels: a column per class, labeled on top, unlabeled below."""
    from matplotlib.lines import Line2D

    handles = []
    for c in classes:
        name = class_names[c] if c < len(class_names) else f"class {c}"
        handles += [Line2D([], [], marker=MARKERS[s][0], ls="", color=_face(c), markersize=6,
                           label=f"{name}, {MARKERS[s][1]}") for s in (True, False)]
    # Legends fill column by column: (labeled, unlabeled) pairs make one column per class.
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(classes),
               frameon=False, fontsize=fontsize)


def side_by_side(panels: list[tuple[str, FeatureSample, np.ndarray]], class_names: list[str],
                 path, embedding: str):  # noqa: ANN001, ANN201 - path in, path out
    """Fig. 7: one panel per run (baseline first), with its numbers in the title."""
    fig = figure(4.6 * len(panels), 4.6)
    for i, (title, sample, coords) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        scatter(ax, coords, sample)
        s = feature_scores(sample)
        ax.set_title(f"{title}\n{embedding}, layer {sample.layer}: silhouette {format_score(s.silhouette)}, "
                     f"L-U gap {format_score(s.centroid_gap)}", fontsize=8)
    fig.tight_layout()
    shared_legend(fig, sorted({int(c) for _, s, _ in panels for c in np.unique(s.cls)}), class_names)
    return save(fig, path)


def over_steps(rows: list[tuple[str, list[tuple[int, FeatureSample, np.ndarray]]]], class_names: list[str],
               path, embedding: str):  # noqa: ANN001, ANN201 - path in, path out
    """Table III view: a row per run, per step a labeled and an unlabeled panel (same embedding)."""
    cols = max(2 * len(steps) for _, steps in rows)
    fig = figure(1.9 * cols, 2.2 * len(rows) + 0.3)
    for r, (name, steps) in enumerate(rows):
        for s, (step, sample, coords) in enumerate(steps):
            score, lim = feature_scores(sample), _limits(coords)
            for k, stream in enumerate((True, False)):
                ax = fig.add_subplot(len(rows), cols, r * cols + 2 * s + k + 1)
                scatter(ax, coords, sample, (stream,))
                if not (sample.labeled == stream).any():
                    ax.text(0.5, 0.5, f"no {MARKERS[stream][1]} volumes", ha="center", va="center",
                            fontsize=7, color="#777", transform=ax.transAxes)
                ax.set_xlim(*lim[0])
                ax.set_ylim(*lim[1])
                ax.set_title(f"step {step} · {MARKERS[stream][1]}", fontsize=7)
                ax.set_xlabel(f"silhouette {format_score(score.silhouette)}" if k == 0 else
                              f"L-U gap {format_score(score.centroid_gap)}", fontsize=7)
                if s == 0 and k == 0:
                    ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    classes = sorted({int(c) for _, steps in rows for _, s, _ in steps for c in np.unique(s.cls)})
    shared_legend(fig, classes, class_names, fontsize=7)
    return save(fig, path)


def _limits(coords: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """The same axis limits for the labeled and unlabeled panel of one step."""
    lo, hi = coords.min(0), coords.max(0)
    pad = (hi - lo) * 0.05 + 1e-6
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])

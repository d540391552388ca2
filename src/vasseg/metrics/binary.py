"""Segmentation metrics as the semi-supervised LA lineage computes them with medpy, without medpy.

All functions are pure functions of ``(pred, ref, spacing)``. Masks are numpy arrays of any
dimension >= 1 (3-D volumes in practice), boolean or 0/1 integers, of one shape. ``spacing`` is
the voxel size per axis (e.g. ``(0.625, 0.625, 2.5)`` mm); distances are in voxels when it is
``None`` and in its unit otherwise.

Definitions (identical to ``medpy.metric.binary`` with ``connectivity=1`` on non-empty masks):

* ``dice`` = 2|P ∩ R| / (|P| + |R|), ``jaccard`` = |P ∩ R| / |P ∪ R|.
* ``hd`` = max of all surface distances in both directions (Hausdorff distance).
* ``hd95`` = 95th percentile (numpy's linear interpolation) of the *pooled* directed surface
  distances P->R and R->P (medpy's definition; MONAI instead takes the max of two percentiles).
* ``asd`` = mean directed surface distance P->R. The lineage's tables report this number in the
  column the papers call "ASSD".
* ``assd`` = mean of the *pooled* directed surface distances P->R and R->P, i.e. every surface
  voxel of both masks weighs the same (Heimann et al. 2009; medpy >= 0.5 ``assd``). Note: medpy
  < 0.5 averaged the two directed means, ``(asd(P, R) + asd(R, P)) / 2``, which differs whenever
  the two surfaces have different voxel counts (medpy issue #108).

Surface voxels, cropping and the distance transform live in :mod:`vasseg.surface`.

Empty-mask rule
---------------
A metric is undefined when a mask is empty; tools disagree about what to do (the lineage's
evaluation scores an empty prediction 0 for *every* metric, which makes a missed structure look
like a perfect HD95/ASSD; medpy raises; MONAI returns NaN). vasseg uses one explicit rule,
reported per case through ``CaseMetrics.status``:

* ``"ok"``: both masks non-empty; every metric as defined above.
* ``"empty_pred"`` (prediction empty, reference not) and ``"empty_ref"`` (reference empty,
  prediction not): Dice = Jaccard = 0 (no overlap is the true value), and every distance
  (HD95, ASD, ASSD) is NaN with ``empty_distance="nan"`` (the default) or, with
  ``empty_distance="diagonal"``, the length of the image diagonal ``sqrt(sum((n_i * s_i)**2))``
  in the spacing's unit: an upper bound on any distance inside the image, i.e. the worst score,
  never a flattering one.
* ``"both_empty"``: every metric NaN, whatever ``empty_distance`` says (nothing to segment, so
  nothing to score); callers exclude such cases from means and report how many there were.

NaN never hides in a mean: :func:`vasseg.metrics.table.summarize` skips NaN and counts it, and
:func:`~vasseg.metrics.table.format_mean_std` prints the count next to the number. The stand-alone ``dice`` and
``jaccard`` return NaN when both masks are empty (medpy returns 1.0 there), and ``hd``, ``hd95``,
``asd`` and ``assd`` follow the same rule as :func:`binary_metrics` via their ``empty_distance``
argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vasseg.surface import check_pair, check_spacing, surface_distances

__all__ = [
    "EMPTY_DISTANCE_RULES",
    "STATUSES",
    "CaseMetrics",
    "MaskPair",
    "asd",
    "assd",
    "binary_metrics",
    "dice",
    "hd",
    "hd95",
    "jaccard",
    "per_class_metrics",
    "surface_distances",
]

EmptyDistance = Literal["nan", "diagonal"]
Status = Literal["ok", "empty_pred", "empty_ref", "both_empty"]
EMPTY_DISTANCE_RULES: tuple[str, ...] = ("nan", "diagonal")
STATUSES: tuple[str, ...] = ("ok", "empty_pred", "empty_ref", "both_empty")
NAN = float("nan")


# --------------------------------------------------------------------------- overlap metrics


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two binary masks of one shape (any ndim); in [0, 1].

    Equals ``medpy.metric.binary.dc``; NaN when both masks are empty (medpy: 1.0).
    """
    pred_mask, ref_mask = check_pair(pred, ref)
    total = int(np.count_nonzero(pred_mask)) + int(np.count_nonzero(ref_mask))
    if total == 0:
        return NAN
    return 2.0 * int(np.count_nonzero(pred_mask & ref_mask)) / float(total)


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index (IoU) of two binary masks of one shape (any ndim); in [0, 1].

    Equals ``medpy.metric.binary.jc``; NaN when both masks are empty (medpy: 1.0).
    """
    pred_mask, ref_mask = check_pair(pred, ref)
    union = int(np.count_nonzero(pred_mask | ref_mask))
    if union == 0:
        return NAN
    return float(np.count_nonzero(pred_mask & ref_mask)) / float(union)


# --------------------------------------------------------------------------- distance metrics


def _status(pred_mask: np.ndarray, ref_mask: np.ndarray) -> Status:
    """Which case of the empty-mask rule a validated pair falls in."""
    has_pred, has_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if has_pred and has_ref:
        return "ok"
    if has_ref:
        return "empty_pred"
    if has_pred:
        return "empty_ref"
    return "both_empty"


def _check_empty_distance(empty_distance: str) -> None:
    """Refuse an unknown empty-distance rule."""
    if empty_distance not in EMPTY_DISTANCE_RULES:
        raise ValueError(
            f"empty_distance must be one of {EMPTY_DISTANCE_RULES}, got {empty_distance!r}"
        )


def _empty_distance_value(
    shape: tuple[int, ...],
    spacing: tuple[float, ...] | None,
    status: Status,
    empty_distance: EmptyDistance,
) -> float:
    """Distance reported for a pair with an empty mask, per the module's empty-mask rule."""
    _check_empty_distance(empty_distance)
    if status == "both_empty" or empty_distance == "nan":
        return NAN
    sizes = spacing if spacing is not None else (1.0,) * len(shape)
    # Physical extent of the image: no distance between two of its voxels can exceed it.
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sizes)))


def _distances_or_empty(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None,
    empty_distance: EmptyDistance,
) -> tuple[np.ndarray, np.ndarray] | float:
    """Both directed distance sets, or the rule's scalar when a mask is empty."""
    pred_mask, ref_mask = check_pair(pred, ref)
    sampling = check_spacing(spacing, pred_mask.ndim)
    status = _status(pred_mask, ref_mask)
    if status != "ok":
        return _empty_distance_value(pred_mask.shape, sampling, status, empty_distance)
    return surface_distances(pred_mask, ref_mask, sampling)


def _hd95(d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray) -> float:
    """95th percentile of the pooled directed distances (medpy's hd95)."""
    return float(np.percentile(np.concatenate((d_pred_to_ref, d_ref_to_pred)), 95))


def _assd(d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray) -> float:
    """Mean of the pooled directed distances (medpy >= 0.5 assd; not the mean of two means)."""
    return float(np.concatenate((d_pred_to_ref, d_ref_to_pred)).mean())


def hd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    empty_distance: EmptyDistance = "nan",
) -> float:
    """Hausdorff distance (maximum surface distance, both directions) = medpy ``binary.hd``.

    ``pred``, ``ref``: binary masks of one shape; ``spacing``: voxel size per axis or ``None``.
    Returns voxels or the unit of ``spacing``; empty masks follow the module's empty-mask rule.
    """
    result = _distances_or_empty(pred, ref, spacing, empty_distance)
    if isinstance(result, float):
        return result
    return float(max(result[0].max(), result[1].max()))


def hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    empty_distance: EmptyDistance = "nan",
) -> float:
    """95th-percentile Hausdorff distance of pooled surface distances = medpy ``binary.hd95``.

    ``pred``, ``ref``: binary masks of one shape; ``spacing``: voxel size per axis or ``None``.
    Returns voxels or the unit of ``spacing``; empty masks follow the module's empty-mask rule.
    """
    result = _distances_or_empty(pred, ref, spacing, empty_distance)
    return result if isinstance(result, float) else _hd95(*result)


def asd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    empty_distance: EmptyDistance = "nan",
) -> float:
    """Directed average surface distance pred->ref = medpy ``binary.asd(pred, ref)``.

    This is the number the lineage's tables report under "ASSD". ``pred``, ``ref``: binary masks
    of one shape; ``spacing``: voxel size per axis or ``None``. Returns voxels or the unit of
    ``spacing``; empty masks follow the module's empty-mask rule.
    """
    result = _distances_or_empty(pred, ref, spacing, empty_distance)
    return result if isinstance(result, float) else float(result[0].mean())


def assd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    empty_distance: EmptyDistance = "nan",
) -> float:
    """Average symmetric surface distance over both surfaces pooled = medpy 0.5 ``binary.assd``.

    ``pred``, ``ref``: binary masks of one shape; ``spacing``: voxel size per axis or ``None``.
    Returns voxels or the unit of ``spacing``; empty masks follow the module's empty-mask rule.
    """
    result = _distances_or_empty(pred, ref, spacing, empty_distance)
    return result if isinstance(result, float) else _assd(*result)


# --------------------------------------------------------------------------- per case


@dataclass(frozen=True)
class CaseMetrics:
    """All metrics of one case (one binary structure). Distances in voxels or spacing units.

    ``status`` is one of :data:`STATUSES`; see the module docstring for the empty-mask rule.
    """

    dice: float
    jaccard: float
    hd95: float
    asd: float
    assd: float
    status: Status


def binary_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    empty_distance: EmptyDistance = "nan",
) -> CaseMetrics:
    """Dice, Jaccard, HD95, ASD and ASSD of one binary pair, surfaces computed once.

    Args:
        pred: binary mask (bool or 0/1 integers), any shape with ndim >= 1.
        ref: binary mask of the same shape.
        spacing: voxel size per axis (length ndim, positive) or ``None`` for voxel units.
        empty_distance: ``"nan"`` or ``"diagonal"``, the distance reported when exactly one mask
            is empty (module docstring).

    Returns:
        A :class:`CaseMetrics`; distances in voxels or the unit of ``spacing``.
    """
    pair = MaskPair(pred, ref, spacing, empty_distance)
    return CaseMetrics(pair_dice(pair), pair_jaccard(pair), pair_hd95(pair), pair_asd(pair), pair_assd(pair),
                       pair.status)


class MaskPair:
    """One binary pair as every metric sees it: validated masks ``pred`` and ``ref`` (bool, one
    shape), ``spacing`` (None: voxel units), the empty-mask ``status`` and, computed once when a
    metric first asks, the directed surface distances."""

    def __init__(self, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
                 empty_distance: EmptyDistance = "nan") -> None:
        self.pred, self.ref = check_pair(pred, ref)
        self.spacing = check_spacing(spacing, self.pred.ndim)
        # Validated even when unused so that a typo fails on the first case, not the first empty one.
        _check_empty_distance(empty_distance)
        self.empty_distance = empty_distance
        self.status: Status = _status(self.pred, self.ref)
        self._distances: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def distances(self) -> tuple[np.ndarray, np.ndarray]:
        """Surface distances pred -> ref and ref -> pred (both masks non-empty)."""
        if self._distances is None:
            self._distances = surface_distances(self.pred, self.ref, self.spacing)
        return self._distances

    def distance(self, fn: Callable[[np.ndarray, np.ndarray], float]) -> float:
        """``fn(pred -> ref, ref -> pred)`` of the surface distances; the empty-mask rule's value
        (module docstring) when a mask is empty."""
        if self.status != "ok":
            return _empty_distance_value(self.pred.shape, self.spacing, self.status, self.empty_distance)
        return fn(*self.distances)


# The built-in metrics of the table (vasseg.metrics.table) as functions of a pair.
def pair_dice(pair: MaskPair) -> float:
    return dice(pair.pred, pair.ref)


def pair_jaccard(pair: MaskPair) -> float:
    return jaccard(pair.pred, pair.ref)


def pair_hd95(pair: MaskPair) -> float:
    return pair.distance(_hd95)


def pair_asd(pair: MaskPair) -> float:
    return pair.distance(lambda to_ref, _: float(to_ref.mean()))


def pair_assd(pair: MaskPair) -> float:
    return pair.distance(_assd)


def per_class_metrics(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float] | None = None,
    empty_distance: EmptyDistance = "nan",
) -> dict[int, CaseMetrics]:
    """One :func:`binary_metrics` evaluation per class id of two integer label maps.

    Args:
        pred_labels: integer label map, any shape with ndim >= 1.
        ref_labels: integer label map of the same shape.
        classes: class ids to evaluate (exclude background yourself, e.g. ``[1, 2]``).
        spacing, empty_distance: as in :func:`binary_metrics`.

    Returns:
        ``{class_id: CaseMetrics}`` in the order of ``classes``.
    """
    pred_arr, ref_arr = check_label_maps(pred_labels, ref_labels)
    return {
        int(c): binary_metrics(pred_arr == c, ref_arr == c, spacing, empty_distance)
        for c in classes
    }


def check_label_maps(pred_labels: np.ndarray, ref_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two integer (or bool) label maps of one shape, as arrays; ValueError naming the bad one."""
    pred_arr, ref_arr = np.asarray(pred_labels), np.asarray(ref_labels)
    for name, arr in (("pred_labels", pred_arr), ("ref_labels", ref_arr)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    if pred_arr.shape != ref_arr.shape:
        raise ValueError(
            f"pred_labels and ref_labels must have the same shape, got pred_labels "
            f"{pred_arr.shape} and ref_labels {ref_arr.shape}"
        )
    return pred_arr, ref_arr

"""The one Inferer: a network's class probabilities of a volume, and the grid they are scored on.

An :class:`Inferer` is built from an experiment's evaluation settings (``eval_patch``,
``eval.stride``, ``eval.batch_size``) and the inference options (windows, precision, flip
test-time augmentation, channels-last). The trainer's validation, ``vasseg evaluate``, ``vasseg
predict``, the report and :class:`vasseg.Model` all go through it.

Grids. A case is scored on the ``native`` grid (the file's original grid; the probabilities are
resized to it) or on the ``model`` grid (the volume the network ran on). The dataset format says
which grids a case is scored on and what its native reference is (:mod:`vasseg.data.format`);
``eval.native_resolution`` picks the primary one. :meth:`Inferer.on_grid` is the one place that
picks a grid's prediction and reference.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vasseg.config import Experiment
from vasseg.data.format import get_format
from vasseg.data.volumes import Case, resized_argmax
from vasseg.errors import DataError
from vasseg.inferer.precision import resolve_precision
from vasseg.inferer.sliding import Predictor
from vasseg.inferer.windows import EVALUATE_DEFAULT, Windows, describe_inference, infer_probs
from vasseg.methods.base import Method

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))  # dims of (B, C, X, Y, Z)
GridMaps = tuple[np.ndarray, np.ndarray, tuple[float, ...]]  # prediction, reference, spacing (mm)


def flip_tta(predict: Predictor) -> Predictor:
    """``predict`` averaged over the flips of :data:`TTA_FLIPS` (the x-y plane's), each flipped back."""

    def averaged(windows: Tensor) -> Tensor:
        total = None
        for dims in TTA_FLIPS:
            probs = predict(windows.flip(dims)).flip(dims) if dims else predict(windows)
            total = probs if total is None else total + probs
        return total / len(TTA_FLIPS)

    return averaged


def scoring_grids(exp: Experiment) -> tuple[str, ...]:
    """Grids every case is scored on, the primary (``eval.native_resolution``) first."""
    primary = "native" if exp.eval.native_resolution else "model"
    return get_format(exp).scoring_grids(primary)


@dataclass(frozen=True)
class Inferer:
    """How the probabilities of a volume are computed (default: the paper protocol, ``eval.stride``
    windows in fp32).

    Attributes:
        exp: the experiment whose ``eval_patch`` / ``eval.stride`` / ``eval.batch_size`` apply.
        device: where the forward passes run.
        windows: how the volume is covered (:class:`~vasseg.inferer.windows.Windows`).
        precision: ``auto``, ``fp32`` or ``bf16`` (:mod:`vasseg.inferer.precision`).
        tta: average over the 4 flips of the x-y plane (4x the compute).
        channels_last: feed the network channels-last 3-D tensors (a loaded model's layout).
    """

    exp: Experiment
    device: torch.device
    windows: Windows = EVALUATE_DEFAULT
    precision: str = "fp32"
    tta: bool = False
    channels_last: bool = False

    @functools.cached_property
    def dtype(self) -> torch.dtype:
        return resolve_precision(self.precision, self.device)  # refuses an unknown name

    def replace(self, **changes: object) -> Inferer:
        """This Inferer with some settings changed (``None`` values keep the current ones)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        """``windows ...; precision ...``: how probabilities are computed, for logs and summaries."""
        return describe_inference(self.windows, self.exp.eval.stride, self.precision, self.device)

    @torch.no_grad()
    def probs(self, method: Method, image: Tensor) -> Tensor:
        """Class probabilities ``(K, X, Y, Z)`` float32 of ``image`` ``(C, X, Y, Z)`` (the model grid)."""
        predict = flip_tta(method.predict) if self.tta else method.predict
        exp = self.exp
        return infer_probs(predict, image, exp.eval_patch, self.windows, exp.eval.stride, exp.data.num_classes,
                           batch_size=exp.eval.batch_size, device=self.device, dtype=self.dtype,
                           filters=exp.model.filters, channels_last=self.channels_last)

    # -- grids -----------------------------------------------------------------------------

    @property
    def grids(self) -> tuple[str, ...]:
        """Grids a case is scored on, the primary first (:func:`scoring_grids`)."""
        return scoring_grids(self.exp)

    def reference(self, case: Case, grid: str | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
        """The label of ``case`` on ``grid`` (default: the primary) and its spacing in mm.

        ``native`` falls back to the model grid when the case was never resampled (they coincide).
        """
        if (grid or self.grids[0]) == "native":
            ref = get_format(self.exp).native_reference(case)
            if ref is not None:
                return ref, tuple(case.native_spacing or case.spacing)
        if case.label is None:
            raise DataError(f"{case.where}: no label to evaluate against")
        return case.label.cpu().numpy(), tuple(case.spacing)

    def on_grid(self, probs: Tensor, case: Case, grid: str | None = None) -> GridMaps:
        """(prediction, reference, spacing in mm) of ``case`` on ``grid`` (default: the primary)."""
        ref, spacing = self.reference(case, grid)
        return resized_argmax(probs, ref.shape).cpu().numpy(), ref, spacing

    def grid_maps(self, method: Method, case: Case) -> list[GridMaps]:
        """:meth:`on_grid` of ``case`` for every grid of :attr:`grids` (the probabilities computed once)."""
        probs = self.probs(method, case.image)
        return [self.on_grid(probs, case, grid) for grid in self.grids]

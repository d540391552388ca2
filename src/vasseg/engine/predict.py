"""Segmenting one volume with a trained network: preprocessing, sliding window, back to the input grid.

What the network was trained on is a *preprocessing record*, a plain mapping (stored as is in
exported model files, :mod:`vasseg.export`) whose ``kind`` names the dataset format that wrote it
and that turns a new image into the network's input and the probabilities back into a label map
on the image's grid (:mod:`vasseg.data.format`): ``zscore`` for the LA layout (the LA benchmark,
the phantoms; :class:`vasseg.data.la.LAFormat`), ``prepared`` for a ``vasseg prepare`` dataset
(:class:`vasseg.data.prepared.PreparedFormat`).

Optional flip test-time augmentation (:func:`flip_tta`) averages every window's probabilities
over the 4 flips of the x-y plane, the flips the training augmentation covers (4x the compute).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vasseg.config import Experiment
from vasseg.data.format import format_for_record, get_format
from vasseg.engine.inference import Predictor
from vasseg.engine.windows import PREDICT_DEFAULT, Windows, infer_probs
from vasseg.io import Volume
from vasseg.methods.base import Method

log = logging.getLogger(__name__)

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))  # dims of (B, C, X, Y, Z)


def preprocessing_for_run(exp: Experiment, run_dir: str | Path) -> dict[str, Any]:
    """The preprocessing record of a trained run (a prepared run reads its ``prepared.json``)."""
    return get_format(exp).preprocessing(Path(run_dir))


def preprocess(volume: Volume, prep: dict[str, Any]) -> torch.Tensor:
    """The image as the network was trained on it: ``(1, X', Y', Z')`` float32 at training scale."""
    return format_for_record(prep).preprocess(volume, prep)


def flip_tta(predict: Predictor) -> Predictor:
    """``predict`` averaged over the flips of :data:`TTA_FLIPS`, each flipped back."""

    def averaged(windows: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in TTA_FLIPS:
            probs = predict(windows.flip(dims)).flip(dims) if dims else predict(windows)
            total = probs if total is None else total + probs
        return total / len(TTA_FLIPS)

    return averaged


@torch.no_grad()
def model_probs(method: Method, image: torch.Tensor, exp: Experiment, device: torch.device,
                tta: bool = False, windows: Windows = PREDICT_DEFAULT,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class probabilities ``(K, X', Y', Z')`` float32 of ``image`` ``(1, X', Y', Z')``, computed in
    ``dtype`` with ``windows`` (:mod:`vasseg.engine.windows`), channels-last."""
    predict = flip_tta(method.predict) if tta else method.predict
    return infer_probs(predict, image, exp.eval_patch, windows, exp.eval.stride, exp.data.num_classes,
                       batch_size=exp.eval.batch_size, device=device, dtype=dtype, filters=exp.model.filters,
                       channels_last=True)


def label_ids(prep: dict[str, Any], num_classes: int) -> tuple[int, ...]:
    """The value the label map holds for each class channel (a prepared run: the source ids)."""
    return format_for_record(prep).label_ids(prep, num_classes)


def to_input_grid(probs: torch.Tensor, volume: Volume, prep: dict[str, Any],
                  with_probs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-grid probabilities ``(K, X', Y', Z')`` -> the label map ``(X, Y, Z)`` on the input's grid
    and, when asked, the probabilities there ``(K, X, Y, Z)`` float32 (their argmax is the map)."""
    return format_for_record(prep).to_input_grid(probs, volume, prep, with_probs)


def predict_file(target: str | Path, input_path: str | Path, output_path: str | Path,
                 checkpoint: str = "last", device: str = "auto", progress: bool = True) -> Path:
    """Segment one image (NIfTI or LA h5) with a run, checkpoint or model file; write ``output_path``."""
    from vasseg.engine.predict_cases import PredictOptions, predict_paths

    options = PredictOptions(checkpoint=checkpoint, device=device, progress=progress)
    result = predict_paths(target, input_path, output_path, options)
    return result.written[0]

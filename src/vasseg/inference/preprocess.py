"""A trained network's view of a new image: preprocessing in, probabilities back to the input grid.

What the network was trained on is a *preprocessing record*, a plain mapping (stored as is in
exported model files, :mod:`vasseg.modelfile`) whose ``kind`` names the dataset format that wrote it
and that turns a new image into the network's input and the probabilities back into a label map
on the image's grid (:mod:`vasseg.data.format`): ``zscore`` for the LA layout (the LA benchmark,
the phantoms; :class:`vasseg.data.la.LAFormat`), ``prepared`` for a ``vasseg prepare`` dataset
(:class:`vasseg.data.prepared.PreparedFormat`).

The probabilities in between come from the :class:`~vasseg.inferer.inferer.Inferer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vasseg.config import Experiment
from vasseg.data.format import format_for_record, get_format
from vasseg.io import Volume


def preprocessing_for_run(exp: Experiment, run_dir: str | Path) -> dict[str, Any]:
    """The preprocessing record of a trained run (a prepared run reads its ``prepared.json``)."""
    return get_format(exp).preprocessing(Path(run_dir))


def preprocess(volume: Volume, prep: dict[str, Any]) -> torch.Tensor:
    """The image as the network was trained on it: ``(1, X', Y', Z')`` float32 at training scale."""
    return format_for_record(prep).preprocess(volume, prep)


def label_ids(prep: dict[str, Any], num_classes: int) -> tuple[int, ...]:
    """The value the label map holds for each class channel (a prepared run: the source ids)."""
    return format_for_record(prep).label_ids(prep, num_classes)


def to_input_grid(probs: torch.Tensor, volume: Volume, prep: dict[str, Any],
                  with_probs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-grid probabilities ``(K, X', Y', Z')`` -> the label map ``(X, Y, Z)`` on the input's grid
    and, when asked, the probabilities there ``(K, X, Y, Z)`` float32 (their argmax is the map)."""
    return format_for_record(prep).to_input_grid(probs, volume, prep, with_probs)

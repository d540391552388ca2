"""Intensity normalisation applied to every image before the model sees it (``data.intensity``).

The LA release z-scored each MRI over the whole scan and *then* cropped it around the atrium, so
the crops do not have mean 0 / std 1: across the 100 files their means run from 0.05 to 1.94 and
their standard deviations from 0.31 to 1.65. ``"file"`` keeps the values as the files hold them
(what the lineage trains on); ``"zscore"`` re-z-scores each volume over itself, so every crop has
one scale (robust to the spread, and what a user's own scan gets in ``vasseg predict``).
"""

from __future__ import annotations

import numpy as np
import torch
from vasseg.errors import ConfigError

INTENSITY_MODES = ("file", "zscore")


def zscore(image: np.ndarray) -> np.ndarray:
    """``(image - mean) / std`` over the whole volume (std 0: only the mean is removed)."""
    image = image.astype(np.float32, copy=False)
    std = float(image.std())
    return (image - image.mean()) / (std if std > 0 else 1.0)


def normalize_intensity(image: np.ndarray, mode: str) -> np.ndarray:
    """Apply ``data.intensity`` to a ``(X, Y, Z)`` image (intensities without unit)."""
    if mode == "file":
        return image
    if mode == "zscore":
        return zscore(image)
    raise ConfigError(f"data.intensity: {mode!r} is not one of {', '.join(INTENSITY_MODES)}")


def normalize_tensor(image: torch.Tensor, mode: str) -> torch.Tensor:
    """`normalize_intensity` for a CPU tensor of any shape (the volume is one sample)."""
    return torch.from_numpy(np.ascontiguousarray(normalize_intensity(image.numpy(), mode)))

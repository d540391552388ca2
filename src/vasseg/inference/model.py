"""The Python API: load a trained model once, segment arrays, tensors or image files with it.

::

    import vasseg
    model = vasseg.load_model("runs/la_vas_16l_s1337_0a1b2c3d")   # run folder, checkpoint or model file
    labels = model.predict("case.nii.gz")                          # (X, Y, Z) label map, uint8
    probs = model.predict(image_array, probs=True)                 # (K, X, Y, Z) float32

A NumPy array or torch tensor ``(X, Y, Z)`` holds intensities as the training data did (LA: the
MRI, any scale, it is z-scored; a prepared CT run: Hounsfield units in RAS+ axis order; a prepared
MR run: the scan's intensities, normalised inside). A path is
read with :func:`vasseg.io.read_volume` (NIfTI with its affine, or an LA ``.h5``). The result lies
on the input's grid, whatever resolution the network ran at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vasseg.classes import class_names as experiment_class_names
from vasseg.config import Experiment
from vasseg.engine.setup import select_device
from vasseg.errors import DataError
from vasseg.inference.open import open_model
from vasseg.inference.preprocess import label_ids, preprocess, to_input_grid
from vasseg.inferer.inferer import Inferer
from vasseg.inferer.precision import resolve_precision
from vasseg.inferer.windows import PREDICT_DEFAULT, Windows
from vasseg.io import Volume, read_volume
from vasseg.methods.base import Method

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """A label map ``(X, Y, Z)`` on the input's grid and, when asked, the probabilities ``(K, X, Y, Z)``."""

    labels: np.ndarray
    probs: np.ndarray | None = None


@dataclass
class Model:
    """A trained network in eval mode with everything needed to segment a new image.

    Attributes:
        exp: the resolved experiment config the network was trained with.
        method: the registered method holding the network (its ``predict`` gives probabilities).
        device: where inference runs.
        source: the run folder's checkpoint or the model file it was loaded from.
        step: the training step of the weights.
        preprocessing: the preprocessing record (see :mod:`vasseg.inference.preprocess`).
        precision: ``auto`` (bf16 where the device computes it natively), ``fp32`` or ``bf16``.
        windows: how a volume is covered (:class:`~vasseg.inferer.windows.Windows`; default: the
            config's ``eval.stride`` windows, as ``vasseg evaluate``).
    """

    exp: Experiment
    method: Method
    device: torch.device
    source: Path
    step: int
    preprocessing: dict[str, Any]
    precision: str = "auto"
    windows: Windows = PREDICT_DEFAULT

    def __post_init__(self) -> None:
        self.dtype = resolve_precision(self.precision, self.device)  # refuses an unknown name

    @property
    def inferer(self) -> Inferer:
        """How this model computes probabilities (its windows and precision, channels-last)."""
        return Inferer(self.exp, self.device, self.windows, self.precision, channels_last=True)

    def describe_inference(self) -> str:
        """``windows ...; precision ...``: how this model segments, for logs and reports."""
        return self.inferer.describe()

    @property
    def class_names(self) -> tuple[str, ...]:
        """One name per class channel, background first."""
        names = self.preprocessing.get("class_names")
        return tuple(names) if names else experiment_class_names(self.exp)

    @property
    def label_ids(self) -> tuple[int, ...]:
        """The value the label map holds for each class channel (a prepared CT run: source ids)."""
        return label_ids(self.preprocessing, self.exp.data.num_classes)

    def predict(self, x: ArrayLike | str | Path, probs: bool = False, tta: bool = False,
                spacing: tuple[float, float, float] | None = None, precision: str | None = None,
                windows: Windows | None = None) -> np.ndarray:
        """The label map ``(X, Y, Z)`` of ``x``, or with ``probs=True`` its class probabilities
        ``(K, X, Y, Z)`` float32 (summing to 1 per voxel; their argmax is the label map's class).

        Args:
            x: an image array/tensor ``(X, Y, Z)`` or a NIfTI / LA ``.h5`` path.
            probs: return probabilities instead of labels.
            tta: average over the 4 x-y flips (4x slower).
            spacing: voxel size in mm of an array or an ``.h5`` file (default: ``data.spacing``).
            precision: ``auto``, ``fp32`` or ``bf16`` for this call (default: the model's).
            windows: how the volume is covered for this call (default: the model's).
        """
        model = self
        if precision is not None or windows is not None:
            model = replace(self, precision=precision or self.precision, windows=windows or self.windows)
        result = model.predict_volume(model.volume(x, spacing), with_probs=probs, tta=tta)
        return result.probs if probs else result.labels

    def volume(self, x: ArrayLike | str | Path, spacing: tuple[float, float, float] | None = None) -> Volume:
        """``x`` as a :class:`~vasseg.io.Volume` (read from disk when a path)."""
        spacing = tuple(spacing or self.exp.data.spacing)
        if isinstance(x, (str, Path)):
            return read_volume(Path(x), default_spacing=spacing)
        return array_volume(x, spacing)

    def predict_volume(self, volume: Volume, with_probs: bool = False, tta: bool = False,
                       image: torch.Tensor | None = None) -> Prediction:
        """Segment a read volume; ``image`` is its :meth:`preprocess` output when already computed."""
        image = self.preprocess(volume) if image is None else image
        probs = self.inferer.replace(tta=tta).probs(self.method, image)
        labels, native = to_input_grid(probs, volume, self.preprocessing, with_probs)
        return Prediction(labels, native)

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The network's input ``(1, X', Y', Z')`` for ``volume`` (CPU work, thread-safe)."""
        return preprocess(volume, self.preprocessing)


def array_volume(x: ArrayLike, spacing: tuple[float, ...]) -> Volume:
    """A 3-D array or tensor as a volume with the affine ``diag(spacing)``; refuses other shapes and NaN."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]  # (X, Y, Z, 1), as a one-volume 4-D NIfTI holds it
    if 0 in array.shape:
        raise DataError(f"image: empty array (shape {array.shape})")
    if array.ndim != 3:
        raise DataError(f"image: expected a 3-D array (X, Y, Z), (1, X, Y, Z) or (X, Y, Z, 1), got shape "
                         f"{array.shape}")
    if array.dtype.kind not in "biuf" or not np.isfinite(array).all():
        raise DataError("image: expected finite real values")
    triple = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    return Volume(image=array.astype(np.float32), affine=np.diag([*triple, 1.0]), spacing=triple,
                  label=None, header=None, source=Path("<array>"))


def load_model(path: str | Path, checkpoint: str = "last", device: str | torch.device = "auto",
               precision: str = "auto", windows: Windows = PREDICT_DEFAULT) -> Model:
    """Load a run folder, a checkpoint file or an exported model file (``vasseg export``).

    Args:
        path: run folder, ``<run>/checkpoints/*.pt`` or a ``.safetensors`` model file.
        checkpoint: for a run folder, ``last`` (default) or ``best``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto`` (bf16 on CUDA and on CPUs with bf16 instructions, else fp32),
            ``fp32`` or ``bf16``.
        windows: how volumes are covered (default: ``Windows("stride")``, the config's ``eval.stride``).

    Raises a one-line :class:`~vasseg.errors.VassegError` (``CheckpointError``, ``ConfigError``,
    ``DataError``) naming the file when it cannot be loaded.
    """
    dev = device if isinstance(device, torch.device) else select_device(device, "device")
    resolve_precision(precision, dev)  # an unknown name fails before the weights are read
    loaded = open_model(path, checkpoint, dev)
    loaded.method.to(memory_format=torch.channels_last_3d)  # the layout the Inferer feeds it
    model = Model(loaded.exp, loaded.method, dev, loaded.checkpoint, loaded.step, loaded.preprocessing, precision,
                  windows)
    log.info("loaded %s (step %d, %s) on %s; %s", loaded.checkpoint, loaded.step, loaded.exp.method.name, dev,
             model.describe_inference())
    return model

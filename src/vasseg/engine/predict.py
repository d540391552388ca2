"""Segmenting one volume with a trained network: preprocessing, sliding window, back to the input grid.

What the network was trained on is a *preprocessing record*, a plain mapping (stored as is in
exported model files, :mod:`vasseg.export`):

- ``{"kind": "zscore", "scale": s, "intensity": m}``: LA-layout data (the LA benchmark, the
  phantoms). An LA ``.h5`` gets ``data.intensity`` ``m`` as in training ("file": the stored values,
  "zscore": re-z-scored; records without ``intensity`` are "file"); any other input (a NIfTI scan)
  is z-scored over itself. The image is resized trilinearly by ``s`` (``data.scale``); the
  probabilities are resized back to the input's grid. Label values are the class ids ``0..K-1``.
- ``{"kind": "prepared", "scale": s, "shape", "window", "normalize", "label_map",
  "class_names"}``: a ``vasseg prepare`` dataset. The CT (Hounsfield units) is brought to
  canonical RAS+ order, windowed, rescaled and resampled to ``shape`` times ``s``; labels are
  written back on the CT's own grid with the source dataset's ids (``label_map``).

Optional flip test-time augmentation (:func:`flip_tta`) averages every window's probabilities
over the 4 flips of the x-y plane, the flips the training augmentation covers (4x the compute).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vasseg.config import Experiment
from vasseg.data.intensity import normalize_intensity
from vasseg.engine.inference import Predictor, resize_probs, sliding_window_probs
from vasseg.io import Volume
from vasseg.methods.base import Method

log = logging.getLogger(__name__)

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))  # dims of (B, C, X, Y, Z)


def preprocessing_for_run(exp: Experiment, run_dir: str | Path) -> dict[str, Any]:
    """The preprocessing record of a trained run (a prepared run reads its ``prepared.json``)."""
    if exp.data.dataset == "prepared":
        from vasseg.data.prepared import manifest_for_run

        manifest = manifest_for_run(run_dir, exp)
        keep = ("shape", "window", "normalize", "label_map", "class_names")
        return {"kind": "prepared", "scale": exp.data.scale, **{k: manifest[k] for k in keep}}
    return {"kind": "zscore", "scale": exp.data.scale, "intensity": exp.data.intensity}


def preprocess(volume: Volume, prep: dict[str, Any]) -> torch.Tensor:
    """The image as the network was trained on it: ``(1, X', Y', Z')`` float32 at training scale."""
    scale = float(prep.get("scale", 1.0))
    if prep["kind"] == "prepared":
        from vasseg.data.prepared import preprocess_with_manifest

        return preprocess_with_manifest(volume, prep, scale)
    image = torch.from_numpy(np.ascontiguousarray(la_intensity(volume, prep.get("intensity", "file"))))[None]
    if scale != 1.0:
        size = [max(1, round(s * scale)) for s in image.shape[1:]]
        image = F.interpolate(image[None], size=size, mode="trilinear", align_corners=False)[0]
    return image


def la_intensity(volume: Volume, mode: str) -> np.ndarray:
    """An LA-format model's input intensities: an LA .h5 gets ``data.intensity`` exactly as in
    training; any other file (a user's NIfTI) is z-scored over itself, the release's normalisation."""
    is_h5 = str(volume.source).endswith((".h5", ".hdf5"))
    return normalize_intensity(volume.image.astype(np.float32, copy=False), mode if is_h5 else "zscore")


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
                tta: bool = False) -> torch.Tensor:
    """Sliding-window class probabilities ``(K, X', Y', Z')`` float32 of ``image`` ``(1, X', Y', Z')``."""
    predict = flip_tta(method.predict) if tta else method.predict
    return sliding_window_probs(predict, image, exp.eval_patch, exp.eval.stride, exp.data.num_classes,
                                batch_size=exp.eval.batch_size, device=device)


def label_ids(prep: dict[str, Any], num_classes: int) -> tuple[int, ...]:
    """The value the label map holds for each class channel (a prepared run: the source ids)."""
    if prep["kind"] == "prepared":
        from vasseg.data.prepared import label_map_from_dict

        label_map = label_map_from_dict(prep["label_map"], "preprocessing: label_map")
        return tuple(int(v) for v in label_map.restore_ids(np.arange(num_classes)))
    return tuple(range(num_classes))


def to_input_grid(probs: torch.Tensor, volume: Volume, prep: dict[str, Any],
                  with_probs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-grid probabilities ``(K, X', Y', Z')`` -> the label map ``(X, Y, Z)`` on the input's grid
    and, when asked, the probabilities there ``(K, X, Y, Z)`` float32 (their argmax is the map)."""
    if prep["kind"] == "prepared":
        from vasseg.data.prepared import source_labels

        labels = source_labels(probs, volume, prep, str(volume.source))
        return labels, (_prepared_probs(probs, volume) if with_probs else None)
    if tuple(probs.shape[1:]) != volume.image.shape:
        probs = resize_probs(probs, volume.image.shape)
    labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
    return labels, (probs.cpu().numpy() if with_probs else None)


def _prepared_probs(probs: torch.Tensor, volume: Volume) -> np.ndarray:
    """Per class: resized to the canonical grid of the input, then back to the file's axis order."""
    from vasseg.data.nifti import canonical_ornt, from_canonical
    from vasseg.data.prepared import canonical_shape

    ornt = canonical_ornt(volume.affine)
    size = canonical_shape(volume.image.shape, ornt)
    out = np.empty((probs.shape[0], *volume.image.shape), np.float32)
    for cls in range(probs.shape[0]):
        resized = F.interpolate(probs[cls][None, None].float(), size=size, mode="trilinear", align_corners=False)
        out[cls] = from_canonical(resized[0, 0].cpu().numpy(), ornt)
    return out


def predict_file(target: str | Path, input_path: str | Path, output_path: str | Path,
                 checkpoint: str = "last", device: str = "auto", progress: bool = True) -> Path:
    """Segment one image (NIfTI or LA h5) with a run, checkpoint or model file; write ``output_path``."""
    from vasseg.engine.predict_cases import PredictOptions, predict_paths

    options = PredictOptions(checkpoint=checkpoint, device=device, progress=progress)
    result = predict_paths(target, input_path, output_path, options)
    return result.written[0]

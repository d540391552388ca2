"""``vasseg predict``: one image file in, a NIfTI label map on the same grid out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vasseg.data.intensity import normalize_intensity
from vasseg.engine.inference import resize_probs, sliding_window_probs
from vasseg.engine.loading import LoadedRun, load_run
from vasseg.engine.setup import select_device
from vasseg.io import Volume, check_label_output, read_volume, write_label_nifti

log = logging.getLogger(__name__)


def preprocess(volume: Volume, loaded: LoadedRun) -> torch.Tensor:
    """The image as the network was trained on it: ``(1, X', Y', Z')`` float32 at training scale."""
    exp = loaded.exp
    if exp.data.dataset == "prepared":
        from vasseg.data.prepared import preprocess_for_model

        return preprocess_for_model(volume, loaded.run_dir, exp)
    image = torch.from_numpy(np.ascontiguousarray(la_intensity(volume, exp.data.intensity)))[None]
    if exp.data.scale != 1.0:
        size = [max(1, round(s * exp.data.scale)) for s in image.shape[1:]]
        image = F.interpolate(image[None], size=size, mode="trilinear", align_corners=False)[0]
    return image


def la_intensity(volume: Volume, mode: str) -> np.ndarray:
    """An LA-format model's input intensities: an LA .h5 gets ``data.intensity`` exactly as in
    training; any other file (a user's NIfTI) is z-scored over itself, the release's normalisation."""
    is_h5 = str(volume.source).endswith((".h5", ".hdf5"))
    return normalize_intensity(volume.image, mode if is_h5 else "zscore")


def postprocess(probs: torch.Tensor, volume: Volume, loaded: LoadedRun) -> np.ndarray:
    """Class probabilities ``(K, X', Y', Z')`` -> label map on the input's grid ``(X, Y, Z)``."""
    exp = loaded.exp
    if exp.data.dataset == "prepared":
        from vasseg.data.prepared import labels_to_source

        return labels_to_source(probs, volume, loaded.run_dir, exp)
    if tuple(probs.shape[1:]) != volume.image.shape:
        probs = resize_probs(probs, volume.image.shape)
    return probs.argmax(0).to(torch.uint8).cpu().numpy()


def predict_file(target: str | Path, input_path: str | Path, output_path: str | Path,
                 checkpoint: str = "last", device: str = "auto", progress: bool = True) -> Path:
    """Segment ``input_path`` (NIfTI or LA h5) with a trained run; write ``output_path`` (NIfTI)."""
    dev = select_device(device)
    check_label_output(output_path)  # fail before loading the model and running inference
    loaded = load_run(target, checkpoint, dev)
    exp = loaded.exp
    volume = read_volume(Path(input_path), default_spacing=exp.data.spacing)
    image = preprocess(volume, loaded)
    probs = sliding_window_probs(
        loaded.method.predict, image, exp.eval_patch, exp.eval.stride, exp.data.num_classes,
        batch_size=exp.eval.batch_size, device=dev,
    )
    labels = postprocess(probs, volume, loaded)
    out = Path(output_path)
    write_label_nifti(out, labels, volume.affine, volume.header)
    log.info("%s -> %s (%s voxels labelled foreground)", input_path, out, int((labels > 0).sum()))
    return out

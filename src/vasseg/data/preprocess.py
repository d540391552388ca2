"""A scan -> the network's input, as ``vasseg prepare`` and ``vasseg predict`` both do it.

Two modalities (``--modality``, recorded in the prepared dataset and in exported model files):

- **ct**: Hounsfield units clipped to a window (the paper's [-200, 250]) and rescaled to [0, 1]
  (``normalize: minmax``), optionally z-scored after resampling (``zscore``).
- **mr** (any non-CT image): no window; clipped to the 0.5 and 99.5 percentiles of the volume's
  non-zero voxels, then z-scored over the volume. nnU-Net normalises non-CT channels by a
  per-image z-score (``ZScoreNormalization``, Isensee et al., Nature Methods 2021, and
  nnunetv2/preprocessing/normalization); the percentile clip, which nnU-Net applies with
  dataset-wide percentiles to CT, keeps a few extreme MR voxels (vessels, artefacts) from
  squeezing the rest of the range. As in nnU-Net, the scan is normalised before it is resampled.

Geometry: a fixed target ``shape`` (every case gets the same voxel counts: the paper's 128x128x64
for the multi-organ CTs) or a target ``spacing`` in mm (each case keeps its extent, so shapes
vary), always over the same field of view (``align_corners=False``), in canonical RAS+ axis order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vasseg.data.volumes import DataError, resize_image

log = logging.getLogger(__name__)

MODALITIES = ("ct", "mr")
NORMALIZATIONS = ("minmax", "zscore")
MR_PERCENTILES = (0.5, 99.5)
CT_BELOW = -500.0  # auto-detection: integer data with values below this are Hounsfield units


# --------------------------------------------------------------------------- intensities


def window_rescale(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip Hounsfield units to ``window = (low, high)`` and rescale to [0, 1] (float32)."""
    low, high = float(window[0]), float(window[1])
    out = np.clip(np.asarray(hu, dtype=np.float32), low, high)
    out -= low
    out /= high - low
    return out


def mr_normalize(image: np.ndarray, percentiles: Sequence[float] = MR_PERCENTILES) -> np.ndarray:
    """Clip to the ``percentiles`` of the non-zero voxels (all voxels if none is), then z-score
    over the whole volume (std 0: only the mean is removed). float32, same shape."""
    image = np.asarray(image, dtype=np.float32)
    foreground = image[image != 0]
    sample = foreground if foreground.size else image.ravel()
    low, high = np.percentile(sample, [float(percentiles[0]), float(percentiles[1])])
    out = np.clip(image, low, high)
    std = float(out.std())
    return ((out - out.mean()) / (std if std > 0 else 1.0)).astype(np.float32, copy=False)


def intensity_record(record: dict[str, Any]) -> dict[str, Any]:
    """The intensity part of a manifest or preprocessing record; older records (no ``modality``)
    are CT."""
    modality = record.get("modality", "ct")
    if modality not in MODALITIES:
        raise DataError(f"preprocessing: modality {modality!r} is not one of {', '.join(MODALITIES)}")
    if modality == "mr":
        return {"modality": "mr", "percentiles": list(record.get("percentiles") or MR_PERCENTILES),
                "normalize": "zscore", "window": None}
    return {"modality": "ct", "window": list(record["window"]), "normalize": record.get("normalize", "minmax")}


# --------------------------------------------------------------------------- resampling


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resampling of ``(X, Y, Z)`` to ``shape`` over the same field of view."""
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    if tuple(image.shape) == size:
        return np.ascontiguousarray(image, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return resize_image(tensor, size)[0].numpy()


def resample_label(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling (voxel centres, same field of view) of uint8 ``(X, Y, Z)``."""
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    if tuple(label.shape) == size:
        return np.ascontiguousarray(label, dtype=np.uint8)
    tensor = torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8))[None, None]
    return F.interpolate(tensor, size=size, mode="nearest-exact")[0, 0].numpy()


def preprocess_image(hu: np.ndarray, window: Sequence[float], normalize: str,
                     shape: Sequence[int]) -> np.ndarray:
    """The network's input from a canonical CT in HU: window, rescale, resample, normalise.

    ``normalize="minmax"`` keeps [0, 1] (the paper's "range [0, 1]"); ``"zscore"`` then gives the
    resampled volume zero mean and unit variance (the paper's other reading). float32 ``shape``.
    """
    if normalize not in NORMALIZATIONS:
        raise DataError(f"normalize: {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    out = resample_image(window_rescale(hu, window), shape)
    if normalize == "zscore":
        std = float(out.std())
        out = (out - out.mean()) / (std if std > 0 else 1.0)
    return out.astype(np.float32, copy=False)


def preprocess_scan(image: np.ndarray, record: dict[str, Any], shape: Sequence[int]) -> np.ndarray:
    """A canonical scan ``(X, Y, Z)`` -> float32 ``shape`` by the record's modality (module docstring)."""
    intensity = intensity_record(record)
    if intensity["modality"] == "mr":
        return resample_image(mr_normalize(image, intensity["percentiles"]), shape)
    return preprocess_image(image, intensity["window"], intensity["normalize"], shape)


def target_shape(canonical_shape: Sequence[int], canonical_spacing: Sequence[float],
                 record: dict[str, Any]) -> tuple[int, int, int]:
    """The prepared grid of one scan: the record's fixed ``shape``, or its extent at the record's
    ``target_spacing`` (mm), ``round(n * spacing / target)`` voxels per axis, at least 1."""
    if record.get("target_spacing"):
        x, y, z = (max(1, int(round(n * s / t))) for n, s, t in
                   zip(canonical_shape, canonical_spacing, record["target_spacing"]))
        return (x, y, z)
    x, y, z = (int(s) for s in record["shape"])
    return (x, y, z)


# --------------------------------------------------------------------------- modality detection


def channel_modality(meta: dict[str, Any]) -> str | None:
    """ct / mr from a dataset.json's ``channel_names`` (nnU-Net v2) or ``modality`` (MSD); None without."""
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        return None
    return "ct" if str(next(iter(channels.values()))).strip().upper() == "CT" else "mr"


def data_modality(path: Path) -> str:
    """ct when the image is stored as integers and holds values below -500 (HU air), else mr."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        integer = np.dtype(img.get_data_dtype()).kind in "iu"
        low = float(np.min(np.asanyarray(img.dataobj))) if integer else 0.0
    except Exception as exc:  # nibabel raises many types on foreign files
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    return "ct" if integer and low < CT_BELOW else "mr"


def detect_modality(requested: str, meta: dict[str, Any], first_image: Path | None) -> str:
    """``--modality``: ct or mr as given, or ``auto``: dataset.json's channel name ("CT" -> ct,
    anything else -> mr), else the data of ``first_image`` (:func:`data_modality`). Logged."""
    if requested in MODALITIES:
        return requested
    if requested != "auto":
        raise DataError(f"--modality: {requested!r} is not ct, mr or auto")
    found = channel_modality(meta)
    if found is not None:
        log.info("--modality auto: %s (dataset.json channel %r)", found,
                 next(iter(meta.get("channel_names", meta.get("modality")).values())))
        return found
    if first_image is None:
        raise DataError("--modality auto: no image to look at; give --modality ct or mr")
    found = data_modality(first_image)
    log.info("--modality auto: %s (%s %s integer values below %g)", found, first_image,
             "holds" if found == "ct" else "does not hold", CT_BELOW)
    return found

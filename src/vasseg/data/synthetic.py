"""Synthetic phantoms: the embedded default data of the demo and the test suite.

A phantom mimics a cropped LGE-MRI volume of the LA benchmark: one smooth, irregular structure
per foreground class (an ellipsoid plus one or two smaller lobes, all deformed by low-frequency
noise, at a random position, size and orientation), a few "distractor" blobs in the background
with intensities close to the structures' (as vessels and ventricles are around the atrium),
a smooth tissue texture, a multiplicative bias field and Gaussian noise. Intensity distributions
of structure and background overlap, so a threshold alone is not enough while a small network
learns the shapes. The image is quantised to 8 bits and z-scored per volume like the LA files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from vasseg.data.la import CASE_FILE, TRAIN_DIR
from vasseg.data.volumes import Case, Spacing, VolumeSet

log = logging.getLogger(__name__)

Seed = int | Sequence[int]

# Mean intensity offsets of foreground classes 1, 2, ... over a background of 1.0 (arbitrary
# units before z-scoring): each class gets its own contrast, brighter or darker.
CLASS_CONTRAST = (0.7, -0.5, 1.0, -0.7, 1.3, -0.9)
NOISE_STD = 0.22  # Gaussian noise: contrast-to-noise 1.8..5 across classes
BIAS_STRENGTH = 0.1  # log-amplitude of the multiplicative bias field
DEFORM_STRENGTH = 0.35  # low-frequency deformation of each structure's implicit surface


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """Low-frequency random field with unit std: Gaussian bumps on a ``cells``^3 lattice.

    Separable products of 1-D Gaussian bases keep it O(voxels) and fast (no 3-D convolution).
    """
    coeffs = rng.standard_normal((cells, cells, cells))
    field = coeffs
    for axis, n in enumerate(shape):
        centres = np.linspace(-0.5, n - 0.5, cells)
        width = n / (cells - 1)
        basis = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / width) ** 2)
        field = np.moveaxis(np.tensordot(basis, field, axes=([1], [axis])), 0, axis)
    field -= field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray,
               rot: np.ndarray) -> np.ndarray:
    """Implicit ellipsoid ``1 - d^2`` (> 0 inside) on ``grid`` ``(3, X, Y, Z)``, voxel units."""
    local = np.tensordot(rot.T, grid - centre[:, None, None, None], axes=1)
    d2 = ((local / radii[:, None, None, None]) ** 2).sum(axis=0)
    return (1.0 - d2).astype(np.float32)


def _structure(grid: np.ndarray, shape: np.ndarray, centre: np.ndarray, size: float,
               rng: np.random.Generator) -> np.ndarray:
    """Implicit function of one structure: main ellipsoid + 1-2 lobes, deformed."""
    radii = shape * size * rng.uniform(0.75, 1.25, 3)
    rot = _random_rotation(rng)
    field = _ellipsoid(grid, centre, radii, rot)
    for _ in range(int(rng.integers(1, 3))):
        direction = rot @ rng.standard_normal(3)
        direction /= np.linalg.norm(direction) + 1e-8
        lobe_centre = centre + direction * radii * rng.uniform(0.7, 1.0)
        lobe_radii = radii * rng.uniform(0.3, 0.55, 3)
        field = np.maximum(field, _ellipsoid(grid, lobe_centre, lobe_radii, _random_rotation(rng)))
    return field + DEFORM_STRENGTH * _smooth_field(grid.shape[1:], rng)


def _place_centres(shape: np.ndarray, count: int, size: float,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Centres inside the middle of the volume, kept apart so structures rarely touch."""
    centres: list[np.ndarray] = []
    min_sep = 2.2 * size * float(shape.mean())
    for _ in range(count):
        best, best_gap = None, -1.0
        for _ in range(50):  # keep the candidate farthest from the others
            cand = shape * rng.uniform(0.3, 0.7, 3)
            gap = min((float(np.linalg.norm(cand - c)) for c in centres), default=np.inf)
            if gap > best_gap:
                best, best_gap = cand, gap
            if gap >= min_sep:
                break
        centres.append(best)
    return centres


def _labels(fields: list[np.ndarray], centres: list[np.ndarray]) -> np.ndarray:
    """Class map: each voxel goes to the structure with the largest positive implicit value."""
    stack = np.stack([np.zeros_like(fields[0])] + fields)
    label = stack.argmax(axis=0).astype(np.uint8)
    for c, centre in enumerate(centres, start=1):
        if not (label == c).any():  # swallowed by a neighbour: keep a core so no class is empty
            x, y, z = (int(v) for v in centre)
            label[max(x - 1, 0):x + 2, max(y - 1, 0):y + 2, max(z - 1, 0):z + 2] = c
    return label


def _distractors(grid: np.ndarray, shape: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Intensity offsets of 2-3 small background blobs that look like the structures."""
    out = np.zeros(label.shape, np.float32)
    for _ in range(int(rng.integers(2, 4))):
        centre = shape * rng.uniform(0.1, 0.9, 3)
        blob = _ellipsoid(grid, centre, shape * rng.uniform(0.05, 0.1, 3), _random_rotation(rng))
        level = CLASS_CONTRAST[0] * rng.uniform(0.5, 0.9)
        out += np.where((blob > 0) & (label == 0), np.float32(level), np.float32(0))
    return out


def _zscore_8bit(image: np.ndarray) -> np.ndarray:
    """Quantise to 256 levels (the LA MRIs are 8-bit) and z-score the volume."""
    lo, hi = float(image.min()), float(image.max())
    q = np.round((image - lo) / max(hi - lo, 1e-8) * 255.0)
    return ((q - q.mean()) / (q.std() + 1e-8)).astype(np.float32)


def make_phantom(shape: Sequence[int] = (64, 64, 48), num_classes: int = 2,
                 seed: Seed = 0) -> tuple[np.ndarray, np.ndarray]:
    """One phantom.

    Returns:
        image: float32 ``(X, Y, Z)``, z-scored (8-bit quantised before).
        label: uint8 ``(X, Y, Z)`` with every class ``0..num_classes-1`` present.

    Deterministic in ``seed`` (an int or a tuple of ints, e.g. ``(set_seed, index)``).
    """
    if num_classes < 2 or num_classes - 1 > len(CLASS_CONTRAST):
        raise ValueError(f"num_classes must be in 2..{len(CLASS_CONTRAST) + 1}, got {num_classes}")
    rng = np.random.default_rng(seed)
    dims = np.asarray(shape, dtype=np.float32)
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"))
    count = num_classes - 1
    size = 0.24 / count ** (1 / 3)  # relative radius: structures shrink as their number grows
    centres = _place_centres(dims, count, size, rng)
    fields = [_structure(grid, dims, c, size, rng) for c in centres]
    label = _labels(fields, centres)

    tissue = 1.0 + 0.08 * _smooth_field(shape, rng, cells=6)
    contrast = np.zeros(count + 1, np.float32)
    contrast[1:] = CLASS_CONTRAST[:count]
    # Structures are not flat either: a mild texture scales their contrast.
    signal = tissue + contrast[label] * (1.0 + 0.15 * _smooth_field(shape, rng, cells=5))
    signal = signal + _distractors(grid, dims, label, rng)
    bias = np.exp(BIAS_STRENGTH * _smooth_field(shape, rng, cells=3))
    image = signal * bias + NOISE_STD * rng.standard_normal(label.shape).astype(np.float32)
    return _zscore_8bit(image), label


def _case_seed(seed: int, index: int) -> tuple[int, int]:
    """Seed of case ``index`` of a set: independent of the set's size."""
    return (seed, index)


def phantom_ids(n: int, offset: int = 0) -> list[str]:
    """``["phantom_000", ...]`` for cases ``offset .. offset + n - 1``."""
    return [f"phantom_{i:03d}" for i in range(offset, offset + n)]


def make_phantom_set(n: int, shape: Sequence[int] = (64, 64, 48), num_classes: int = 2,
                     seed: int = 0, spacing: Spacing = (1.0, 1.0, 1.0)) -> VolumeSet:
    """``n`` phantoms as a CPU `VolumeSet` (ids ``phantom_000``...; spacing in mm)."""
    cases = []
    for i, case_id in enumerate(phantom_ids(n)):
        image, label = make_phantom(shape, num_classes, _case_seed(seed, i))
        cases.append(Case(id=case_id, image=torch.from_numpy(image)[None],
                          label=torch.from_numpy(label), spacing=tuple(spacing),
                          native_shape=(label.shape[0], label.shape[1], label.shape[2]),
                          native_spacing=tuple(spacing)))
    return VolumeSet(cases)


def write_phantom_la_layout(root: str | Path, n_train: int, n_test: int,
                            shape: Sequence[int] = (64, 64, 48), seed: int = 0,
                            num_classes: int = 2) -> Path:
    """Write phantoms in the exact LA layout so the demo and tests use the real reader.

    ``ROOT/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` (``image`` float32, ``label`` uint8) for
    ``n_train + n_test`` cases, ``ROOT/train.list`` with the first ``n_train`` ids and
    ``ROOT/test.list`` with the others. Returns ``root``.
    """
    root = Path(root)
    ids = phantom_ids(n_train + n_test)
    for i, case_id in enumerate(ids):
        image, label = make_phantom(shape, num_classes, _case_seed(seed, i))
        folder = root / TRAIN_DIR / case_id
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / CASE_FILE, "w") as f:
            # gzip like the LA release, so the same filter path is exercised.
            f.create_dataset("image", data=image, compression="gzip", compression_opts=1)
            f.create_dataset("label", data=label, compression="gzip", compression_opts=1)
    (root / "train.list").write_text("".join(f"{i}\n" for i in ids[:n_train]))
    (root / "test.list").write_text("".join(f"{i}\n" for i in ids[n_train:]))
    log.info("wrote %d phantoms in the LA layout under %s", len(ids), root)
    return root

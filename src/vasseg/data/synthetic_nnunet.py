"""Synthetic MR-like scans in nnU-Net v2's raw layout, for tests, benchmarks and trying vasseg out.

Each scan is a body ellipsoid (MR-like, positive intensities, air 0, a smooth bias field and Rician-
like noise) holding two structures: class 1 ("heart") and class 2 ("liver"). Scans differ in shape
(a few voxels), are anisotropic (about 1.2 x 1.2 x 3 mm) and are stored with non-identity affines
(a rotation of 10-20 degrees about z, an offset, and x/y flips on every second case), so that
orientation and geometry handling are exercised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from vasseg.data.nifti import save_nifti

LABELS = {"background": 0, "heart": 1, "liver": 2}


def make_synthetic_mr(shape: tuple[int, int, int], seed: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One MR-like scan: float32 image ``(X, Y, Z)`` (arbitrary units, air 0) and uint8 label."""
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n, dtype=np.float32) + 0.5) / n for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.5) / 0.4) ** 2 <= 1.0
    image = np.where(body, 300.0, 0.0).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for cls, mean, centre, radii in ((2, 450.0, (0.62, 0.5, 0.4), (0.2, 0.18, 0.3)),
                                     (1, 700.0, (0.38, 0.55, 0.6), (0.14, 0.14, 0.25))):
        c = np.asarray(centre) + rng.uniform(-0.04, 0.04, 3)
        r = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
        inside = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0
        label[inside] = cls
        image[inside] = mean
    bias = 1.0 + 0.3 * (x - 0.5) + 0.2 * (z - 0.5)  # a smooth coil-sensitivity field
    noise = rng.normal(0.0, 25.0, (2, *shape)).astype(np.float32)
    image = np.sqrt((image * bias + noise[0]) ** 2 + noise[1] ** 2)  # magnitude: Rician-like
    image[~body] *= 0.1
    return image.astype(np.float32), label


def synthetic_affine(shape: tuple[int, int, int], rng: np.random.Generator, flipped: bool) -> np.ndarray:
    """Anisotropic voxels rotated about z, offset, and flipped in x and y when ``flipped``."""
    spacing = np.array([rng.uniform(1.1, 1.3), rng.uniform(1.1, 1.3), rng.uniform(2.8, 3.2)])
    angle = math.radians(rng.uniform(10.0, 20.0))
    rot = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing * np.array([-1.0 if flipped else 1.0] * 2 + [1.0]))
    affine[:3, 3] = rng.uniform(-120.0, -60.0, 3)
    return affine


def _case(i: int, shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng((seed, i, 7))
    size = tuple(int(n + rng.integers(-3, 4)) for n in shape)
    image, label = make_synthetic_mr((size[0], size[1], size[2]), (seed, i))
    return image, label, synthetic_affine((size[0], size[1], size[2]), rng, flipped=i % 2 == 0)


def write_synthetic_nnunet(root: str | Path, labeled: int, test: int = 0, unlabeled_in_tr: int = 0,
                           shape: tuple[int, int, int] = (40, 40, 14), seed: int = 0,
                           channel: str = "MRI") -> Path:
    """``root`` as an nnU-Net v2 raw dataset: ``labeled`` cases ``case_000..`` in imagesTr + labelsTr,
    ``unlabeled_in_tr`` more images in imagesTr without labels, ``test`` images in imagesTs, and a
    dataset.json (channel ``channel``, :data:`LABELS`)."""
    root = Path(root)
    for i in range(labeled + unlabeled_in_tr + test):
        image, label, affine = _case(i, shape, seed)
        name = f"case_{i:03d}"
        folder = "imagesTs" if i >= labeled + unlabeled_in_tr else "imagesTr"
        save_nifti(root / folder / f"{name}_0000.nii.gz", image, affine)
        if i < labeled:
            save_nifti(root / "labelsTr" / f"{name}.nii.gz", label, affine)
    (root / "imagesTs").mkdir(parents=True, exist_ok=True)
    meta = {"channel_names": {"0": channel}, "labels": LABELS, "numTraining": labeled, "file_ending": ".nii.gz",
            "name": "SyntheticMR"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_unlabeled_scans(folder: str | Path, n: int, shape: tuple[int, int, int] = (40, 40, 14),
                          seed: int = 100, prefix: str = "extra") -> Path:
    """``n`` more MR-like images ``<prefix>_NNN.nii.gz`` (no labels) in ``folder``."""
    folder = Path(folder)
    for i in range(n):
        image, _, affine = _case(i, shape, seed)
        save_nifti(folder / f"{prefix}_{i:03d}.nii.gz", image, affine)
    return folder

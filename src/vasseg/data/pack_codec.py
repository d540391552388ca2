"""Lossless codec of one LA case for :mod:`vasseg.data.pack`: an image of <= 256 distinct float32
values becomes its value table plus one uint8 index per voxel; the indices are predicted from 16
already-decoded neighbours (a least-squares linear predictor fitted per case, integer weights
stored in the header) and only the residuals (mod 256) are LZMA-compressed.

Why: the indices of the LA release's noisy MRI compress to ~4.4 bits/voxel with LZMA alone
(1.26 MiB per case) and to ~3.1 bits/voxel as predicted residuals (0.87 MiB per case), which
decides how many cases one 64 MiB device call carries (benchmarks/RESULTS.md, "One GPU window").

Decoding is exact integer arithmetic (int64, shifts), so every machine rebuilds the same bytes;
it runs front by front (voxels with equal i + j + k), every neighbour lying on an earlier front.
"""

from __future__ import annotations

import hashlib
import json
import lzma

import numpy as np

from vasseg.data.volumes import DataError

# Causal neighbour offsets (back along each axis, components 0..2, never all 0): every one lies on
# an earlier front i + j + k, so a front decodes in one vectorised step.
OFFSETS = ((0, 1, 0), (1, 0, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1), (0, 2, 0),
           (2, 0, 0), (0, 0, 2), (1, 2, 0), (2, 1, 0), (0, 1, 2), (0, 2, 1), (1, 0, 2), (2, 0, 1))
SHIFT = 12  # fixed-point bits of the integer weights
FIT_STRIDE = 7  # fit the predictor on every 7th voxel (same weights within noise, 1/7 the memory)
PAD = 2


def digest(image: np.ndarray, label: np.ndarray) -> str:
    """SHA-256 of the raw bytes of both arrays (what 'lossless' is checked against)."""
    h = hashlib.sha256()
    for arr in (image, label):
        h.update(str(arr.shape).encode() + str(arr.dtype).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _neighbours(index: np.ndarray) -> list[np.ndarray]:
    """Each offset's neighbour of every voxel (0 outside the volume), int64, shape of ``index``."""
    padded = np.pad(index.astype(np.int64), [(PAD, 0)] * 3)
    d, h, w = index.shape
    return [padded[PAD - a: PAD - a + d, PAD - b: PAD - b + h, PAD - c: PAD - c + w] for a, b, c in OFFSETS]


def _predict(neighbours: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    acc = np.full(neighbours[0].shape, int(weights[-1]) + (1 << (SHIFT - 1)), dtype=np.int64)
    for wgt, nb in zip(weights[:-1], neighbours):
        acc += int(wgt) * nb
    return np.clip(acc >> SHIFT, 0, 255)


def fit_weights(index: np.ndarray) -> np.ndarray:
    """Least-squares weights of the 16 neighbours plus a bias, as int64 fixed point (x 2**SHIFT)."""
    cols = [nb.ravel()[::FIT_STRIDE].astype(np.float64) for nb in _neighbours(index)]
    design = np.stack(cols + [np.ones_like(cols[0])], axis=1)
    coef, *_ = np.linalg.lstsq(design, index.ravel()[::FIT_STRIDE].astype(np.float64), rcond=None)
    return np.round(coef * (1 << SHIFT)).astype(np.int64)


def reconstruct(residual: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Indices (uint8, shape of ``residual``) from the residuals, front by front."""
    d, h, w = residual.shape
    padded = np.zeros((d + PAD, h + PAD, w + PAD), dtype=np.int64)
    flat = padded.reshape(-1)
    s0, s1 = (h + PAD) * (w + PAD), w + PAD
    steps = [a * s0 + b * s1 + c for a, b, c in OFFSETS]
    i, j, k = np.indices(residual.shape, dtype=np.int64)
    front = (i + j + k).ravel()
    order = np.argsort(front, kind="stable")
    where = ((i + PAD) * s0 + (j + PAD) * s1 + (k + PAD)).ravel()[order]
    res = residual.ravel().astype(np.int64)[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(front))])
    bias = int(weights[-1]) + (1 << (SHIFT - 1))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        at = where[lo:hi]
        acc = np.full(at.shape, bias, dtype=np.int64)
        for wgt, step in zip(weights[:-1], steps):
            acc += int(wgt) * flat[at - step]
        flat[at] = (np.clip(acc >> SHIFT, 0, 255) + res[lo:hi]) & 255
    return padded[PAD:, PAD:, PAD:].astype(np.uint8)


def encode_case(image: np.ndarray, label: np.ndarray, path: object) -> dict[str, bytes]:
    """Compressed members of one case; fails if the image has more than 256 distinct values."""
    table, index = np.unique(image, return_inverse=True)
    if table.size > 256:
        raise DataError(f"{path}: {table.size} distinct intensities; lossless uint8 packing needs <= 256")
    index = index.reshape(image.shape).astype(np.uint8)
    weights = fit_weights(index)
    residual = ((index.astype(np.int64) - _predict(_neighbours(index), weights)) & 255).astype(np.uint8)
    header = {"shape": list(image.shape), "sha256": digest(image, label), "codec": "lsq16",
              "weights": weights.tolist()}
    return {
        "header.json": json.dumps(header).encode(),
        "table.f32": table.astype(np.float32).tobytes(),
        "resid.u8.xz": lzma.compress(residual.tobytes(), preset=6),
        "label.u8.xz": lzma.compress(np.ascontiguousarray(label, dtype=np.uint8).tobytes(), preset=6),
    }


def decode_case(members: dict[str, bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_case` (also reads the first format: plain ``index.u8.xz``);
    verifies the checksum."""
    try:
        header = json.loads(members["header.json"])
        shape = tuple(header["shape"])
        table = np.frombuffer(members["table.f32"], dtype=np.float32)
        if "index.u8.xz" in members:
            index = np.frombuffer(lzma.decompress(members["index.u8.xz"]), dtype=np.uint8).reshape(shape)
        else:
            residual = np.frombuffer(lzma.decompress(members["resid.u8.xz"]), dtype=np.uint8).reshape(shape)
            index = reconstruct(residual, np.asarray(header["weights"], dtype=np.int64))
        label = np.frombuffer(lzma.decompress(members["label.u8.xz"]), dtype=np.uint8).reshape(shape)
    except (KeyError, ValueError, lzma.LZMAError) as exc:
        raise DataError(f"{where}: unreadable packed case ({exc})") from None
    image = table[index]
    if digest(image, label) != header["sha256"]:
        raise DataError(f"{where}: checksum mismatch after unpacking (corrupt chunk?)")
    return image, label

"""``vasseg prepare``, one case at a time: header checks, then read -> map -> reorient -> normalise
-> resample -> ``cases/<ID>.h5``, in this process or in a pool of worker processes.

Each case is read, written and dropped before the next one (memory is flat in the number of
cases); a worker process does the same with its own case and returns only the case's small
manifest record. The per-case steps and the h5 layout are described in :mod:`vasseg.data.prepared`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from vasseg.data.labelmap import LabelMap
from vasseg.data.nifti import Pair
from vasseg.data.volumes import DataError

log = logging.getLogger(__name__)

POOL_MIN_CASES = 16  # below this a pool did not pay on 2 busy cores (RESULTS.md, "Preparing your own scans")


@dataclass(frozen=True)
class Header:
    """A scan's grid from its NIfTI header: file-order shape and affine, canonical shape and spacing."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    canonical_shape: tuple[int, int, int]
    canonical_spacing: tuple[float, float, float]


@dataclass(frozen=True)
class CaseJob:
    """Everything a worker needs for one case (picklable)."""

    pair: Pair
    role: str  # "labeled" | "unlabeled" | "test"
    out: Path  # cases/<ID>.h5
    label_map: LabelMap
    recipe: dict[str, Any]  # modality, window/percentiles, normalize, shape or target_spacing


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


# --------------------------------------------------------------------------- headers


def read_header(path: Path) -> Header | str:
    """The grid of a NIfTI image, or one problem line naming the file (unreadable, not 3-D)."""
    import nibabel as nib

    from vasseg.data.nifti import canonical_ornt, canonical_spacing
    from vasseg.data.prepared import canonical_shape

    try:
        img = nib.load(str(path))
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:  # nibabel raises many types on truncated or foreign files
        return f"{path}: cannot read NIfTI header ({_one_line(exc)})"
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        return f"{path}: 4-D image {shape} (several volumes or channels); vasseg takes one 3-D volume per file"
    if len(shape) != 3:
        return f"{path}: expected a 3-D volume, got shape {shape}"
    affine = np.asarray(img.affine, dtype=np.float64)
    ornt = canonical_ornt(affine)
    return Header((shape[0], shape[1], shape[2]), affine, canonical_shape(shape, ornt),
                  canonical_spacing(zooms, ornt))


def check_pair(pair: Pair, tolerance: float, ignore_affine: bool) -> Header | str:
    """The image's header when image and label (if any) form a pair, else one problem line."""
    image = read_header(pair.image)
    if isinstance(image, str) or pair.label is None:
        return image
    label = read_header(pair.label)
    if isinstance(label, str):
        return label
    if image.shape != label.shape:
        return f"{pair.label}: shape {label.shape} differs from image {pair.image.name} {image.shape}"
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > tolerance:
        if not ignore_affine:
            return (f"{pair.label}: affine differs from image {pair.image.name}'s by up to {diff:.4g} mm "
                    f"(--ignore-label-affine accepts it)")
        log.warning("%s: affine differs from %s's by up to %.4g mm; using the image's", pair.label,
                    pair.image.name, diff)
    return image


# --------------------------------------------------------------------------- one case


def read_label(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A label volume's integer-valued array in file order (scaling applied, 4-D singleton dropped)."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel/gzip/zlib errors on truncated files
        raise DataError(f"{path}: cannot read NIfTI ({_one_line(exc)})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != tuple(shape):
        raise DataError(f"{path}: label shape {data.shape} differs from the image's {tuple(shape)}")
    return data


def prepare_arrays(job: CaseJob) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (``image``, and ``label`` + ``native_label`` for a labeled scan) and attributes of one case."""
    from vasseg.data.nifti import axcodes, canonical_ornt, canonical_spacing, to_canonical
    from vasseg.data.preprocess import preprocess_scan, resample_label, target_shape
    from vasseg.io import read_volume

    pair = job.pair
    volume = read_volume(pair.image)
    ornt = canonical_ornt(volume.affine)
    image = to_canonical(volume.image, ornt)
    spacing = np.asarray(canonical_spacing(volume.spacing, ornt))
    shape = target_shape(image.shape, spacing, job.recipe)
    factor = np.asarray(shape, dtype=np.float64) / np.asarray(image.shape)
    arrays = {"image": preprocess_scan(image, job.recipe, shape)}
    if pair.label is not None:
        native = to_canonical(job.label_map.apply(read_label(pair.label, volume.image.shape), str(pair.label)), ornt)
        arrays |= {"label": resample_label(native, shape), "native_label": native}
    attrs = {
        "original_shape": list(volume.image.shape), "original_affine": volume.affine.tolist(),
        "original_spacing": list(volume.spacing), "orientation": axcodes(volume.affine),
        "canonical_shape": list(image.shape), "canonical_spacing": spacing.tolist(),
        "spacing": (spacing / factor).tolist(), "factor": factor.tolist(),
        "source_image": str(pair.image), "source_label": str(pair.label or ""),
    }
    return arrays, attrs


def write_case(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """One ``cases/<ID>.h5`` (gzip-compressed; it lives in the temporary folder)."""
    levels = {"image": 1, "label": 4, "native_label": 4}
    with h5py.File(path, "w") as f:
        for key, array in arrays.items():
            f.create_dataset(key, data=array, compression="gzip", compression_opts=levels[key])
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, str) else np.asarray(value)


def class_counts(label: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Voxels per class name (background included)."""
    counts = np.bincount(label.ravel(), minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def run_job(job: CaseJob) -> tuple[str, dict[str, Any] | None, str | None]:
    """Prepare and write one case: ``(id, manifest record, None)`` or ``(id, None, problem line)``."""
    from vasseg.io import ImageIOError

    try:
        arrays, attrs = prepare_arrays(job)
    except (DataError, ImageIOError) as exc:
        return job.pair.id, None, str(exc)
    write_case(job.out, arrays, attrs)
    keep = ("original_shape", "original_spacing", "orientation", "factor", "spacing", "source_image",
            "source_label")
    record = {k: attrs[k] for k in keep} | {"role": job.role, "labeled": "label" in arrays,
                                            "shape": list(arrays["image"].shape)}
    if "label" in arrays:
        names = job.label_map.classes
        record |= {"voxels": class_counts(arrays["label"], names),
                   "native_voxels": class_counts(arrays["native_label"], names)}
    return job.pair.id, record, None


# --------------------------------------------------------------------------- many cases


def _worker_init() -> None:
    """One thread per worker process: the pool, not each resampling, uses the cores."""
    import torch

    torch.set_num_threads(1)


def pool_size(workers: int, cases: int) -> int:
    """Worker processes for ``cases`` cases: ``workers`` (0: the CPU count, at most 8), and none
    (run here) for one worker or fewer than :data:`POOL_MIN_CASES` cases with the automatic choice."""
    if workers == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = 1 if cases < POOL_MIN_CASES else min(cores, 8)
    return max(1, min(workers, cases))


def run_jobs(jobs: list[CaseJob], workers: int, progress: bool) -> Iterator[tuple[str, dict | None, str | None]]:
    """Results of :func:`run_job` for every job, in order, under a progress bar."""
    from tqdm import tqdm

    size = pool_size(workers, len(jobs))
    bar = dict(total=len(jobs), desc="prepare", unit="case", disable=not progress, dynamic_ncols=True)
    if size == 1:
        yield from tqdm(map(run_job, jobs), **bar)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log.info("preparing %d cases with %d worker processes", len(jobs), size)
    # fork, as torch's DataLoader workers: a spawned worker re-imports torch (seconds per worker on a
    # busy host); one torch thread per worker (_worker_init) keeps OpenMP out of the forked children.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(size, mp_context=multiprocessing.get_context(method), initializer=_worker_init)
    try:
        yield from tqdm(pool.map(run_job, jobs), **bar)
    finally:  # an error stops the pool at once: queued cases are cancelled, not prepared
        pool.shutdown(wait=True, cancel_futures=True)

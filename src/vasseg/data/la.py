"""The left-atrium (LA) benchmark in the layout its users have on disk: reader and format plug-in.

::

    ROOT/2018LA_Seg_Training Set/<ID>/mri_norm2.h5   # datasets 'image' (float32) and 'label' (uint8)
    ROOT/train.list                                  # one id per line (80 ids)
    ROOT/test.list                                   # one id per line (20 ids)

Arrays keep the file's axis order (x, y, z); voxels are 0.625 mm isotropic. The synthetic
phantoms are written in this layout too. :class:`LAFormat` is ``data.dataset: la``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from tqdm import tqdm

from vasseg.data.format import DataFormat, Record
from vasseg.data.intensity import normalize_intensity
from vasseg.data.splits import read_id_list
from vasseg.data.volumes import Case, DataError, Spacing, VolumeSet, rescale_case
from vasseg.io import ImageIOError, check_volume_size
from vasseg.registry import register

if TYPE_CHECKING:
    from vasseg.io import Volume

log = logging.getLogger(__name__)

TRAIN_DIR = "2018LA_Seg_Training Set"
CASE_FILE = "mri_norm2.h5"
LA_SPACING: Spacing = (0.625, 0.625, 0.625)
LA_NUM_CLASSES = 2


class MissingCasesError(DataError):
    """Cases named in an id list have no file under the LA root; ``missing`` lists their ids."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)


def list_ids(root: str | Path, name: str = "train") -> list[str]:
    """Ids of ``ROOT/<name>.list`` (``name`` is "train" or "test", or a file name)."""
    fname = name if name.endswith(".list") else f"{name}.list"
    return read_id_list(Path(root) / fname)


def case_path(root: str | Path, case_id: str) -> Path:
    """``ROOT/2018LA_Seg_Training Set/<ID>/mri_norm2.h5``."""
    return Path(root) / TRAIN_DIR / case_id / CASE_FILE


def check_cases_exist(root: str | Path, ids: Sequence[str], list_name: str = "the id list") -> None:
    """Raise one `MissingCasesError` naming every id whose h5 file is absent under ``root``."""
    missing = [i for i in ids if not case_path(root, i).is_file()]
    if missing:
        raise MissingCasesError(
            f"LA root {root}: {len(missing)} of {len(ids)} cases listed in {list_name} are "
            f"missing: {', '.join(missing)}",
            missing,
        )


# What h5py raises on corrupt files besides OSError: damaged object headers surface as KeyError
# or RuntimeError from a lookup, damaged names as TypeError (bytes vs str), found by fuzzing.
H5_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError)


def _read_dataset(f: h5py.File, path: Path, key: str) -> np.ndarray:
    if key not in f:
        raise DataError(f"{path}: missing key {key!r} (keys: {', '.join(sorted(map(str, f.keys())))})")
    try:
        node = f[key]
        if isinstance(node, h5py.Dataset):
            check_volume_size(path, node.shape, node.dtype.itemsize)  # before allocating a corrupt header's shape
        return np.asarray(node[()])
    except ImageIOError as exc:
        raise DataError(str(exc)) from None
    except H5_ERRORS as exc:
        msg = " ".join(str(exc).split())
        raise DataError(f"{path}: cannot read dataset {key!r} ({msg})") from exc


def _check_label(label: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Label as uint8 after checking its values are class ids ``0..num_classes-1``."""
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise DataError(f"{path}: label holds non-integer values")
    if label.dtype.kind not in "fiub":
        raise DataError(f"{path}: label has unsupported dtype {label.dtype}")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        shown = ", ".join(str(v.item()) for v in bad[:10])
        raise DataError(f"{path}: label values {shown} outside 0..{num_classes - 1}")
    return label.astype(np.uint8, copy=False)


def read_h5_case(path: str | Path, num_classes: int = LA_NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one LA h5 file.

    Returns:
        image: float32 ``(X, Y, Z)`` (z-scored intensities, no unit);
        label: uint8 ``(X, Y, Z)`` with values in ``0..num_classes-1``.

    Raises DataError naming the file for a missing/corrupt/truncated file, missing keys,
    non-3-D, empty or mismatched shapes, non-finite intensities or out-of-range labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            image = _read_dataset(f, path, "image")
            label = _read_dataset(f, path, "label")
    except DataError:
        raise
    except H5_ERRORS as exc:  # not an HDF5 file, truncated superblock, damaged metadata, ...
        msg = " ".join(str(exc).split())
        raise DataError(f"{path}: cannot open as HDF5 ({msg})") from exc
    if image.ndim != 3:
        raise DataError(f"{path}: image must be 3-D (X, Y, Z), got shape {image.shape}")
    if 0 in image.shape:
        raise DataError(f"{path}: image has an empty axis (shape {image.shape})")
    if label.shape != image.shape:
        raise DataError(f"{path}: label shape {label.shape} != image shape {image.shape}")
    if image.dtype.kind not in "fiu":
        raise DataError(f"{path}: image has unsupported dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise DataError(f"{path}: image holds {int((~np.isfinite(image)).sum())} NaN/inf values")
    return image, _check_label(label, path, num_classes)


def read_la_case(root: str | Path, case_id: str, num_classes: int = LA_NUM_CLASSES,
                 spacing: Spacing = LA_SPACING, intensity: str = "file") -> Case:
    """One LA case at native resolution: image ``(1, X, Y, Z)`` float32, label ``(X, Y, Z)`` uint8.

    ``intensity`` is ``data.intensity`` (:mod:`vasseg.data.intensity`), applied at native resolution.
    """
    path = case_path(root, case_id)
    image, label = read_h5_case(path, num_classes)
    image = normalize_intensity(image, intensity)
    return Case(
        id=case_id,
        image=torch.from_numpy(image)[None],
        label=torch.from_numpy(label),
        spacing=spacing,
        source=str(path),
        native_shape=(image.shape[0], image.shape[1], image.shape[2]),
        native_spacing=spacing,
    )


def load_la(
    root: str | Path,
    ids: Sequence[str],
    scale: float = 1.0,
    spacing: Spacing = LA_SPACING,
    progress: bool = True,
    num_classes: int = LA_NUM_CLASSES,
    list_name: str = "the id list",
    intensity: str = "file",
) -> VolumeSet:
    """Load LA cases into a CPU `VolumeSet`.

    Args:
        root: the LA root (holds ``2018LA_Seg_Training Set``, ``train.list``, ``test.list``).
        ids: case ids, e.g. ``list_ids(root, "train")``.
        scale: < 1 down-samples for the CPU-scale protocol: images trilinearly, labels by argmax
            of the trilinearly interpolated one-hot; spacing grows accordingly and each case keeps
            its native label for native-resolution evaluation.
        spacing: voxel size in mm of the files.
        progress: show a tqdm bar.
        list_name: how error messages name the source of ``ids`` (e.g. "test.list").
        intensity: ``data.intensity``: "file" (the values as stored) or "zscore" (per volume).

    Every id is checked before any file is read, so one error names all missing cases.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: LA root is not a directory")
    if scale <= 0:
        raise DataError(f"{root}: scale must be > 0, got {scale}")
    check_cases_exist(root, ids, list_name)
    t0 = time.perf_counter()
    cases = []
    for case_id in tqdm(ids, desc="load LA", unit="case", disable=not progress, leave=False):
        case = read_la_case(root, case_id, num_classes, spacing, intensity)
        cases.append(rescale_case(case, scale, num_classes))
    volumes = VolumeSet(cases)
    log.info("loaded %d LA cases from %s at scale %g in %.1f s (%.0f MiB)", len(volumes), root,
             scale, time.perf_counter() - t0, volumes.nbytes() / 2**20)
    return volumes


def la_intensity(volume: Volume, mode: str) -> np.ndarray:
    """An LA-format model's input intensities: an LA .h5 gets ``data.intensity`` exactly as in
    training; any other file (a user's NIfTI) is z-scored over itself, the release's normalisation."""
    is_h5 = str(volume.source).endswith((".h5", ".hdf5"))
    return normalize_intensity(volume.image.astype(np.float32, copy=False), mode if is_h5 else "zscore")


@register("format", "la")
class LAFormat(DataFormat):
    """The LA h5 layout (and the phantoms).

    Preprocessing record ``{"kind": "zscore", "scale": s, "intensity": m}``: an LA ``.h5`` gets
    ``data.intensity`` ``m`` as in training (records without it are "file"), any other input (a
    NIfTI scan) is z-scored over itself; the image is resized trilinearly by ``s`` and the
    probabilities back to the input's grid. Label values are the class ids ``0..K-1``.
    """

    record_kind = "zscore"  # the name exported model files have carried since the first release
    class_names = ("background", "left atrium")

    def check_cases(self, ids: Sequence[str], list_name: str) -> None:
        check_cases_exist(self.root, ids, list_name)

    def read_case(self, case_id: str) -> Case:
        d = self.data
        case = read_la_case(self.root, case_id, d.num_classes, d.spacing, d.intensity)
        return rescale_case(case, d.scale, d.num_classes)

    def case_file(self, case_id: str) -> Path:
        return case_path(self.root, case_id)

    def preprocessing(self, run_dir: Path) -> Record:
        return {**super().preprocessing(run_dir), "intensity": self.data.intensity}

    @classmethod
    def input_intensities(cls, volume: Volume, record: Record) -> np.ndarray:
        return la_intensity(volume, record.get("intensity", "file"))

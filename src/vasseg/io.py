"""Reading images and writing label maps for ``vasseg predict``.

- NIfTI (``.nii``, ``.nii.gz``) through nibabel: the voxel array in its on-disk array order, the
  affine of the file (voxel index -> world mm) and the spacing from the header zooms (mm).
- The LA HDF5 files (``.h5``, ``.hdf5``): datasets ``image`` and ``label``, no geometry (the
  spacing is an argument, the affine ``diag(spacing, 1)``). :func:`read_h5` is their one reader,
  for predict and for the ``la`` dataset format.

Predictions are written as NIfTI label maps with the input's affine and zooms, so that they open
aligned with the image in ITK-SNAP or 3D Slicer. Writes are atomic: a temporary file next to the
target, fsync, ``os.replace``.

Every failure raises :class:`ImageIOError` with a one-line message that starts with the path.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.imageglobals import logger as nibabel_logger
from nibabel.spatialimages import HeaderDataError, ImageDataError

from vasseg.atomic import fsync_dir, fsync_file
from vasseg.config import LA_SPACING
from vasseg.errors import DataError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
HDF5_SUFFIXES = (".h5", ".hdf5")

# What nibabel, gzip/zlib and h5py raise on missing, truncated or corrupt files (fuzzing corrupt
# headers also gives nibabel's HeaderDataError and h5py's RuntimeError from damaged metadata).
_LIBRARY_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, zlib.error,
                   ImageFileError, HeaderDataError, ImageDataError)

# Default sform/qform code when the input gives none: 1 = "scanner anatomical".
_SCANNER_CODE = 1


class ImageIOError(DataError):
    """A file could not be read or written; the message is one line starting with the path."""


def _error(path: Path | str, problem: str) -> ImageIOError:
    """One-line error ``"<path>: <problem>"`` (library messages can span several lines)."""
    return ImageIOError(f"{path}: {' '.join(str(problem).split())}")


@dataclass
class Volume:
    """One image read from disk.

    Attributes:
        image: ``(X, Y, Z)`` float32 intensities, in the file's array order.
        affine: ``(4, 4)`` float64 voxel-index -> world (mm) transform.
        spacing: voxel size along X, Y, Z in mm.
        label: ``(X, Y, Z)`` integer labels when the file holds them (LA HDF5), else ``None``.
        header: the NIfTI header (reused when writing the prediction), ``None`` for HDF5.
        source: the path it was read from.
    """

    image: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    label: np.ndarray | None
    header: nib.Nifti1Header | None
    source: Path


def volume_format(path: Path | str) -> Literal["nifti", "hdf5"]:
    """``"nifti"`` or ``"hdf5"`` from the file name; :class:`ImageIOError` otherwise."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    raise _error(path, f"unknown image extension (expected one of {', '.join(NIFTI_SUFFIXES + HDF5_SUFFIXES)})")


# -- reading ----------------------------------------------------------------------------------


def read_volume(path: Path | str, default_spacing: tuple[float, float, float] = LA_SPACING) -> Volume:
    """Read a NIfTI or LA HDF5 volume and validate it.

    Args:
        path: ``.nii``, ``.nii.gz``, ``.h5`` or ``.hdf5`` file.
        default_spacing: voxel size in mm for formats without geometry (HDF5).

    Raises ImageIOError, one line naming the path: missing file, unknown extension, truncated or
    corrupt file, what :func:`read_h5` refuses, a NIfTI image not 3-D, empty or non-finite.
    """
    path = Path(path)
    kind = volume_format(path)
    if path.is_symlink() and not path.exists():
        raise _error(path, f"symbolic link to {os.readlink(path)}, which does not exist or loops")
    if not path.is_file():
        raise _error(path, "no such file")
    volume = _read_nifti(path) if kind == "nifti" else _read_hdf5(path, default_spacing)
    _validate(volume)
    logger.debug("read %s: shape %s, spacing %s mm", path, volume.image.shape, volume.spacing)
    return volume


def _read_nifti(path: Path) -> Volume:
    """NIfTI via nibabel; the data (with scl_slope/inter applied) is read here, not lazily.

    The header is checked before the voxels are read: a complex data type, or a shape that the
    file cannot hold or memory cannot take, is refused without allocating it.
    """
    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
    except _LIBRARY_ERRORS as exc:
        raise _error(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    _check_header(path, img)
    try:
        with _quiet_nibabel():
            data = np.asarray(img.get_fdata(dtype=np.float32))
            affine = np.asarray(img.affine, dtype=np.float64)
            zooms = tuple(float(z) for z in img.header.get_zooms())
    except _LIBRARY_ERRORS as exc:
        raise _error(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]  # a single time point / channel stored as 4-D
    if data.ndim != 3:
        raise _error(path, f"image must be 3-D (or 4-D with one volume), got shape {data.shape}")
    _check_arrays(path, data, None, _IMAGE_WORDS)
    return Volume(image=data, affine=affine, spacing=(zooms[0], zooms[1], zooms[2]), label=None, header=img.header,
                  source=path)


# deflate cannot compress by more than ~1032:1, so a .nii.gz holds at most this many bytes per byte
_MAX_DEFLATE_RATIO = 1100


def memory_limit() -> int:
    """Bytes a volume's float32 image may take: half the machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 1 << 34  # 16 GiB where the platform does not say


def check_volume_size(path: Path, shape: tuple[int, ...], itemsize: int, stored: int | None = None) -> None:
    """Refuse a header whose shape the file cannot hold (``stored``: the most bytes its content can
    decompress to) or whose float32 image would exceed :func:`memory_limit`, before allocating it."""
    voxels = int(np.prod([int(s) for s in shape], dtype=object))
    if stored is not None and voxels * itemsize > stored:
        raise _error(path, f"cannot read NIfTI: its header's shape {tuple(shape)} needs {voxels * itemsize} bytes "
                           f"of voxels, the file holds {path.stat().st_size} (truncated, or a corrupt header)")
    if voxels * 4 > memory_limit():
        raise _error(path, f"shape {tuple(shape)} needs {voxels * 4 / 2**30:.1f} GiB as float32, over the limit "
                           f"of {memory_limit() / 2**30:.1f} GiB (half this machine's memory)")


def _check_header(path: Path, img: nib.Nifti1Image) -> None:
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind == "c":
        raise _error(path, f"complex-valued image ({dtype}) is not supported; save its magnitude as a real image")
    size = path.stat().st_size
    stored = size * _MAX_DEFLATE_RATIO if path.name.lower().endswith(".gz") else size
    check_volume_size(path, img.shape, dtype.itemsize, stored)


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Mute nibabel's header complaints (printed to stderr by its own logger): a corrupt header
    becomes one ImageIOError line, and the fixes nibabel applies to a readable one are noise."""
    was = nibabel_logger.disabled
    nibabel_logger.disabled = True
    try:
        yield
    finally:
        nibabel_logger.disabled = was


def _read_hdf5(path: Path, spacing: tuple[float, float, float]) -> Volume:
    """LA HDF5 for predict: ``image`` (required) and ``label`` (optional) datasets, no geometry."""
    image, label = read_h5(path)
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    return Volume(image=image, affine=np.diag([*spacing, 1.0]).astype(np.float64), spacing=spacing,
                  label=label, header=None, source=path)


# One problem, two wordings (both pinned by the CLI tests): a case of a dataset and an image to predict.
_CASE_WORDS = {"open": "cannot open as HDF5 ({msg})", "key": "missing key {key!r} (keys: {keys})",
               "shape": "label shape {label} != image shape {image}", "finite": "image holds {n} NaN/inf values"}
_IMAGE_WORDS = {"open": "cannot read HDF5 ({type}: {msg})", "key": "HDF5 file has no {key!r} dataset",
                "shape": "label shape {label} differs from image shape {image}",
                "finite": "image has {n} non-finite values (NaN or inf)"}


def read_h5(path: Path | str, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The one reader of the LA HDF5 files (datasets ``image`` and ``label``; no geometry).

    With ``num_classes``: a dataset case, whose label is required and holds the class ids
    ``0..num_classes-1``; without: an image to predict, whose label is optional (ids >= 0).
    Returns the image float32 ``(X, Y, Z)`` and the label ``(X, Y, Z)`` uint8 (int64 past 255) or None.

    Raises ImageIOError, one line starting with the path: a missing or corrupt file or key, an entry
    that is not a dataset, a shape the file or memory cannot hold, not 3-D, an empty axis, non-finite
    intensities, mismatched shapes, a bad dtype or label value.
    """
    path, words = Path(path), _IMAGE_WORDS if num_classes is None else _CASE_WORDS
    if not path.is_file():
        raise _error(path, "no such file")
    try:
        with h5py.File(path, "r") as f:
            image = _dataset(f, "image", path, words)
            label = _dataset(f, "label", path, words) if num_classes is not None or "label" in f else None
    except ImageIOError:
        raise
    except _LIBRARY_ERRORS as exc:  # not an HDF5 file, truncated superblock, damaged metadata, ...
        raise _error(path, words["open"].format(type=type(exc).__name__, msg=exc)) from exc
    if image.dtype.kind not in "fiu":
        raise _error(path, f"image has unsupported dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    _check_arrays(path, image, label, words)
    return image, None if label is None else _as_label(label, path, num_classes)


def _dataset(f: h5py.File, key: str, path: Path, words: dict[str, str]) -> np.ndarray:
    """The whole dataset ``key`` as an array."""
    if key not in f:
        raise _error(path, words["key"].format(key=key, keys=", ".join(sorted(map(str, f.keys())))))
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise _error(path, f"HDF5 entry '{key}' is not a dataset")
    check_volume_size(path, node.shape, node.dtype.itemsize)  # unwritten chunks read as fill values
    return np.asarray(node[()])


def _as_label(label: np.ndarray, path: Path, num_classes: int | None) -> np.ndarray:
    """Integral values in ``0..num_classes-1`` (or >= 0); uint8 when they fit, else int64."""
    if label.dtype.kind not in "fiub":
        raise _error(path, f"label has unsupported dtype {label.dtype}")
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):  # NaN != NaN: refused too
        raise _error(path, "label holds non-integer values")
    values = np.unique(label)
    if (bad := values[(values < 0) | (values >= (num_classes or np.inf))]).size:
        allowed = f"0..{num_classes - 1}" if num_classes else "0 and up"
        raise _error(path, f"label values {', '.join(str(v.item()) for v in bad[:10])} outside {allowed}")
    return label.astype(np.uint8 if values.size == 0 or values[-1] <= 255 else np.int64, copy=False)


def _check_arrays(path: Path, image: np.ndarray, label: np.ndarray | None, words: dict[str, str]) -> None:
    """Checks of every reader: a 3-D image without empty axes, finite, the label's shape its own."""
    if image.ndim != 3:
        raise _error(path, f"image must be 3-D, got shape {image.shape}")
    if 0 in image.shape:
        raise _error(path, f"image has an empty axis (shape {image.shape})")
    if not np.isfinite(image).all():
        raise _error(path, words["finite"].format(n=int(image.size - np.count_nonzero(np.isfinite(image)))))
    if label is not None and label.shape != image.shape:
        raise _error(path, words["shape"].format(label=label.shape, image=image.shape))


def _validate(volume: Volume) -> None:
    """Geometry checks of a read volume (its arrays are checked by its reader)."""
    path = volume.source
    if not np.isfinite(volume.affine).all() or abs(np.linalg.det(volume.affine[:3, :3])) < 1e-12:
        raise _error(path, "singular affine (a zero voxel size or collapsed axes in the header's pixdim/sform/"
                           "qform): the voxels have no place in space")
    if not all(np.isfinite(s) and s > 0 for s in volume.spacing):
        raise _error(path, f"voxel spacing {volume.spacing} must be positive and finite")


# -- writing ----------------------------------------------------------------------------------


def write_label_nifti(path: Path | str, labels: np.ndarray, affine: np.ndarray,
                      header: nib.Nifti1Header | None = None) -> Path:
    """Write an ``(X, Y, Z)`` label map as NIfTI, aligned with the image it was predicted from.

    The file is uint8 (uint16 when a label exceeds 255); its sform and qform both equal
    ``affine`` (codes taken from ``header`` when it sets them, else "scanner"), and its zooms
    follow from the affine, so it overlays the input image in ITK-SNAP / 3D Slicer. The write is
    atomic: a temporary file in the target's directory, fsync, then ``os.replace``; on failure
    neither a partial target nor the temporary file is left behind.

    Args:
        path: ``.nii`` or ``.nii.gz`` target; its directory must exist and be writable.
        labels: ``(X, Y, Z)`` non-negative integer (or bool) array.
        affine: ``(4, 4)`` voxel-index -> world (mm) transform, usually ``Volume.affine``.
        header: the input's NIfTI header (``Volume.header``) to carry units and codes over.
    Returns the written path.
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    check_parent_folder(path)
    img = _label_image(path, labels, affine, header)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        nib.save(img, str(tmp))
        fsync_file(tmp)
        os.replace(tmp, path)
    except _LIBRARY_ERRORS as exc:
        raise _error(path, f"cannot write NIfTI ({type(exc).__name__}: {exc})") from exc
    finally:
        # Whatever happened, never leave the temporary file behind.
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    logger.info("wrote %s: shape %s, dtype %s", path, labels.shape, img.get_data_dtype())
    return path


def check_label_output(path: Path | str) -> Path:
    """Fail early (before any inference) when ``path`` cannot receive a NIfTI label map."""
    path = Path(path)
    _nifti_suffix(path)
    check_parent_folder(path)
    return path


def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise _error(path, "label output must end in .nii or .nii.gz")


def check_parent_folder(path: Path) -> None:
    """The folder ``path`` goes into must exist, be a folder and be writable."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise _error(path, f"{parent} is a file, not a folder")
    if not parent.is_dir():
        raise _error(path, f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _error(path, f"output directory {parent} is not writable")


def _label_array(path: Path, labels: np.ndarray) -> np.ndarray:
    """Validate labels and pick the smallest unsigned dtype that holds them."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise _error(path, f"labels must be 3-D (X, Y, Z), got shape {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise _error(path, f"labels must be an integer or bool array, got dtype {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise _error(path, f"label values must lie in [0, 65535], got [{low}, {high}]")
    return labels.astype(np.uint8 if high <= 255 else np.uint16)


def _label_image(
    path: Path, labels: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None
) -> nib.Nifti1Image:
    """A Nifti1Image of the labels whose sform, qform and zooms all match ``affine``."""
    data = _label_array(path, labels)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise _error(path, f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    source = header if isinstance(header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(data, affine, header=source.copy() if source is not None else None)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    # The input's intensity scaling and display window must not apply to labels.
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    hdr["descrip"] = b"vasseg label map"
    qcode, scode = _codes(source)
    img.set_sform(affine, code=scode)
    img.set_qform(affine, code=qcode)
    if not np.allclose(img.get_qform(), affine, atol=1e-5):
        # The qform is a rotation (quaternion) + zooms; it cannot hold a shear. Viewers then
        # must use the sform, so mark the approximate qform unused.
        logger.warning("%s: affine has shear; qform left unset, sform holds the affine", path)
        img.set_qform(None, code=0)
    if source is None:
        hdr.set_xyzt_units("mm")
    return img


def _codes(header: nib.Nifti1Header | None) -> tuple[int, int]:
    """(qform_code, sform_code) of the input, defaulting unset codes to "scanner"."""
    if header is None:
        return _SCANNER_CODE, _SCANNER_CODE
    q, s = int(header["qform_code"]), int(header["sform_code"])
    return q or s or _SCANNER_CODE, s or q or _SCANNER_CODE

"""Plain image/label pairs for ``vasseg prepare --images IMAGES --labels LABELS``, matched by file name.

- Two folders: ``IMAGES/<name>.nii[.gz]`` pairs with ``LABELS/<name>.nii[.gz]``; an image named
  ``<name>_0000.nii[.gz]`` (nnU-Net's channel suffix) pairs with the label ``<name>.nii[.gz]``.
  The case id is ``<name>``.
- Two files: one image and its label (e.g. ``ct.nii.gz`` and ``seg.nii.gz``); the case id is
  the image's file name without extension.

As in :func:`vasseg.data.nifti.discover_dataset`, no voxel is read and nothing is dropped
silently: every image without a label, label without an image and unusable name is a problem
line naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from vasseg.data.discovery import SAFE_ID, Discovery, Pair, strip_nifti
from vasseg.data.volumes import DataError

NIFTI_NAME = re.compile(r"\.nii(?:\.gz)?$", re.IGNORECASE)


def discover_pairs(images: str | Path, labels: str | Path) -> Discovery:
    """The pairs of an image folder and a label folder, or of one image file and one label file."""
    images, labels = Path(images).expanduser(), Path(labels).expanduser()
    for path, flag in ((images, "--images"), (labels, "--labels")):
        if not path.exists():
            raise DataError(f"{path}: {flag} not found")
    if images.is_file() and labels.is_file():
        return _single_pair(images, labels)
    if images.is_dir() and labels.is_dir():
        return _folder_pairs(images, labels)
    raise DataError(f"{images}: --images and --labels must both be folders or both be files")


def _single_pair(image: Path, label: Path) -> Discovery:
    for path in (image, label):
        if not NIFTI_NAME.search(path.name):
            raise DataError(f"{path}: not a .nii or .nii.gz file")
    case_id = strip_nifti(image.name)
    problems = [] if SAFE_ID.match(case_id) else [f"{image}: case id {case_id!r} is not usable as a file name"]
    pairs = [] if problems else [Pair(case_id, image, label)]
    return Discovery("pairs", [image, label], pairs, problems)


def _by_name(folder: Path, strip_channel: bool) -> tuple[dict[str, Path], list[str]]:
    """NIfTI files of ``folder`` (not hidden) by case name; duplicates are problems."""
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not NIFTI_NAME.search(path.name):
            continue
        name = strip_nifti(path.name)
        name = re.sub(r"_0000$", "", name) if strip_channel else name
        if name in found:
            problems.append(f"{path}: case name {name} also used by {found[name].name}")
            continue
        found[name] = path
    return found, problems


def _folder_pairs(images: Path, labels: Path) -> Discovery:
    image_files, problems = _by_name(images, strip_channel=True)
    label_files, label_problems = _by_name(labels, strip_channel=False)
    problems += label_problems
    pairs = []
    for name in sorted(set(image_files) | set(label_files)):
        if name not in label_files:
            problems.append(f"{image_files[name]}: image without a label {name}.nii[.gz] in {labels}")
        elif name not in image_files:
            problems.append(f"{label_files[name]}: label without an image {name}.nii[.gz] in {images}")
        elif not SAFE_ID.match(name):
            problems.append(f"{image_files[name]}: case id {name!r} is not usable as a file name")
        else:
            pairs.append(Pair(name, image_files[name], label_files[name]))
    if not pairs and not problems:
        raise DataError(f"{images}: no .nii / .nii.gz images")
    return Discovery("pairs", [images, labels], pairs, problems)

"""nnU-Net v2 raw datasets and unlabeled image folders, as ``vasseg prepare`` finds them.

An nnU-Net v2 raw dataset folder (``Dataset042_Heart/``) holds::

    dataset.json           {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "heart": 1},
                            "numTraining": 10, "file_ending": ".nii.gz"}
    imagesTr/<case>_0000<ending>   training images (channel 0000)
    labelsTr/<case><ending>        their label maps
    imagesTs/<case>_0000<ending>   optional test images (labelsTs/<case><ending> optional)

An image of ``imagesTr`` without a label is an unlabeled case (nnU-Net itself would refuse it;
vasseg trains on it without labels and says how many there are). Only one channel is read:
files ``_0001`` ... and a ``channel_names`` with several entries are refused in one line (multi-
channel input is not supported yet). ``--unlabeled`` folders (or glob patterns) add images without
labels; a folder whose files carry nnU-Net's ``_0000`` suffix is read with nnU-Net's names.

As in :mod:`vasseg.data.nifti`, no voxel is read here and nothing is dropped silently: files that
do not fit (no image for a label, a badly named file, a case name used twice, an unlabeled file
whose case has a label) are problem lines naming the file; ``vasseg prepare`` fails on them
unless ``--skip-bad``. A ``dataset.json`` that contradicts the files, an empty folder and a
multi-channel dataset stop discovery at once (:class:`~vasseg.data.volumes.DataError`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Sequence

from vasseg.data.discovery import SAFE_ID, Discovery, Pair, strip_nifti
from vasseg.data.volumes import DataError

log = logging.getLogger(__name__)

NIFTI_ENDINGS = (".nii.gz", ".nii")
CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
MULTI_CHANNEL = "multi-channel images are not supported yet (vasseg trains on one channel, _0000)"


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_ENDINGS)


def _files(folder: Path) -> list[Path]:
    """Visible NIfTI files of ``folder`` (not recursive), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_nifti(p))


def dataset_settings(root: Path, meta: dict) -> tuple[str, dict[str, int]]:
    """``file_ending`` and the ``labels`` ({name: value}) of an nnU-Net v2 dataset.json, checked."""
    where = root / "dataset.json"
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending.lower() not in NIFTI_ENDINGS:
        raise DataError(f"{where}: file_ending {ending!r}: vasseg reads NIfTI (.nii.gz, .nii) only")
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{where}: 'channel_names' must map channel ids to names, e.g. {{\"0\": \"CT\"}}")
    if len(channels) > 1:
        raise DataError(f"{where}: channel_names lists {len(channels)} channels; {MULTI_CHANNEL}")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{where}: 'labels' must map names to values, e.g. {{\"background\": 0, \"heart\": 1}}")
    values: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{where}: label {name!r}: {value!r} is not a non-negative integer "
                            f"(region-based labels are not supported)")
        values[str(name)] = value
    if values.get("background") != 0:
        raise DataError(f"{where}: 'labels' must name value 0 'background'")
    if len(set(values.values())) != len(values):
        raise DataError(f"{where}: 'labels' gives one value two names")
    return ending, values


def _channel_images(folder: Path, ending: str) -> tuple[dict[str, Path], list[str]]:
    """``<case>_0000<ending>`` files of an images folder by case; other channels are refused."""
    found, problems = {}, []
    files = _files(folder)
    for path in files:
        if not path.name.endswith(ending):
            raise DataError(_ending_mismatch(path, ending))
        match = CHANNEL.match(path.name[: -len(ending)])
        if match is None:
            problems.append(f"{path}: not named <case>_0000{ending} as nnU-Net's {folder.name}/ requires")
        elif match["channel"] != "0000":
            raise DataError(f"{path}: channel {match['channel']}: {MULTI_CHANNEL}")
        elif not SAFE_ID.match(match["case"]):
            problems.append(f"{path}: case name {match['case']!r} is not usable as a file name")
        else:
            found[match["case"]] = path
    return found, problems


def _labels(folder: Path, ending: str) -> tuple[dict[str, Path], list[str]]:
    found, problems = {}, []
    if not folder.is_dir():
        return found, problems
    for path in _files(folder):
        if not path.name.endswith(ending):
            raise DataError(_ending_mismatch(path, ending))
        found[path.name[: -len(ending)]] = path
    return found, problems


def _ending_mismatch(path: Path, ending: str) -> str:
    return f"{path}: dataset.json says file_ending {ending!r}, this file ends otherwise"


def discover_nnunet(root: Path, meta: dict) -> Discovery:
    """Labeled, unlabeled and test cases of an nnU-Net v2 raw dataset folder (module docstring)."""
    ending, labels = dataset_settings(root, meta)
    images_dir = root / "imagesTr"
    if not images_dir.is_dir() or not _files(images_dir):
        raise DataError(f"{images_dir}: no images (<case>_0000{ending}); an nnU-Net dataset needs imagesTr/")
    images, problems = _channel_images(images_dir, ending)
    label_files, label_problems = _labels(root / "labelsTr", ending)
    problems += label_problems
    declared = meta.get("numTraining")
    if isinstance(declared, int) and declared != len(label_files):
        raise DataError(f"{root / 'dataset.json'}: numTraining is {declared} but labelsTr/ holds "
                        f"{len(label_files)} label files")
    pairs, unlabeled = [], []
    for case in sorted(set(images) | set(label_files)):
        if case not in images:
            problems.append(f"{label_files[case]}: label without an image {case}_0000{ending} in imagesTr/")
        elif case in label_files:
            pairs.append(Pair(case, images[case], label_files[case]))
        else:
            unlabeled.append(Pair(case, images[case], None))
    if unlabeled:
        log.info("%s: %d of %d images have no label in labelsTr/: they are unlabeled cases", images_dir,
                 len(unlabeled), len(images))
    test, test_problems = _test_cases(root, ending, set(images))
    names = {str(v): k for k, v in labels.items()}
    return Discovery("nnunet", [root], pairs, problems + test_problems, names, unlabeled, test, meta)


def _test_cases(root: Path, ending: str, train_ids: set[str]) -> tuple[list[Pair], list[str]]:
    """``imagesTs`` (+ ``labelsTs``): the test split; an empty or absent folder gives none."""
    folder = root / "imagesTs"
    if not folder.is_dir():
        return [], []
    images, problems = _channel_images(folder, ending)
    if not images and not problems:
        log.info("%s: empty; the prepared dataset has no test split", folder)
    labels, label_problems = _labels(root / "labelsTs", ending)
    problems += label_problems
    test = []
    for case, path in sorted(images.items()):
        if case in train_ids:
            problems.append(f"{path}: case name {case} is also in imagesTr/; duplicate case names across folders")
        else:
            test.append(Pair(case, path, labels.get(case)))
    problems += [f"{p}: label without an image {c}_0000{ending} in imagesTs/" for c, p in labels.items()
                 if c not in images]
    return test, problems


# --------------------------------------------------------------------------- unlabeled folders


def unlabeled_files(spec: str | Path) -> list[Path]:
    """The NIfTI images ``--unlabeled SPEC`` names: a folder's (not recursive), a glob's, or one file."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = _files(path)
        if not files:
            raise DataError(f"{path}: --unlabeled folder holds no .nii/.nii.gz images")
        return files
    if path.is_file():
        if not is_nifti(path):
            raise DataError(f"{path}: --unlabeled file is not a .nii or .nii.gz image")
        return [path]
    if not any(c in text for c in "*?["):
        raise DataError(f"{path}: --unlabeled folder not found")
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if is_nifti(Path(p)) and Path(p).is_file())
    if not files:
        raise DataError(f"{text}: --unlabeled pattern matches no .nii/.nii.gz image")
    return files


def unlabeled_cases(files: list[Path]) -> tuple[list[Pair], list[str]]:
    """Case names of one ``--unlabeled`` set: nnU-Net's (``_0000`` stripped) when any file has that
    suffix, else the file name without its extension."""
    nnunet_names = any(strip_nifti(p.name).endswith("_0000") for p in files)
    cases, problems = [], []
    for path in files:
        name = strip_nifti(path.name)
        match = CHANNEL.match(name) if nnunet_names else None
        if match is not None and match["channel"] != "0000":
            raise DataError(f"{path}: channel {match['channel']}: {MULTI_CHANNEL}")
        name = match["case"] if match is not None else name
        if not SAFE_ID.match(name):
            problems.append(f"{path}: case name {name!r} is not usable as a file name")
        else:
            cases.append(Pair(name, path, None))
    return cases, problems


def add_unlabeled(discovery: Discovery, specs: Sequence[str | Path]) -> Discovery:
    """``discovery`` with the images of every ``--unlabeled`` SPEC added as unlabeled cases.

    A case name that is already labeled, or used twice across the folders, is a problem line
    naming the file (and the other one).
    """
    owner = {p.id: p for p in (*discovery.pairs, *discovery.unlabeled, *discovery.test)}
    for spec in specs:
        cases, problems = unlabeled_cases(unlabeled_files(spec))
        discovery.problems += problems
        for case in cases:
            other = owner.get(case.id)
            if other is not None and other.label is not None and other in discovery.pairs:
                discovery.problems.append(f"{case.image}: given as unlabeled, but case {case.id} has a label "
                                          f"({other.label}); give each scan once")
            elif other is not None:
                discovery.problems.append(f"{case.image}: case name {case.id} is also used by {other.image}; "
                                          f"duplicate case names across folders")
            else:
                owner[case.id] = case
                discovery.unlabeled.append(case)
    if specs:
        log.info("--unlabeled: %d images without labels in all", len(discovery.unlabeled))
    return discovery

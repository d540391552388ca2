"""NIfTI datasets as users have them: discovery, canonical orientation, synthetic CT phantoms.

Two layouts are recognised (:func:`discover_dataset`):

- **BTCV-style pairs**: files named ``img<ID>.nii[.gz]`` and ``label<ID>.nii[.gz]`` anywhere under
  the root (BTCV ``RawData/Training/{img,label}``; Gibson et al.'s ``label_*_multiorgan`` folders
  next to the images). Pairs are matched by ``<ID>``.
- **Medical Segmentation Decathlon**: ``dataset.json`` with a ``training`` list of
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` entries; without that list
  it is an nnU-Net v2 raw dataset (:mod:`vasseg.data.nnunet`: labeled, unlabeled and test cases).

Discovery never reads voxel data and never drops a file silently: every image without a label,
label without an image, duplicate id or missing file is returned as a one-line problem naming the
file; the caller decides (``vasseg prepare`` fails unless asked to skip them).

Orientation: arrays are brought to the closest canonical (RAS+) axis order by flips and
permutations only (no interpolation), so CTs stored in different orientations line up before
resampling, and predictions map back exactly (:func:`to_canonical` / :func:`from_canonical`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from vasseg.data.discovery import _NII, SAFE_ID, Discovery, Pair, strip_nifti  # noqa: F401 - re-exported
from vasseg.data.volumes import DataError
from vasseg.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_NAME = re.compile(rf"^img[_-]?(?P<id>.+?){_NII}$", re.IGNORECASE)
LABEL_NAME = re.compile(rf"^label[_-]?(?P<id>.+?){_NII}$", re.IGNORECASE)


def discover_dataset(root: str | Path) -> Discovery:
    """Find the cases of one dataset folder: MSD if its ``dataset.json`` has a ``training`` list,
    nnU-Net v2 (:mod:`vasseg.data.nnunet`) if it has none, else BTCV-style pairs."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if (root / "dataset.json").is_file():
        meta = read_dataset_json(root / "dataset.json")
        if "training" not in meta:
            from vasseg.data.nnunet import discover_nnunet

            return discover_nnunet(root, meta)
        return _discover_msd(root, meta)
    return _discover_btcv(root)


def read_dataset_json(path: Path) -> dict:
    """The JSON object of a ``dataset.json``; one line naming the file when it is not one."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({' '.join(str(exc).split())})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def discover_sources(roots: list[str | Path]) -> Discovery:
    """Pairs of one or more dataset folders; with several, ids get ``<folder name>_`` prefixes."""
    found = [discover_dataset(r) for r in roots]
    if len(found) == 1:
        return found[0]
    if nnunet := [d.roots[0] for d in found if d.layout == "nnunet"]:
        raise DataError(f"{nnunet[0]}: an nnU-Net dataset is prepared as the only SOURCE (its dataset.json "
                        f"defines the labels); add more scans with --unlabeled")
    pairs, problems, seen = [], [], {}
    for disc in found:
        prefix = disc.roots[0].name
        problems += disc.problems
        for p in disc.pairs:
            pair = Pair(f"{prefix}_{p.id}", p.image, p.label)
            if pair.id in seen:
                problems.append(f"{p.image}: case id {pair.id} also used by {seen[pair.id]}")
                continue
            seen[pair.id] = p.image
            pairs.append(pair)
    return Discovery("mixed", [d.roots[0] for d in found], pairs, problems)


def _discover_btcv(root: Path) -> Discovery:
    images, labels, problems = _collect(root, IMAGE_NAME), _collect(root, LABEL_NAME), []
    pairs = []
    for case_id in sorted(set(images) | set(labels)):
        imgs, labs = images.get(case_id, []), labels.get(case_id, [])
        if len(imgs) > 1 or len(labs) > 1:
            problems += [f"{p}: case id {case_id} is not unique under {root} (give the folders as "
                         f"separate sources)" for p in imgs + labs]
        elif not labs:
            problems.append(f"{imgs[0]}: image without a matching label{case_id}.nii[.gz]")
        elif not imgs:
            problems.append(f"{labs[0]}: label without a matching img{case_id}.nii[.gz]")
        elif not SAFE_ID.match(case_id):
            problems.append(f"{imgs[0]}: case id {case_id!r} is not usable as a file name")
        else:
            pairs.append(Pair(case_id, imgs[0], labs[0]))
    if not pairs and not problems:
        raise DataError(f"{root}: no img*.nii[.gz] / label*.nii[.gz] files and no dataset.json")
    return Discovery("btcv", [root], pairs, problems)


def _collect(root: Path, pattern: re.Pattern[str]) -> dict[str, list[Path]]:
    """Files under ``root`` whose name matches ``pattern``, grouped by their id (hidden skipped)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        match = pattern.match(path.name)
        if match and path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts):
            out.setdefault(match["id"], []).append(path)
    return out


def _discover_msd(root: Path, meta: dict) -> Discovery:
    """MSD: dataset.json's ``training`` list of image/label entries (its ``modality`` is the
    channel name of :func:`vasseg.data.modality.detect_modality`)."""
    pairs, problems = _msd_from_list(root, root / "dataset.json", meta["training"])
    return Discovery("msd", [root], pairs, problems, label_names(meta.get("labels")), meta=meta)


def label_names(labels: object) -> dict[str, str]:
    """``{id: name}`` from MSD (``{"1": "liver"}``) or nnU-Net v2 (``{"liver": 1}``) labels."""
    if not isinstance(labels, dict):
        return {}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        return {str(v): str(k) for k, v in labels.items()}
    return {str(k): str(v) for k, v in labels.items()}


def _msd_from_list(root: Path, meta_path: Path, entries: object) -> tuple[list[Pair], list[str]]:
    if not isinstance(entries, list):
        raise DataError(f"{meta_path}: 'training' must be a list of image/label entries")
    pairs, problems, seen = [], [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{meta_path}: training[{i}] lacks 'image' or 'label'")
            continue
        image, label = root / str(entry["image"]), root / str(entry["label"])
        case_id = re.sub(r"_0000$", "", strip_nifti(image.name))
        missing = [p for p in (image, label) if not p.is_file()]
        if missing:
            problems += [f"{p}: listed in {meta_path.name} (training[{i}]) but missing" for p in missing]
        elif case_id in seen or not SAFE_ID.match(case_id):
            problems.append(f"{image}: case id {case_id!r} is duplicated or not usable as a file name")
        else:
            seen.add(case_id)
            pairs.append(Pair(case_id, image, label))
    return pairs, problems


# --------------------------------------------------------------------------- orientation


def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """Orientation ``(3, 2)`` that takes the file's array axes to the closest RAS+ order."""
    return io_orientation(np.asarray(affine, dtype=np.float64))


def to_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` in file order -> closest RAS+ order (flips and transposes only)."""
    return np.ascontiguousarray(apply_orientation(array, ornt))


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical`: back to the file's array order."""
    back = ornt_transform(axcodes2ornt("RAS"), ornt)
    return np.ascontiguousarray(apply_orientation(array, back))


def canonical_spacing(spacing: tuple[float, ...], ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) per axis after :func:`to_canonical`."""
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = float(spacing[axis])
    return (out[0], out[1], out[2])


def axcodes(affine: np.ndarray) -> str:
    """Orientation letters of an affine, e.g. ``"LPS"``."""
    return "".join(str(c) for c in nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


# --------------------------------------------------------------------------- synthetic CT

BTCV_NAMES = {0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder",
              5: "esophagus", 6: "liver", 7: "stomach", 8: "aorta", 9: "inferior vena cava",
              10: "portal vein and splenic vein", 11: "pancreas", 12: "right adrenal gland",
              13: "left adrenal gland", 14: "duodenum"}

# Phantom organs in the BTCV/Gibson id scheme, drawn in this order (later ones win overlaps):
# (id, mean HU, centre, radii); centre and radii are fractions of the field of view in canonical
# RAS+ array order (x towards the patient's right, y anterior, z superior). Right kidney (id 2)
# is not one of the paper's 8 organs: it tests that unmapped ids become background.
PHANTOM_ORGANS: tuple[tuple[int, float, tuple[float, float, float], tuple[float, float, float]], ...] = (
    (6, 100.0, (0.70, 0.55, 0.65), (0.20, 0.22, 0.22)),   # liver
    (1, 125.0, (0.24, 0.40, 0.66), (0.09, 0.11, 0.13)),   # spleen
    (2, 180.0, (0.68, 0.30, 0.42), (0.07, 0.08, 0.13)),   # right kidney
    (3, 180.0, (0.32, 0.30, 0.45), (0.07, 0.08, 0.13)),   # left kidney
    (7, 25.0, (0.36, 0.66, 0.68), (0.12, 0.10, 0.13)),    # stomach
    (11, 85.0, (0.47, 0.46, 0.52), (0.16, 0.05, 0.06)),   # pancreas
    (14, 55.0, (0.60, 0.50, 0.40), (0.05, 0.07, 0.12)),   # duodenum
    (4, 5.0, (0.62, 0.72, 0.50), (0.05, 0.06, 0.08)),     # gallbladder
    (5, 70.0, (0.46, 0.50, 0.90), (0.04, 0.04, 0.14)),    # esophagus
)
PHANTOM_NOISE_HU = 12.0


def _unit_grid(shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Voxel-centre coordinates as fractions of the field of view, one array per axis."""
    axes = [(np.arange(n, dtype=np.float32) + 0.5) / n for n in shape]
    return list(np.meshgrid(*axes, indexing="ij"))


def _body_hu(grid: list[np.ndarray]) -> np.ndarray:
    """Air outside an elliptic body, a fat shell, soft tissue inside and a vertebral column."""
    x, y, _ = grid
    r = ((x - 0.5) / 0.47) ** 2 + ((y - 0.5) / 0.42) ** 2
    hu = np.where(r <= 1.0, -90.0, -1000.0).astype(np.float32)
    hu[r <= 0.78] = 40.0
    hu[((x - 0.5) / 0.07) ** 2 + ((y - 0.16) / 0.07) ** 2 <= 1.0] = 450.0
    return hu


def make_synthetic_ct(shape: tuple[int, int, int] = (48, 40, 24),
                      seed: int | tuple[int, ...] = 0) -> tuple[np.ndarray, np.ndarray]:
    """One abdominal CT phantom in canonical RAS+ array order.

    Returns:
        hu: int16 ``(X, Y, Z)`` Hounsfield units (air -1000, fat, soft tissue, bone, organs of
            distinct mean HU with Gaussian noise of 12 HU).
        label: uint8 ``(X, Y, Z)`` with BTCV/Gibson ids (:data:`BTCV_NAMES`); every organ of
            :data:`PHANTOM_ORGANS` keeps at least one voxel.
    """
    rng = np.random.default_rng(seed)
    grid = _unit_grid(shape)
    hu, label = _body_hu(grid), np.zeros(shape, np.uint8)
    for organ_id, mean_hu, centre, radii in PHANTOM_ORGANS:
        c = np.asarray(centre) + rng.uniform(-0.03, 0.03, 3)
        r = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1.0
        if not inside.any():  # too small for this grid: keep one voxel so the organ exists
            inside[tuple(min(int(ci * n), n - 1) for ci, n in zip(c, shape))] = True
        label[inside] = organ_id
        hu[inside] = mean_hu + rng.normal(0.0, 6.0)
    hu = hu + rng.normal(0.0, PHANTOM_NOISE_HU, shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), label


def _phantom_affine(shape: tuple[int, int, int], rng: np.random.Generator,
                    flipped: bool) -> np.ndarray:
    """Anisotropic spacing (~0.8 x 0.8 x 2.5 mm), an offset, and LPS storage when ``flipped``."""
    inplane = float(rng.uniform(0.7, 0.9))
    spacing = np.array([inplane, inplane, 2.5])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = rng.uniform(-200.0, -100.0, 3)
    if flipped:  # stored as DICOM-derived files often are: x and y run the other way
        affine[0, 0], affine[1, 1] = -spacing[0], -spacing[1]
        affine[:2, 3] += spacing[:2] * (np.asarray(shape[:2]) - 1)
    return affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` with ``affine`` as its qform and sform (mm), creating the folder; returns ``path``."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_synthetic_ct_dataset(root: str | Path, n: int, shape: tuple[int, int, int] = (48, 40, 24),
                               seed: int = 0, layout: str = "btcv") -> Path:
    """Write ``n`` CT phantoms with BTCV/Gibson label ids as a NIfTI dataset; returns ``root``.

    ``layout="btcv"``: ``ROOT/img/img0001.nii.gz`` + ``ROOT/label/label0001.nii.gz``;
    ``layout="msd"``: ``ROOT/imagesTr/ct_001.nii.gz`` + ``ROOT/labelsTr/ct_001.nii.gz`` +
    ``ROOT/dataset.json``. Images are int16 HU, labels uint8. Odd cases are stored flipped in x
    and y (LPS, with the affine saying so), so the anatomy is the same in world coordinates.
    """
    if layout not in ("btcv", "msd"):
        raise ConfigError(f"layout must be btcv or msd, got {layout!r}")
    root = Path(root)
    entries = []
    for i in range(1, n + 1):
        hu, label = make_synthetic_ct(shape, (seed, i))
        flipped = i % 2 == 0
        affine = _phantom_affine(shape, np.random.default_rng((seed, i, 1)), flipped)
        if flipped:
            hu, label = hu[::-1, ::-1], label[::-1, ::-1]
        if layout == "btcv":
            image_path, label_path = root / "img" / f"img{i:04d}.nii.gz", root / "label" / f"label{i:04d}.nii.gz"
        else:
            image_path, label_path = root / "imagesTr" / f"ct_{i:03d}.nii.gz", root / "labelsTr" / f"ct_{i:03d}.nii.gz"
        save_nifti(image_path, np.ascontiguousarray(hu), affine)
        save_nifti(label_path, np.ascontiguousarray(label), affine)
        entries.append({"image": f"./{image_path.relative_to(root)}", "label": f"./{label_path.relative_to(root)}"})
    if layout == "msd":
        meta = {"name": "SyntheticAbdomenCT", "modality": {"0": "CT"},
                "labels": {str(k): v for k, v in BTCV_NAMES.items()}, "numTraining": n,
                "training": entries, "test": []}
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    log.info("wrote %d synthetic CTs (%s layout) under %s", n, layout, root)
    return root

"""The prepared dataset written by ``vasseg prepare``: layout, reader, predict hooks, and its format
plug-in (:class:`PreparedFormat`, ``data.dataset: prepared``).

Layout::

    ROOT/prepared.json     manifest: sources, label map, intensity scheme (modality ct: HU window
                           and normalisation; mr: percentile clip + z-score), target grid (a fixed
                           ``shape`` or a ``target_spacing``), class names, the split, per-case
                           geometry and role, every skipped file
    ROOT/cases/<ID>.h5     image         float32 (X, Y, Z) on the prepared grid, normalised
                           label         uint8 (X, Y, Z) project classes on the prepared grid
                           native_label  uint8 (X0, Y0, Z0) project classes on the original grid
                           attributes    CASE_ATTRS (original shape, affine, spacing, factor ...)
                           (an unlabeled or unlabeled test case has no label / native_label)
    ROOT/train.list        training ids: labeled, then unlabeled, then validation
    ROOT/test.list         test ids
    ROOT/split.yaml        labeled / unlabeled / val / test ids
    ROOT/config.yaml       the planned experiment (:mod:`vasseg.data.plan`)

Every array is in the closest canonical RAS+ axis order of its source file (flips and transposes
only, see :mod:`vasseg.data.nifti`); ``original_affine`` / ``original_shape`` give the file's own
grid back. The prepared grid spans the same field of view as the original (``align_corners=False``
resampling), so mapping a prediction back is a resize to the original shape.

Native labels are not held in memory by the loaded cases (a 512x512x200 CT label is 50 MB):
evaluation reads them one case at a time with :func:`read_native_label`. Label maps (source ids
<-> classes) are :mod:`vasseg.data.labelmap`'s; intensities and grids :mod:`vasseg.data.preprocess`'s.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vasseg.data.format import DataFormat, Record
from vasseg.data.splits import Split
from vasseg.data.labelmap import available_label_maps, label_map_from_dict, load_label_map  # noqa: F401 - re-exported
from vasseg.data.nifti import canonical_ornt, canonical_spacing, from_canonical, to_canonical
from vasseg.data.preprocess import (  # noqa: F401 - re-exported: they lived here
    NORMALIZATIONS,
    preprocess_image,
    preprocess_scan,
    resample_image,
    resample_label,
    target_shape,
    window_rescale,
)
from vasseg.data.volumes import (  # noqa: F401 - resized_argmax: re-exported, it lived here
    Case,
    DataError,
    resize_image,
    resize_label,
    resized_argmax,
    scaled_shape,
)
from vasseg.registry import register
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment
    from vasseg.io import Volume

log = logging.getLogger(__name__)

FORMAT, VERSION = "vasseg-prepared", 1
MANIFEST, CASES_DIR = "prepared.json", "cases"
CASE_ATTRS = ("original_shape", "original_affine", "original_spacing", "orientation", "canonical_shape",
              "canonical_spacing", "spacing", "factor", "source_image", "source_label")


# --------------------------------------------------------------------------- reading


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The validated ``prepared.json`` of a prepared dataset folder."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found; is {Path(root)} the output of `vasseg prepare`?")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({' '.join(str(exc).split())})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: format version {manifest.get('version')} (this vasseg reads {VERSION})")
    missing = [k for k in ("shape", "normalize", "label_map", "class_names", "cases") if k not in manifest]
    if missing:
        raise DataError(f"{path}: missing keys {', '.join(missing)}")
    return manifest


def case_path(root: str | Path, case_id: str) -> Path:
    """``ROOT/cases/<ID>.h5``."""
    return Path(root) / CASES_DIR / f"{case_id}.h5"


def _dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    if key not in f:
        raise DataError(f"{path}: missing dataset {key!r}")
    return np.asarray(f[key][()])


def read_prepared_case(root: str | Path, case_id: str) -> Case:
    """One case on the prepared grid; ``native_label`` stays on disk (:func:`read_native_label`)."""
    path = case_path(root, case_id)
    try:
        with h5py.File(path, "r") as f:
            image = _dataset(f, "image", path)
            label = _dataset(f, "label", path) if "label" in f else None  # None: an unlabeled case
            attrs = {k: f.attrs[k] for k in CASE_ATTRS if k in f.attrs}
    except OSError as exc:
        raise DataError(f"{path}: cannot open as HDF5 ({' '.join(str(exc).split())})") from exc
    if image.ndim != 3 or image.dtype != np.float32 or (
            label is not None and (label.shape != image.shape or label.dtype != np.uint8)):
        raise DataError(f"{path}: expected float32 image and uint8 label of one 3-D shape, got "
                        f"{image.dtype} {image.shape} and {getattr(label, 'dtype', None)} "
                        f"{getattr(label, 'shape', None)}")
    missing = [k for k in ("spacing", "canonical_shape", "canonical_spacing") if k not in attrs]
    if missing:
        raise DataError(f"{path}: missing attributes {', '.join(missing)}")
    triple = lambda key: tuple(float(v) for v in attrs[key])  # noqa: E731
    return Case(id=case_id, image=torch.from_numpy(image)[None],
                label=None if label is None else torch.from_numpy(label),
                spacing=triple("spacing"), source=str(path),
                native_shape=tuple(int(v) for v in attrs["canonical_shape"]),
                native_spacing=triple("canonical_spacing"))


def read_native_label(path: str | Path, num_classes: int) -> np.ndarray:
    """The original-grid label (uint8 project classes, canonical order) of a prepared case file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "native_label" not in f:
                raise DataError(f"{path}: an unlabeled case (no label to score against)")
            label = _dataset(f, "native_label", path)
    except OSError as exc:
        raise DataError(f"{path}: cannot open as HDF5 ({' '.join(str(exc).split())})") from exc
    if label.ndim != 3 or label.dtype != np.uint8 or (label.size and int(label.max()) >= num_classes):
        raise DataError(f"{path}: native_label must be uint8 (X, Y, Z) with classes < {num_classes}")
    return label


def _rescale(case: Case, scale: float, num_classes: int) -> Case:
    """Down-sample a prepared case by ``scale`` (CPU protocol); the native grid is unchanged."""
    size = scaled_shape(case.shape, scale)
    spacing = tuple(s * n / m for s, n, m in zip(case.spacing, case.shape, size))
    case.label = resize_label(case.label, size, num_classes) if case.label is not None else None
    case.image, case.spacing = resize_image(case.image, size), (spacing[0], spacing[1], spacing[2])
    return case


def check_classes(root: str | Path, num_classes: int, class_names: Sequence[str] = ()) -> None:
    """A config's ``data.num_classes`` (and ``class_names`` when given) must be the dataset's."""
    names = tuple(read_manifest(root)["class_names"])
    if num_classes != len(names):
        raise ConfigError(f"data.num_classes: {num_classes}, but the prepared dataset {root} has "
                          f"{len(names)} classes ({', '.join(names)})")
    if class_names and tuple(class_names) != names:
        raise ConfigError(f"data.class_names: {list(class_names)} differ from the prepared dataset's "
                          f"{list(names)} ({root})")


# --------------------------------------------------------------------------- predict hooks


def manifest_for_run(run_dir: str | Path, exp: Experiment) -> dict[str, Any]:
    """The preprocessing record of a run: ``<run>/prepared.json``, else ``data.root``'s."""
    for folder in (Path(run_dir), Path(exp.data.root).expanduser() if exp.data.root else None):
        if folder is not None and (folder / MANIFEST).is_file():
            return read_manifest(folder)
    raise DataError(f"{run_dir}: no {MANIFEST} in the run folder nor in data.root "
                    f"({exp.data.root or 'unset'}); pass the prepared dataset as data.root")


def canonical_shape(shape: Sequence[int], ornt: np.ndarray) -> tuple[int, int, int]:
    """The shape of a file-order array ``(X, Y, Z)`` after :func:`to_canonical`."""
    out = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = int(shape[axis])
    return (out[0], out[1], out[2])


def preprocess_with_manifest(volume: Volume, manifest: dict[str, Any], scale: float) -> Tensor:
    """A raw scan as a network trained on a prepared dataset saw its data: ``(1, X', Y', Z')`` float32.

    Canonical orientation, the manifest's intensity scheme (``modality``: a CT window or the MR
    percentile clip and z-score, :mod:`vasseg.data.preprocess`), resampled to its fixed ``shape``
    or its ``target_spacing``, times ``scale`` (``data.scale``). A CT's ``volume.image`` must hold
    Hounsfield units. The manifest is the run's (:func:`manifest_for_run`) or the preprocessing
    record of an exported model file.
    """
    ornt = canonical_ornt(volume.affine)
    image = to_canonical(volume.image, ornt)
    grid = target_shape(image.shape, canonical_spacing(volume.spacing, ornt), manifest)
    return torch.from_numpy(preprocess_scan(image, manifest, scaled_shape(grid, scale)))[None]


def labels_to_source(probs: Tensor, volume: Volume, run_dir: str | Path, exp: Experiment) -> np.ndarray:
    """Probabilities ``(K, X', Y', Z')`` -> source label ids on the input's own grid ``(X, Y, Z)``."""
    return source_labels(probs, volume, manifest_for_run(run_dir, exp), str(run_dir))


def source_labels(probs: Tensor, volume: Volume, manifest: dict[str, Any], where: str) -> np.ndarray:
    """:func:`labels_to_source` with the manifest given; errors name ``where``."""
    label_map = label_map_from_dict(manifest["label_map"], f"{where}: label_map")
    if probs.shape[0] != label_map.num_classes:
        raise DataError(f"{where}: the model gives {probs.shape[0]} classes, label map "
                        f"'{label_map.name}' has {label_map.num_classes}")
    ornt = canonical_ornt(volume.affine)
    classes = resized_argmax(probs, canonical_shape(volume.image.shape, ornt)).cpu().numpy()
    return label_map.restore_ids(from_canonical(classes, ornt))


def canonical_probs(probs: Tensor, volume: Volume) -> np.ndarray:
    """Per class: resized to the canonical grid of the input, then back to the file's axis order."""
    ornt = canonical_ornt(volume.affine)
    size = canonical_shape(volume.image.shape, ornt)
    out = np.empty((probs.shape[0], *volume.image.shape), np.float32)
    for cls in range(probs.shape[0]):
        resized = F.interpolate(probs[cls][None, None].float(), size=size, mode="trilinear", align_corners=False)
        out[cls] = from_canonical(resized[0, 0].cpu().numpy(), ornt)
    return out


# --------------------------------------------------------------------------- the format plug-in


@register("format", "prepared")
class PreparedFormat(DataFormat):
    """``vasseg prepare`` output: scored on the prepared grid and on the original scan's.

    Preprocessing record: ``{"kind": "prepared", "scale", "modality", "shape", "target_spacing",
    "window", "normalize", "percentiles", "label_map", "class_names"}`` (the manifest's, kept in the
    run folder as ``prepared.json``). A new scan is brought to canonical RAS+ order, normalised as
    its modality says (CT in Hounsfield units: window + rescale; MR: percentile clip + z-score) and
    resampled to ``shape`` (or its extent at ``target_spacing``) times ``scale``; labels go back on
    the scan's own grid with the source ids.
    """

    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        if exp.data.intensity != "file":
            raise ConfigError("data.intensity: 'zscore' applies to the LA format only (prepared data is "
                              "normalised by `vasseg prepare`)")

    def check_cases(self, ids: Sequence[str], list_name: str) -> None:
        root = self.root
        check_classes(root, self.data.num_classes, self.data.class_names)
        if missing := [i for i in ids if not case_path(root, i).is_file()]:
            raise DataError(f"{root}: {len(missing)} of {len(ids)} cases listed in {list_name} have no file: "
                            f"{', '.join(missing)}")

    def check_split(self, split: Split) -> None:
        """Labeled and validation ids need labels: ``vasseg prepare`` lists the unlabeled cases after
        the labeled ones in train.list, so a ``data.labeled`` above the labeled count reaches them."""
        cases = read_manifest(self.root)["cases"]
        labeled = {i for i, record in cases.items() if record.get("labeled", True)}  # older manifests: all
        for group, key in ((split.labeled, "data.labeled"), (split.val, "data.num_val")):
            if bad := [i for i in group if i not in labeled]:
                have = len(labeled & {*split.labeled, *split.unlabeled, *split.val})
                raise ConfigError(f"{key}: case {bad[0]} of {self.root / self.data.train_list} has no label "
                                  f"({len(bad)} such); the prepared dataset has {have} labeled training cases, "
                                  f"so data.labeled + data.num_val must not exceed {have}")

    def read_case(self, case_id: str) -> Case:
        case = read_prepared_case(self.root, case_id)
        return _rescale(case, self.data.scale, self.data.num_classes) if self.data.scale != 1.0 else case

    def case_file(self, case_id: str) -> Path:
        return case_path(self.root, case_id)

    def scoring_grids(self, primary: str) -> tuple[str, ...]:
        """Both grids: the paper's Table II is in prepared voxels, mm belong to the original scan."""
        return (primary, "model" if primary == "native" else "native")

    def native_reference(self, case: Case) -> np.ndarray | None:
        """The original-grid label, read from the case file (it is not held in memory)."""
        if case.native_label is not None:
            return case.native_label.cpu().numpy()
        return read_native_label(case.source, self.data.num_classes) if case.source else None

    def record_run(self, run_dir: Path) -> None:
        shutil.copy2(self.root / MANIFEST, run_dir / MANIFEST)  # predict needs it even if the data moves

    def preprocessing(self, run_dir: Path) -> Record:
        manifest = manifest_for_run(run_dir, self.exp)
        keep = ("shape", "window", "normalize", "label_map", "class_names", "modality", "percentiles",
                "target_spacing")
        return {"kind": self.kind(), "scale": self.data.scale, **{k: manifest[k] for k in keep if k in manifest}}

    @classmethod
    def preprocess(cls, volume: Volume, record: Record) -> Tensor:
        return preprocess_with_manifest(volume, record, float(record.get("scale", 1.0)))

    @classmethod
    def to_input_grid(cls, probs: Tensor, volume: Volume, record: Record,
                      with_probs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        labels = source_labels(probs, volume, record, str(volume.source))
        return labels, (canonical_probs(probs, volume) if with_probs else None)

    @classmethod
    def label_ids(cls, record: Record, num_classes: int) -> tuple[int, ...]:
        label_map = label_map_from_dict(record["label_map"], "preprocessing: label_map")
        return tuple(int(v) for v in label_map.restore_ids(np.arange(num_classes)))

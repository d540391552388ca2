"""The prepared dataset written by ``vasseg prepare``: format, label maps, reader, predict hooks.

Layout::

    ROOT/prepared.json     manifest: sources, label map, HU window, normalisation, target shape,
                           class names, the split, per-case geometry and every skipped file
    ROOT/cases/<ID>.h5     image         float32 (X, Y, Z) at the target shape, windowed, rescaled
                           label         uint8 (X, Y, Z) project classes on the prepared grid
                           native_label  uint8 (X0, Y0, Z0) project classes on the original grid
                           attributes    CASE_ATTRS (original shape, affine, spacing, factor ...)
    ROOT/train.list        training ids (the first N are the labeled ones)
    ROOT/test.list         test ids

Every array is in the closest canonical RAS+ axis order of its source file (flips and transposes
only, see :mod:`vasseg.data.nifti`); ``original_affine`` / ``original_shape`` give the file's own
grid back. The prepared grid spans the same field of view as the original (``align_corners=False``
resampling), so mapping a prediction back is a resize to the original shape.

Native labels are not held in memory by :func:`load_prepared` (a 512x512x200 CT label is 50 MB):
evaluation reads them one case at a time with :func:`read_native_label`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from tqdm import tqdm

from vasseg.data.nifti import canonical_ornt, from_canonical, to_canonical
from vasseg.data.volumes import Case, DataError, VolumeSet, resize_image, resize_label, scaled_shape

if TYPE_CHECKING:
    from vasseg.config import Experiment
    from vasseg.io import Volume

log = logging.getLogger(__name__)

FORMAT, VERSION = "vasseg-prepared", 1
MANIFEST, CASES_DIR = "prepared.json", "cases"
NORMALIZATIONS = ("minmax", "zscore")
LABEL_MAP_DIR = Path(__file__).parent / "labelmaps"
CASE_ATTRS = ("original_shape", "original_affine", "original_spacing", "orientation", "canonical_shape",
              "canonical_spacing", "spacing", "factor", "source_image", "source_label")


# --------------------------------------------------------------------------- label maps


@dataclass(frozen=True)
class LabelMap:
    """Source label ids -> project classes, and back.

    ``classes``: project class names, index = class id, 0 = background. ``to_class``: source id ->
    class id (every other id in ``0..max_source_id`` becomes background). ``restore``: class id ->
    the source id that ``vasseg predict`` writes (default: the smallest source id of the class).
    """

    name: str
    classes: tuple[str, ...]
    to_class: dict[int, int]
    restore: dict[int, int]
    max_source_id: int
    description: str = ""
    sources: tuple[str, ...] = ()
    source_names: dict[int, str] = field(default_factory=dict)  # documentation and name checks

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def apply(self, label: np.ndarray, where: str) -> np.ndarray:
        """Source ids ``(X, Y, Z)`` -> uint8 classes; ids outside the map fail naming ``where``."""
        lab = np.asarray(label)
        if lab.dtype.kind == "f" and not np.array_equal(lab, np.round(lab)):
            raise DataError(f"{where}: label holds non-integer values")
        lab = lab.astype(np.int64, copy=False)
        if lab.size and (lab.min() < 0 or lab.max() > self.max_source_id):
            bad = np.unique(lab[(lab < 0) | (lab > self.max_source_id)])[:10]
            raise DataError(f"{where}: label ids {', '.join(map(str, bad))} are outside label map "
                            f"'{self.name}' (ids 0..{self.max_source_id}); is --label-map right?")
        lut = np.zeros(self.max_source_id + 1, np.uint8)
        for source_id, cls in self.to_class.items():
            lut[source_id] = cls
        return lut[lab]

    def restore_ids(self, classes: np.ndarray) -> np.ndarray:
        """Project classes -> source ids (uint8, uint16 when an id exceeds 255)."""
        dtype = np.uint8 if max(self.restore.values(), default=0) <= 255 else np.uint16
        lut = np.zeros(self.num_classes, dtype)
        for cls, source_id in self.restore.items():
            lut[cls] = source_id
        return lut[np.asarray(classes, dtype=np.int64)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML mapping that :func:`label_map_from_dict` reads back."""
        return {"name": self.name, "description": self.description, "sources": list(self.sources),
                "classes": list(self.classes),
                "map": {str(k): self.classes[v] for k, v in sorted(self.to_class.items())},
                "restore": {self.classes[c]: s for c, s in sorted(self.restore.items())},
                "max_source_id": self.max_source_id,
                "source_names": {str(k): v for k, v in sorted(self.source_names.items())}}


def label_map_from_dict(raw: Any, where: str) -> LabelMap:
    """Validate a label-map mapping (YAML file or manifest entry); errors name ``where``."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a label map must be a mapping")
    classes = tuple(str(c) for c in raw.get("classes") or ())
    if len(classes) < 2 or classes[0] != "background" or len(set(classes)) != len(classes):
        raise DataError(f"{where}: 'classes' must list unique names starting with 'background'")
    index = {name: i for i, name in enumerate(classes)}
    max_id = raw.get("max_source_id")
    if not isinstance(max_id, int) or max_id < 1:
        raise DataError(f"{where}: 'max_source_id' must be a positive integer")
    to_class = {}
    for key, name in (raw.get("map") or {}).items():
        source_id = _int_key(key, where)
        if not 1 <= source_id <= max_id or index.get(str(name), 0) == 0:
            raise DataError(f"{where}: map entry {key}: {name} needs an id in 1..{max_id} and a "
                            f"foreground class of 'classes'")
        to_class[source_id] = index[str(name)]
    restore = {c: min(s for s, k in to_class.items() if k == c) for c in set(to_class.values())}
    for name, source_id in (raw.get("restore") or {}).items():
        if to_class.get(_int_key(source_id, where)) != index.get(str(name)):
            raise DataError(f"{where}: restore {name}: {source_id} is not a source id of that class")
        restore[index[str(name)]] = int(source_id)
    unmapped = [c for c in classes[1:] if index[c] not in restore]
    if unmapped:
        raise DataError(f"{where}: no source id maps to class(es) {', '.join(unmapped)}")
    names = {_int_key(k, where): str(v) for k, v in (raw.get("source_names") or {}).items()}
    return LabelMap(str(raw.get("name", where)), classes, to_class, restore, max_id,
                    str(raw.get("description", "")), tuple(str(s) for s in raw.get("sources") or ()), names)


def _int_key(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: label id {value!r} is not an integer") from None


def available_label_maps() -> list[str]:
    """Names of the label maps shipped with vasseg."""
    return sorted(p.stem for p in LABEL_MAP_DIR.glob("*.yaml"))


def load_label_map(spec: str | Path) -> LabelMap:
    """A shipped label map by name (``btcv``, ``totalsegmentator_v2``, ...) or a YAML file."""
    path = LABEL_MAP_DIR / f"{spec}.yaml"
    if not path.is_file():
        path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"label map {str(spec)!r}: neither a shipped map ({', '.join(available_label_maps())}) "
                        f"nor a YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read label map ({' '.join(str(exc).split())})") from exc
    return label_map_from_dict(raw, str(path))


# --------------------------------------------------------------------------- preprocessing


def window_rescale(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip Hounsfield units to ``window = (low, high)`` and rescale to [0, 1] (float32)."""
    low, high = float(window[0]), float(window[1])
    out = np.clip(np.asarray(hu, dtype=np.float32), low, high)
    out -= low
    out /= high - low
    return out


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resampling of ``(X, Y, Z)`` to ``shape`` over the same field of view."""
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return resize_image(tensor, size)[0].numpy()


def resample_label(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling (voxel centres, same field of view) of uint8 ``(X, Y, Z)``."""
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    tensor = torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8))[None, None]
    return F.interpolate(tensor, size=size, mode="nearest-exact")[0, 0].numpy()


def preprocess_image(hu: np.ndarray, window: Sequence[float], normalize: str,
                     shape: Sequence[int]) -> np.ndarray:
    """The network's input from a canonical HU volume: window, rescale, resample, normalise.

    ``normalize="minmax"`` keeps [0, 1] (the paper's "range [0, 1]"); ``"zscore"`` then gives the
    resampled volume zero mean and unit variance (the paper's other reading). float32 ``shape``.
    """
    if normalize not in NORMALIZATIONS:
        raise DataError(f"normalize: {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    out = resample_image(window_rescale(hu, window), shape)
    if normalize == "zscore":
        std = float(out.std())
        out = (out - out.mean()) / (std if std > 0 else 1.0)
    return out.astype(np.float32, copy=False)


def resized_argmax(probs: Tensor, shape: Sequence[int]) -> Tensor:
    """Argmax of ``(K, X, Y, Z)`` probabilities trilinearly resized to ``shape``: uint8 labels.

    One class at a time with a running maximum, so memory stays O(voxels) for many classes on a
    full-resolution CT; equal to ``resize_probs(probs, shape).argmax(0)`` (ties: lowest class).
    """
    size = tuple(int(s) for s in shape)
    if tuple(probs.shape[1:]) == size:
        return probs.argmax(0).to(torch.uint8)
    best = torch.zeros(size, dtype=torch.uint8, device=probs.device)
    best_score: Tensor | None = None
    for cls in range(probs.shape[0]):
        score = F.interpolate(probs[cls][None, None].float(), size=size, mode="trilinear",
                              align_corners=False)[0, 0]
        if best_score is not None:
            best[score > best_score] = cls
            score = torch.maximum(best_score, score)
        best_score = score
    return best


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
    missing = [k for k in ("shape", "window", "normalize", "label_map", "class_names", "cases") if k not in manifest]
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
            image, label = _dataset(f, "image", path), _dataset(f, "label", path)
            attrs = {k: f.attrs[k] for k in CASE_ATTRS if k in f.attrs}
    except OSError as exc:
        raise DataError(f"{path}: cannot open as HDF5 ({' '.join(str(exc).split())})") from exc
    if image.ndim != 3 or image.dtype != np.float32 or label.shape != image.shape or label.dtype != np.uint8:
        raise DataError(f"{path}: expected float32 image and uint8 label of one 3-D shape, got "
                        f"{image.dtype} {image.shape} and {label.dtype} {label.shape}")
    missing = [k for k in ("spacing", "canonical_shape", "canonical_spacing") if k not in attrs]
    if missing:
        raise DataError(f"{path}: missing attributes {', '.join(missing)}")
    triple = lambda key: tuple(float(v) for v in attrs[key])  # noqa: E731
    return Case(id=case_id, image=torch.from_numpy(image)[None], label=torch.from_numpy(label),
                spacing=triple("spacing"), source=str(path),
                native_shape=tuple(int(v) for v in attrs["canonical_shape"]),
                native_spacing=triple("canonical_spacing"))


def read_native_label(path: str | Path, num_classes: int) -> np.ndarray:
    """The original-grid label (uint8 project classes, canonical order) of a prepared case file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
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
    from vasseg.config import ConfigError

    names = tuple(read_manifest(root)["class_names"])
    if num_classes != len(names):
        raise ConfigError(f"data.num_classes: {num_classes}, but the prepared dataset {root} has "
                          f"{len(names)} classes ({', '.join(names)})")
    if class_names and tuple(class_names) != names:
        raise ConfigError(f"data.class_names: {list(class_names)} differ from the prepared dataset's "
                          f"{list(names)} ({root})")


def load_prepared(root: str | Path, ids: Sequence[str], scale: float = 1.0,
                  progress: bool = True) -> VolumeSet:
    """Load prepared cases into a CPU `VolumeSet` (image ``(1, X, Y, Z)`` in [0, 1], uint8 label).

    ``scale`` < 1 down-samples the prepared grid further (trilinear images, one-hot-averaged
    labels). Every id is checked first, so one error names all missing cases.
    """
    root = Path(root)
    manifest = read_manifest(root)
    missing = [i for i in ids if not case_path(root, i).is_file()]
    if missing:
        raise DataError(f"{root}: {len(missing)} of {len(ids)} listed cases have no file in "
                        f"{CASES_DIR}/: {', '.join(missing)}")
    num_classes = len(manifest["class_names"])
    cases = []
    for case_id in tqdm(ids, desc="load prepared", unit="case", disable=not progress, leave=False):
        case = read_prepared_case(root, case_id)
        cases.append(_rescale(case, scale, num_classes) if scale != 1.0 else case)
    return VolumeSet(cases)


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
    """A raw CT as a network trained on a prepared dataset saw its data: ``(1, X', Y', Z')`` float32.

    Canonical orientation, the manifest's window and normalisation (``window``, ``normalize``),
    resampled to its target ``shape`` times ``scale`` (``data.scale``). ``volume.image`` must hold
    Hounsfield units. The manifest is the run's (:func:`manifest_for_run`) or the preprocessing
    record of an exported model file.
    """
    hu = to_canonical(volume.image, canonical_ornt(volume.affine))
    shape = scaled_shape(manifest["shape"], scale)
    return torch.from_numpy(preprocess_image(hu, manifest["window"], manifest["normalize"], shape))[None]


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

"""Label maps: a source dataset's label ids -> the project's classes (``vasseg prepare``), and back.

Shipped maps are YAML files in ``labelmaps/`` (``btcv``, ``totalsegmentator_v2``, ...); a prepared
dataset's manifest holds the map it was made with (:func:`LabelMap.to_dict`), so that ``vasseg
predict`` writes the source dataset's ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vasseg.data.volumes import DataError

LABEL_MAP_DIR = Path(__file__).parent / "labelmaps"


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
    # True for a map made from the dataset's own labels (dataset.json, label values): a source id
    # that it does not name is an error instead of background.
    strict: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def apply(self, label: np.ndarray, where: str) -> np.ndarray:
        """Source ids ``(X, Y, Z)`` -> uint8 classes; ids outside the map fail naming ``where``."""
        lab = np.asarray(label)
        if lab.dtype.kind == "f" and not np.array_equal(lab, np.round(lab)):
            raise DataError(f"{where}: label holds non-integer values")
        lab = lab.astype(np.int64, copy=False)
        if self.strict and lab.size:
            # bincount: one pass, no sort (a CT label has 10^8 voxels); negatives go through unique
            present = np.flatnonzero(np.bincount(lab.ravel())) if lab.min() >= 0 else np.unique(lab)
            unknown = np.setdiff1d(present, [0, *self.to_class])
            if unknown.size:
                raise DataError(f"{where}: label values {', '.join(map(str, unknown[:10]))} are not among the "
                                f"dataset's labels ({self.describe()})")
        if lab.size and (lab.min() < 0 or lab.max() > self.max_source_id):
            bad = np.unique(lab[(lab < 0) | (lab > self.max_source_id)])[:10]
            raise DataError(f"{where}: label ids {', '.join(map(str, bad))} are outside label map "
                            f"'{self.name}' (ids 0..{self.max_source_id}); is --label-map right?")
        lut = np.zeros(self.max_source_id + 1, np.uint8)
        for source_id, cls in self.to_class.items():
            lut[source_id] = cls
        return lut[lab]

    def describe(self) -> str:
        """``0 background, 1 heart, ...``: the source values and their class names."""
        pairs = [(0, self.classes[0]), *sorted((s, self.classes[c]) for s, c in self.to_class.items())]
        return ", ".join(f"{s} {name}" for s, name in pairs)

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
                "source_names": {str(k): v for k, v in sorted(self.source_names.items())},
                "strict": self.strict}


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
                    str(raw.get("description", "")), tuple(str(s) for s in raw.get("sources") or ()), names,
                    bool(raw.get("strict", False)))


def dataset_label_map(labels: dict[str, int], name: str, description: str) -> LabelMap:
    """The identity map of a dataset's own labels ``{class name: value}`` (background 0), strict:
    a value outside them is an error naming the file. Classes are ordered by value."""
    ordered = sorted(labels.items(), key=lambda kv: kv[1])
    if not ordered or ordered[0][1] != 0:
        raise DataError(f"{name}: labels must include value 0 (background)")
    classes = ("background", *(str(n) for n, _ in ordered[1:]))
    to_class = {int(v): i for i, (_, v) in enumerate(ordered) if i}
    if not to_class:
        raise DataError(f"{name}: labels name no foreground class (only background)")
    return LabelMap(name, classes, to_class, {c: s for s, c in to_class.items()}, max(to_class),
                    description, (), {v: n for n, v in ordered}, strict=True)


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

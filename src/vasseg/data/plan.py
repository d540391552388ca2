"""What ``vasseg prepare`` decides from the data: target spacing, the split, and ``config.yaml``.

The planned ``OUT/config.yaml`` is a complete experiment that ``vasseg train --config
OUT/config.yaml`` runs as it is (``method.name=<any registered method>`` swaps the method); every
value carries a comment saying how it was chosen. The rules, nnU-Net's where it has one:

- spacing (``--spacing`` unset, nnU-Net and ``--images`` routes): the per-axis median voxel size of
  the labeled cases (nnU-Net's rule, without its extra rule for very anisotropic data);
- patch: per axis the median prepared extent of the labeled cases, rounded down to a multiple of 16
  (the VNet halves the grid four times), no larger than twice the smallest training case (training
  needs every volume to span half a patch) and shrunk, largest axis first, until it holds at most
  :data:`PATCH_VOXEL_BUDGET` voxels;
- validation: 20 % of the labeled cases when there are at least 5, else none.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# 2^19 voxels (e.g. 128x64x64, 80x80x80): about half of LA's 112x112x80, so that a batch of 2 + 2
# fits a small GPU and a step stays within seconds on a 2-core CPU (benchmarks/RESULTS.md).
PATCH_VOXEL_BUDGET = 2**19
VAL_FRACTION, VAL_MIN_LABELED = 0.2, 5
SIDED = ("left", "right")  # class names that rule out left-right flips in augmentation
YAML_WORDS = ("true", "false", "yes", "no", "on", "off", "null", "y", "n")  # read as booleans / null


def median_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Per-axis median voxel size (mm), rounded to 1e-4 mm."""
    x, y, z = (round(float(v), 4) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0))
    return (x, y, z)


def default_num_val(labeled: int) -> int:
    """20 % of the labeled cases (rounded, at least 1) when there are at least 5, else 0."""
    return max(1, int(round(labeled * VAL_FRACTION))) if labeled >= VAL_MIN_LABELED else 0


@dataclass(frozen=True)
class SplitPlan:
    """The four id lists of a prepared dataset; ``train_list`` is labeled + unlabeled + val in the
    order ``data.labeled`` / ``data.num_val`` read it (:func:`vasseg.data.splits.make_split`)."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str]
    test: list[str]

    @property
    def train_list(self) -> list[str]:
        return [*self.labeled, *self.unlabeled, *self.val]

    def as_dict(self) -> dict[str, list[str]]:
        return {"labeled": self.labeled, "unlabeled": self.unlabeled, "val": self.val, "test": self.test}


def plan_split(labeled: Sequence[str], unlabeled: Sequence[str], test: Sequence[str], seed: int,
               test_fraction: float, test_ids: Sequence[str] | None, num_val: int | None) -> SplitPlan:
    """The split of the prepared cases (ids sorted on input; deterministic in ``seed``).

    Test: ``test`` (``imagesTs``) when given, else ``test_ids`` or the first ``round(n *
    test_fraction)`` labeled ids of a seeded permutation. Validation: the last ``num_val``
    (default :func:`default_num_val`) of the remaining labeled ids in permutation order.
    """
    from vasseg.data.volumes import DataError

    ids = sorted(labeled)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    if test:
        held = set()
    elif test_ids is not None:
        if unknown := sorted(set(test_ids) - set(ids)):
            raise DataError(f"--test-ids: {len(unknown)} ids are not among the prepared cases: {', '.join(unknown)}")
        held = set(test_ids)
    else:
        held = set(order[: int(round(len(ids) * test_fraction))])
    train = [i for i in order if i not in held]
    if not train:
        raise DataError(f"split: no labeled training case left of {len(ids)} (test fraction {test_fraction})")
    n_val = default_num_val(len(train)) if num_val is None else num_val
    if not 0 <= n_val < len(train):
        raise DataError(f"--num-val {n_val}: needs 0 <= N < the {len(train)} labeled training cases")
    return SplitPlan(train[: len(train) - n_val], sorted(unlabeled), train[len(train) - n_val:],
                     sorted(test) if test else sorted(held))


def plan_patch(labeled_shapes: Sequence[Sequence[int]], train_shapes: Sequence[Sequence[int]],
               augment: bool) -> tuple[int, int, int]:
    """The training patch (voxels) for prepared shapes (module docstring's rule)."""
    median = np.median(np.asarray(labeled_shapes, dtype=np.float64), axis=0)
    smallest = np.asarray(train_shapes, dtype=np.int64).min(axis=0)
    if augment:  # x and y swap under the 90-degree rotations
        smallest[:2] = smallest[:2].min()
    patch = [max(16, min(int(m) // 16, int(2 * s) // 16) * 16) for m, s in zip(median, smallest)]
    while math.prod(patch) > PATCH_VOXEL_BUDGET:
        axis = int(np.argmax(patch))
        patch[axis] -= 16
    return (patch[0], patch[1], patch[2])


def augment_for(class_names: Sequence[str]) -> bool:
    """The lineage's x-y rotations and flips, unless a class name says left or right (a flip would
    swap them)."""
    words = {w for name in class_names for w in name.lower().replace("_", " ").replace("-", " ").split()}
    return not words & set(SIDED)


def cpu_overrides(patch: Sequence[int], train_shapes: Sequence[Sequence[int]], augment: bool) -> str:
    """Overrides for a 2-core CPU, as the LA CPU protocol trains (``configs/la_cpu``): half the patch
    per axis, 1200 iterations, and volumes at ``data.scale=0.5`` where every case still spans half
    of that patch."""
    half = [max(16, p // 32 * 16) for p in patch]
    smallest = np.asarray(train_shapes, dtype=np.int64).min(axis=0)
    if augment:
        smallest[:2] = smallest[:2].min()
    scale = "data.scale=0.5 " if all(max(1, round(n * 0.5)) >= (h + 1) // 2 for n, h in zip(smallest, half)) else ""
    return f"{scale}data.patch_size=[{','.join(map(str, half))}] train.iterations=1200 train.lr_step=500"


# --------------------------------------------------------------------------- config.yaml


@dataclass(frozen=True)
class ConfigFacts:
    """What the planned config is made from."""

    sources: list[str]
    class_names: list[str]
    class_source: str  # where the class names come from
    split: SplitPlan
    labeled_shapes: list[list[int]]
    train_shapes: list[list[int]]
    spacing: tuple[float, float, float]  # prepared voxel size, mm
    geometry: str  # how the prepared grid was chosen
    intensity: str  # how the scans were normalised


def _v(value: Any) -> str:
    """A YAML flow value: plain words unquoted, other strings as JSON (which YAML reads)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_v(v) for v in value) + "]"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) and value not in YAML_WORDS:
        return value
    return json.dumps(value)


def _line(key: str, value: Any, comment: str = "", indent: int = 2) -> str:
    text = f"{' ' * indent}{key}: {_v(value)}"
    return f"{text:<40} # {comment}" if comment else text


def config_text(facts: ConfigFacts) -> str:
    """The planned experiment as commented YAML (module docstring)."""
    split = facts.split
    n_lab, n_unl, n_val = len(split.labeled), len(split.unlabeled), len(split.val)
    augment = augment_for(facts.class_names)
    patch = plan_patch(facts.labeled_shapes, facts.train_shapes, augment)
    median = [int(v) for v in np.median(np.asarray(facts.labeled_shapes), axis=0)]
    semi = n_unl > 0
    val_rule = (f"{n_val} = 20 % of the {n_lab + n_val} labeled cases" if n_val else
                f"none: {n_lab} labeled cases (a validation split needs >= {VAL_MIN_LABELED})")
    stride = [max(1, p // 2) for p in patch]
    lines = [
        "# Planned by `vasseg prepare` from the data: a complete experiment that runs as it is,",
        "#   vasseg train --config config.yaml",
        "# and any registered method (`vasseg methods`) swaps in with an override, e.g.",
        "#   vasseg train --config config.yaml method.name=mean_teacher",
        f"# Sources: {', '.join(facts.sources)}",
        f"# Prepared grid: {facts.geometry}.",
        f"# Intensities: {facts.intensity}.",
        "data:",
        _line("dataset", "prepared", "this folder is a `vasseg prepare` dataset"),
        _line("root", ".", "this folder (relative to this file, so it can move)"),
        _line("num_classes", len(facts.class_names),
              f"background + {len(facts.class_names) - 1}, from {facts.class_source}"),
        _line("class_names", facts.class_names),
        _line("labeled", n_lab, f"labeled training cases: the first {n_lab} of train.list (lower it to use fewer)"),
        _line("num_val", n_val, f"validation (labeled, last of train.list): {val_rule}"),
        _line("intensity", "file", "scans are normalised by prepare (prepared.json), not again"),
        _line("spacing", list(facts.spacing), "mm, the prepared voxel size (for .h5 inputs only)"),
        _line("patch_size", list(patch), f"median labeled extent {median} in multiples of 16 (at least 16), "
              f"<= twice the smallest case, <= {PATCH_VOXEL_BUDGET} voxels"),
        _line("labeled_bs", min(2, n_lab), "the lineage's 2 labeled + 2 unlabeled patches per step"),
        _line("unlabeled_bs", 2 if semi else 0, "no unlabeled cases: 0" if not semi else ""),
        _line("augment", augment, "x-y rotations and flips" if augment else
              "off: class names say left/right, a flip would swap them"),
        "model:",
        _line("name", "vnet", "the lineage's VNet"),
        _line("filters", 16),
        "method:",
        _line("name", "vas" if semi else "supervised", "VAS with its default (LA) hyper-parameters"
              if semi else "no unlabeled cases: supervised (add --unlabeled scans for VAS)"),
        "train:",
        _line("iterations", 6000, "the lineage's LA schedule: SGD 0.01, x0.1 every 2500 steps"),
        "  # On a 2-core CPU, the LA CPU protocol's size and length: "
        + cpu_overrides(patch, facts.train_shapes, augment),
        _line("optimizer", "sgd"), _line("lr", 0.01), _line("momentum", 0.9), _line("weight_decay", 0.0001),
        _line("lr_policy", "step"), _line("lr_step", 2500), _line("lr_gamma", 0.1),
        _line("seed", 1337), _line("ckpt_every", 500),
        _line("val_every", 500 if n_val else 0,
              "score the validation split every 500 steps" if n_val else "no validation split"),
        "eval:",
        _line("stride", stride, "half the patch: nnU-Net's 50 % window overlap"),
        _line("checkpoint", "last", "the last weights (best: selected on the validation split)"),
    ]
    return "\n".join(lines) + "\n"


def write_config(folder: Path, facts: ConfigFacts) -> Path:
    """``folder/config.yaml``, checked by loading it as ``vasseg train`` will."""
    from vasseg.config import load_config
    from vasseg.data.volumes import DataError
    from vasseg.typed import ConfigError

    path = folder / "config.yaml"
    path.write_text(config_text(facts))
    try:
        load_config(path)
    except ConfigError as exc:  # a planning bug, not the user's: say so
        raise DataError(f"{path}: the planned config does not load ({exc})") from exc
    return path

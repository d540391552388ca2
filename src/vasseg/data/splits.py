"""Id lists (``train.list``), their labeled / unlabeled / validation splits, and the split's record
in a run dir.

The benchmark protocol labels the FIRST ``labeled`` ids of ``train.list`` (8 or 16 on LA) and
uses the rest without labels. A validation split for model selection and tuning is carved from
the training list (by default its LAST ids) and is never used as unlabeled data, so that the
test list is never looked at during development.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from vasseg.data.volumes import DataError


def _id_from_line(line: str) -> str:
    """The case id of one list line: a bare id, or a path like ``.../<ID>/mri_norm2.h5``."""
    parts = [p for p in PurePosixPath(line.replace("\\", "/")).parts if p not in ("/", ".")]
    if parts and parts[-1].endswith(".h5"):
        parts = parts[:-1]
    return parts[-1] if parts else ""


def read_id_list(path: str | Path) -> list[str]:
    """Case ids of a ``*.list`` file, in file order.

    Tolerates trailing whitespace, blank lines, ``#`` comments and lines that are relative paths
    to the case folder or its h5 file (some public lists hold those). Duplicates are an error.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read id list ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: id list is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start})") from None
    ids = [_id_from_line(s.strip()) for s in lines if s.strip() and not s.strip().startswith("#")]
    ids = [i for i in ids if i]
    if not ids:
        raise DataError(f"{path}: id list holds no ids")
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise DataError(f"{path}: duplicate ids: {', '.join(dups)}")
    return ids


class SplitError(DataError):
    """An impossible or inconsistent split."""


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dups: set[str] = set()
    for i in ids:
        (dups if i in seen else seen).add(i)
    return sorted(dups)


@dataclass(frozen=True)
class Split:
    """Disjoint id lists: ``labeled`` (with labels), ``unlabeled`` (labels unused), ``val``."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        groups = {"labeled": self.labeled, "unlabeled": self.unlabeled, "val": self.val}
        for name, ids in groups.items():
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise SplitError(f"split: {name} must be a list of str ids")
            if dups := _duplicates(ids):
                raise SplitError(f"split: duplicate ids in {name}: {', '.join(dups)}")
        names = list(groups)
        for a_i, a in enumerate(names):
            for b in names[a_i + 1:]:
                both = sorted(set(groups[a]) & set(groups[b]))
                if both:
                    raise SplitError(f"split: ids in both {a} and {b}: {', '.join(both)}")

    def summary(self) -> str:
        """One line for logs, e.g. ``16 labeled, 56 unlabeled, 8 val``."""
        return f"{len(self.labeled)} labeled, {len(self.unlabeled)} unlabeled, {len(self.val)} val"


def make_split(
    train_ids: Sequence[str],
    labeled: int,
    num_val: int = 0,
    val_ids: Sequence[str] | None = None,
) -> Split:
    """Split a training list by the benchmark protocol.

    Args:
        train_ids: ids of ``train.list`` in file order.
        labeled: number of labeled cases: the first ``labeled`` ids.
        num_val: number of validation cases taken from the END of ``train_ids`` when ``val_ids``
            is not given.
        val_ids: explicit validation ids (each must be in ``train_ids`` and not labeled).

    Returns a `Split`; the unlabeled ids are all remaining ids in list order.
    Raises SplitError for duplicates, unknown or overlapping ids, or too few ids.
    """
    train_ids = list(train_ids)
    if dups := _duplicates(train_ids):
        raise SplitError(f"split: duplicate ids in the training list: {', '.join(dups)}")
    if labeled < 1:
        raise SplitError(f"split: labeled must be >= 1, got {labeled}")
    if num_val < 0:
        raise SplitError(f"split: num_val must be >= 0, got {num_val}")
    if val_ids is None:
        val = train_ids[len(train_ids) - num_val:] if num_val else []
    else:
        val = _explicit_val(train_ids, list(val_ids), num_val)
    if labeled + len(val) > len(train_ids):
        raise SplitError(f"split: {labeled} labeled + {len(val)} val ids need more than the "
                         f"{len(train_ids)} training ids")
    lab = train_ids[:labeled]
    if clash := sorted(set(lab) & set(val)):
        raise SplitError(f"split: validation ids are among the first {labeled} (labeled) ids: "
                         f"{', '.join(clash)}")
    val_set = set(val)
    unlab = [i for i in train_ids[labeled:] if i not in val_set]
    return Split(labeled=lab, unlabeled=unlab, val=val)


def fold_val_ids(train_ids: Sequence[str], labeled: int, folds: int, fold: int) -> list[str]:
    """Validation ids of fold ``fold`` of ``folds``: one contiguous block of the ids after the
    first ``labeled``, in list order (blocks differ in size by at most one id).

    The labeled ids stay the benchmark's first ``labeled``; the other blocks are the unlabeled
    pool, so every non-labeled id is validated exactly once over the folds.
    """
    rest = list(train_ids)[labeled:]
    if folds < 2 or not 0 <= fold < folds:
        raise SplitError(f"split: fold {fold} of {folds} folds (need folds >= 2 and 0 <= fold < folds)")
    if len(rest) < folds:
        raise SplitError(f"split: {len(rest)} non-labeled ids cannot form {folds} folds")
    bounds = [round(i * len(rest) / folds) for i in range(folds + 1)]
    return rest[bounds[fold]:bounds[fold + 1]]


def _explicit_val(train_ids: list[str], val: list[str], num_val: int) -> list[str]:
    if num_val not in (0, len(val)):
        raise SplitError(f"split: num_val={num_val} contradicts {len(val)} given val_ids")
    if dups := _duplicates(val):
        raise SplitError(f"split: duplicate val ids: {', '.join(dups)}")
    known = set(train_ids)
    if unknown := [i for i in val if i not in known]:
        raise SplitError(f"split: val ids not in the training list: {', '.join(unknown)}")
    return val


def write_split(split: Split, path: str | Path) -> Path:
    """Record a split as JSON (``.json``) or YAML (any other suffix); returns the path."""
    path = Path(path)
    data = asdict(split)
    if path.suffix == ".json":
        text = json.dumps(data, indent=1) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def read_split(path: str | Path) -> Split:
    """Read a split written by `write_split` (JSON or YAML by suffix); validates it."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        msg = " ".join(str(exc).split())
        raise SplitError(f"{path}: cannot read split ({msg})") from exc
    if not isinstance(data, dict):
        raise SplitError(f"{path}: a split must be a mapping with labeled/unlabeled/val")
    if extra := sorted(set(data) - {"labeled", "unlabeled", "val"}):
        raise SplitError(f"{path}: unknown split keys: {', '.join(map(str, extra))}")
    if missing := [k for k in ("labeled", "unlabeled") if k not in data]:
        raise SplitError(f"{path}: missing split keys: {', '.join(missing)}")
    try:
        return Split(labeled=data["labeled"], unlabeled=data["unlabeled"],
                     val=data.get("val") or [])
    except SplitError as exc:
        raise SplitError(f"{path}: {exc}") from exc

"""A run's data from its config, through its dataset format: the split, the loaded volumes, and
cases one at a time for evaluation. Knows no format: :mod:`vasseg.data.format` dispatches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from vasseg.data.format import get_format
from vasseg.data.splits import Split, fold_val_ids, make_split
from vasseg.data.volumes import Case, VolumeSet, validate_case
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment


@dataclass
class DataBundle:
    """The split and the loaded volumes of one experiment."""

    split: Split
    labeled: VolumeSet
    unlabeled: VolumeSet | None
    val: VolumeSet | None


def data_root(exp: Experiment) -> Path:
    """``data.root``, which must be a folder (ConfigError otherwise)."""
    return get_format(exp).root


def experiment_split(exp: Experiment) -> Split:
    """Labeled / unlabeled / validation ids from the dataset's training list."""
    train_ids = get_format(exp).list_ids(exp.data.train_list)
    val_ids = exp.data.val_ids or None
    if exp.data.folds:
        val_ids = fold_val_ids(train_ids, exp.data.labeled, exp.data.folds, exp.data.fold)
    split = make_split(train_ids, exp.data.labeled, exp.data.num_val, val_ids)
    get_format(exp).check_split(split)
    return split


def load_cases(exp: Experiment, ids: list[str], progress: bool = True,
               list_name: str = "the id list") -> VolumeSet:
    """Read (and validate) the cases ``ids`` of the experiment's dataset, on the CPU.

    ``list_name``: how an error about missing cases names the source of ``ids`` (its list file).
    """
    cases = get_format(exp).load_cases(ids, progress, list_name)
    return cases.validate(exp.data.num_classes)


def iter_cases(exp: Experiment, ids: list[str], list_name: str) -> Iterator[Case]:
    """The validated cases ``ids`` one at a time, each read when the previous one is done with, so
    that evaluating many cases needs the memory of one. Missing files are reported before any case
    is read (one error names them all); a corrupt file stops the iteration when it is reached."""
    get_format(exp).check_cases(ids, list_name)
    return (read_case(exp, case_id) for case_id in ids)


def read_case(exp: Experiment, case_id: str) -> Case:
    """One validated case at the experiment's scale: image ``(1, X, Y, Z)``, label ``(X, Y, Z)``."""
    case = get_format(exp).read_case(case_id)
    validate_case(case, exp.data.num_classes)
    return case


def build_data(exp: Experiment, method_cls: type, progress: bool = True) -> DataBundle:
    """Load the labeled, unlabeled (if ``method_cls.uses_unlabeled``) and validation volumes."""
    split = experiment_split(exp)
    wants_unlabeled = method_cls.uses_unlabeled and exp.data.unlabeled_bs > 0
    if wants_unlabeled and not split.unlabeled:
        raise ConfigError(f"method {method_cls.name!r} needs unlabeled cases but the split has none")
    listed = str(data_root(exp) / exp.data.train_list)
    labeled = load_cases(exp, split.labeled, progress, listed)
    unlabeled = load_cases(exp, split.unlabeled, progress, listed) if wants_unlabeled else None
    val = load_cases(exp, split.val, progress, listed) if split.val else None
    return DataBundle(split=split, labeled=labeled, unlabeled=unlabeled, val=val)

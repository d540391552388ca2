"""The label map of a ``vasseg prepare`` run: ``--label-map``, or the route's own labels, and the
check of a dataset.json's label names against a shipped map.

Imports only the standard library at load time (see :mod:`vasseg.data.prepare`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from vasseg.data.labelmap import LabelMap
    from vasseg.data.nifti import Discovery, Pair

log = logging.getLogger(__name__)


def resolve_label_map(label_map: str | None, discovery: Discovery) -> LabelMap:
    """``--label-map``, else the route's: dataset.json's labels (nnU-Net), the label values
    (``--images``), or ``btcv`` (BTCV, MSD)."""
    from vasseg.data.labelmap import dataset_label_map, load_label_map
    from vasseg.data.nnunet import dataset_settings

    if label_map is not None:
        return load_label_map(label_map)
    if discovery.layout == "nnunet":
        labels = dataset_settings(discovery.roots[0], discovery.meta)[1]
        return dataset_label_map(labels, "dataset.json", f"the labels of {discovery.roots[0] / 'dataset.json'}")
    if discovery.layout == "pairs":
        return values_label_map(discovery.pairs)
    return load_label_map("btcv")


def values_label_map(pairs: Sequence[Pair]) -> LabelMap:
    """One class per label value found in the label files (``label_<value>``), read one at a time."""
    import nibabel as nib
    import numpy as np

    from vasseg.data.labelmap import dataset_label_map
    from vasseg.data.volumes import DataError

    values: set[int] = set()
    for pair in pairs:
        try:
            data = np.asanyarray(nib.load(str(pair.label)).dataobj)
        except Exception:  # noqa: BLE001 - an unreadable label is reported (or skipped) with its case
            continue
        found = np.unique(data)
        if found.size and (not np.array_equal(found, np.round(found)) or found.min() < 0):
            raise DataError(f"{pair.label}: label values must be non-negative integers, got {found[:5].tolist()}")
        values |= {int(v) for v in found}
    if pairs and not values - {0}:
        raise DataError(f"{pairs[0].label.parent}: the label files hold only background (0)")
    labels = {"background": 0, **{f"label_{v}": v for v in sorted(values - {0})}}
    log.info("label map: the label values found, %s (give --label-map to name them)", ", ".join(labels))
    return dataset_label_map(labels, "label values", "one class per label value of the label files")


def _words(name: str) -> frozenset[str]:
    return frozenset(w for w in "".join(c if c.isalnum() else " " for c in name.lower()).split())


def warn_on_label_names(names: dict[str, str], label_map: LabelMap) -> list[str]:
    """Warn where the dataset's own label names (MSD dataset.json) disagree with the label map's.

    Names are compared as word sets ("kidney_left" == "Left Kidney"); a disagreement usually
    means the wrong ``--label-map``. Returns the warnings.
    """
    warnings = []
    for key, name in sorted(names.items(), key=lambda kv: kv[0]):
        if not key.isdigit() or int(key) not in label_map.source_names:
            continue
        expected = label_map.source_names[int(key)]
        if _words(name) != _words(expected):
            warnings.append(f"dataset.json calls label {key} {name!r}, label map '{label_map.name}' calls it "
                            f"{expected!r}; is --label-map right?")
    for line in warnings:
        log.warning("%s", line)
    return warnings

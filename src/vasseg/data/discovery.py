"""What a dataset folder holds, as discovery finds it: cases (:class:`Pair`) and problems (:class:`Discovery`).

Shared by the layouts' discovery (:mod:`vasseg.data.nifti`: BTCV, MSD; :mod:`vasseg.data.nnunet`;
:mod:`vasseg.data.pairs`), so that none of them imports another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_NII = r"\.nii(?:\.gz)?"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Pair:
    """One scan of a source dataset: case ``id``, image and (labeled cases) label NIfTI paths."""

    id: str
    image: Path
    label: Path | None


@dataclass
class Discovery:
    """What a dataset folder holds: its layout, the usable cases and one line per problem.

    ``pairs``: labeled training cases; ``unlabeled``: training images without a label (their
    ``label`` is None); ``test``: held-out images (nnU-Net's ``imagesTs``, label when
    ``labelsTs`` has one). ``meta``: the dataset.json of an nnU-Net v2 folder, else empty.
    """

    layout: str  # "btcv" | "msd" | "nnunet" | "pairs" | "mixed" (several sources)
    roots: list[Path]
    pairs: list[Pair]
    problems: list[str] = field(default_factory=list)
    label_names: dict[str, str] = field(default_factory=dict)  # from dataset.json, informational
    unlabeled: list[Pair] = field(default_factory=list)
    test: list[Pair] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def strip_nifti(name: str) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    return re.sub(rf"{_NII}$", "", name, flags=re.IGNORECASE)

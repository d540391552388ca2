"""The left-atrium (LA) benchmark in the layout its users have on disk: reader and format plug-in.

::

    ROOT/2018LA_Seg_Training Set/<ID>/mri_norm2.h5   # datasets 'image' (float32) and 'label' (uint8)
    ROOT/train.list                                  # one id per line (80 ids)
    ROOT/test.list                                   # one id per line (20 ids)

Arrays keep the file's axis order (x, y, z); voxels are 0.625 mm isotropic. The synthetic
phantoms are written in this layout too. :class:`LAFormat` is ``data.dataset: la``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vasseg.config import LA_SPACING
from vasseg.data.format import DataFormat, Record
from vasseg.data.intensity import normalize_intensity
from vasseg.data.splits import read_id_list
from vasseg.data.volumes import Case, DataError, Spacing, rescale_case
from vasseg.io import ImageIOError, read_h5
from vasseg.registry import register

if TYPE_CHECKING:
    from vasseg.io import Volume

TRAIN_DIR = "2018LA_Seg_Training Set"
CASE_FILE = "mri_norm2.h5"
LA_NUM_CLASSES = 2


class MissingCasesError(DataError):
    """Cases named in an id list have no file under the LA root; ``missing`` lists their ids."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)


def list_ids(root: str | Path, name: str = "train") -> list[str]:
    """Ids of ``ROOT/<name>.list`` (``name`` is "train" or "test", or a file name)."""
    fname = name if name.endswith(".list") else f"{name}.list"
    return read_id_list(Path(root) / fname)


def case_path(root: str | Path, case_id: str) -> Path:
    """``ROOT/2018LA_Seg_Training Set/<ID>/mri_norm2.h5``."""
    return Path(root) / TRAIN_DIR / case_id / CASE_FILE


def check_cases_exist(root: str | Path, ids: Sequence[str], list_name: str = "the id list") -> None:
    """Raise one `MissingCasesError` naming every id whose h5 file is absent under ``root``."""
    missing = [i for i in ids if not case_path(root, i).is_file()]
    if missing:
        raise MissingCasesError(
            f"LA root {root}: {len(missing)} of {len(ids)} cases listed in {list_name} are "
            f"missing: {', '.join(missing)}",
            missing,
        )


def read_h5_case(path: str | Path, num_classes: int = LA_NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one LA h5 file with the one LA reader, :func:`vasseg.io.read_h5`.

    Returns:
        image: float32 ``(X, Y, Z)`` (z-scored intensities, no unit);
        label: uint8 ``(X, Y, Z)`` with values in ``0..num_classes-1``.

    Raises DataError naming the file for a missing/corrupt/truncated file, missing keys,
    non-3-D, empty or mismatched shapes, non-finite intensities or out-of-range labels.
    """
    try:
        image, label = read_h5(path, num_classes)
    except ImageIOError as exc:
        raise DataError(str(exc)) from None
    return image, label  # type: ignore[return-value] - read_h5 requires a case's label


def read_la_case(root: str | Path, case_id: str, num_classes: int = LA_NUM_CLASSES,
                 spacing: Spacing = LA_SPACING, intensity: str = "file") -> Case:
    """One LA case at native resolution: image ``(1, X, Y, Z)`` float32, label ``(X, Y, Z)`` uint8.

    ``intensity`` is ``data.intensity`` (:mod:`vasseg.data.intensity`), applied at native resolution.
    """
    path = case_path(root, case_id)
    image, label = read_h5_case(path, num_classes)
    image = normalize_intensity(image, intensity)
    return Case(
        id=case_id,
        image=torch.from_numpy(image)[None],
        label=torch.from_numpy(label),
        spacing=spacing,
        source=str(path),
        native_shape=(image.shape[0], image.shape[1], image.shape[2]),
        native_spacing=spacing,
    )


def la_intensity(volume: Volume, mode: str) -> np.ndarray:
    """An LA-format model's input intensities: an LA .h5 gets ``data.intensity`` exactly as in
    training; any other file (a user's NIfTI) is z-scored over itself, the release's normalisation."""
    is_h5 = str(volume.source).endswith((".h5", ".hdf5"))
    return normalize_intensity(volume.image.astype(np.float32, copy=False), mode if is_h5 else "zscore")


@register("format", "la")
class LAFormat(DataFormat):
    """The LA h5 layout (and the phantoms).

    Preprocessing record ``{"kind": "zscore", "scale": s, "intensity": m}``: an LA ``.h5`` gets
    ``data.intensity`` ``m`` as in training (records without it are "file"), any other input (a
    NIfTI scan) is z-scored over itself; the image is resized trilinearly by ``s`` and the
    probabilities back to the input's grid. Label values are the class ids ``0..K-1``.
    """

    record_kind = "zscore"  # the name exported model files have carried since the first release
    class_names = ("background", "left atrium")

    def check_cases(self, ids: Sequence[str], list_name: str) -> None:
        check_cases_exist(self.root, ids, list_name)

    def read_case(self, case_id: str) -> Case:
        d = self.data
        case = read_la_case(self.root, case_id, d.num_classes, d.spacing, d.intensity)
        return rescale_case(case, d.scale, d.num_classes)

    def case_file(self, case_id: str) -> Path:
        return case_path(self.root, case_id)

    def preprocessing(self, run_dir: Path) -> Record:
        return {**super().preprocessing(run_dir), "intensity": self.data.intensity}

    @classmethod
    def input_intensities(cls, volume: Volume, record: Record) -> np.ndarray:
        return la_intensity(volume, record.get("intensity", "file"))

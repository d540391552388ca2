"""Where ``vasseg predict`` takes the geometry of ``.h5`` inputs (which carry none) from: ``--reference``
(a NIfTI of the same shape, or a folder of ``<case>.nii.gz``) or ``--spacing``."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vasseg.io import HDF5_SUFFIXES, NIFTI_SUFFIXES, ImageIOError, Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """Where ``.h5`` inputs (which carry no geometry) get their affine from."""

    reference: Path | None = None
    spacing: tuple[float, float, float] | None = None

    def apply(self, volume: Volume, name: str) -> Volume:
        """``volume`` with the reference's affine and header when it is an ``.h5`` input."""
        if volume.header is not None or self.reference is None:
            return volume
        ref = self._reference_for(name)
        import nibabel as nib

        try:
            img = nib.load(str(ref))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types on foreign files
            raise ImageIOError(f"{ref}: cannot read reference NIfTI ({type(exc).__name__}: {exc})") from None
        if tuple(img.shape[:3]) != volume.image.shape:
            raise ImageIOError(f"{ref}: reference shape {tuple(img.shape[:3])} differs from the image "
                               f"{volume.source}'s {volume.image.shape}")
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        return dataclasses.replace(volume, affine=np.asarray(img.affine, dtype=np.float64),
                                   spacing=(zooms[0], zooms[1], zooms[2]), header=img.header)

    def _reference_for(self, name: str) -> Path:
        assert self.reference is not None
        if not self.reference.is_dir():
            return self.reference
        for suffix in NIFTI_SUFFIXES:
            if (self.reference / f"{name}{suffix}").is_file():
                return self.reference / f"{name}{suffix}"
        raise ImageIOError(f"{self.reference}: no reference {name}.nii.gz or {name}.nii in this folder")


def state_geometry(geometry: Geometry, sources: list[Path], default_spacing: tuple[float, ...]) -> None:
    """Say in the log which geometry ``.h5`` inputs get (and that NIfTI inputs keep theirs)."""
    h5 = [s for s in sources if s.name.lower().endswith(HDF5_SUFFIXES)]
    if (geometry.reference or geometry.spacing) and len(h5) < len(sources):
        log.warning("--reference / --spacing apply to .h5 inputs only; NIfTI inputs keep their own geometry")
    if h5 and geometry.reference is None:
        spacing = geometry.spacing or tuple(default_spacing)
        source = "--spacing" if geometry.spacing else "the model's data.spacing"
        what = h5[0].name if len(h5) == 1 else f"{len(h5)} .h5 inputs"
        log.info("%s: .h5 files carry no geometry; the label map gets affine diag(%s, 1) (%s, mm, origin 0, "
                 "axes as stored); pass --reference IMAGE.nii.gz or --spacing X Y Z for real geometry",
                 what, ", ".join(f"{s:g}" for s in spacing), source)

"""A tiny trained run shared by the prediction, export and API tests (trained once per session)."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from tests.conftest import tiny_experiment


def trained_run(factory: pytest.TempPathFactory, phantom_root: Path, method: str = "mean_teacher") -> Path:
    """A two-step run of ``method`` on the session's phantoms, under ``<basetemp>/vasseg-demo/runs``
    (the layout `vasseg demo` writes, which the README's Python example reads). Never modify it."""
    from vasseg.engine.run import train_experiment

    demo = factory.getbasetemp() / "vasseg-demo"
    found = sorted((demo / "runs").glob(f"la_{method}_*"))
    if found:
        return found[0]
    (demo / "runs").mkdir(parents=True, exist_ok=True)
    if not (demo / "data").exists():
        (demo / "data").symlink_to(phantom_root, target_is_directory=True)
    exp = tiny_experiment(phantom_root, demo / "runs", method, data={"num_val": 0},
                          train={"iterations": 2, "ckpt_every": 2})
    return train_experiment(exp)


def phantom_h5(phantom_root: Path, case: str = "phantom_010") -> Path:
    return phantom_root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"


def phantom_nifti(phantom_root: Path, path: Path, case: str = "phantom_010",
                  affine: np.ndarray | None = None) -> Path:
    """A phantom's image as a NIfTI file at ``path`` (default affine: 1 mm, identity)."""
    with h5py.File(phantom_h5(phantom_root, case), "r") as f:
        image = f["image"][()]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4) if affine is None else affine), str(path))
    return path

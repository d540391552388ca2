"""Shared fixtures: tiny phantom datasets in the LA layout and tiny experiments on them."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from vasseg.config import Experiment, build_experiment, merge
from vasseg.data.synthetic import write_phantom_la_layout

# Two cores in CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch/BLAS/OpenMP thread: on a busy two-core host two spinning threads run far slower."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):  # scikit-learn (t-SNE) and NumPy's BLAS too
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """:func:`single_thread` for one test (use with ``pytest.mark.usefixtures("one_thread")``)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 training + 2 test phantoms (32x32x32, two classes) in the LA layout."""
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_la_layout(root, n_train=10, n_test=2, shape=(32, 32, 32), seed=0)
    return root


TINY: dict[str, Any] = {
    "data": {"labeled": 4, "num_val": 2, "patch_size": [16, 16, 16], "labeled_bs": 2,
             "unlabeled_bs": 2, "spacing": [1.0, 1.0, 1.0]},
    "model": {"filters": 4},
    "train": {"iterations": 4, "lr_step": 2, "ckpt_every": 2, "log_every": 1, "device": "cpu",
              "progress": False, "seed": 7},
    "eval": {"stride": [8, 8, 8], "batch_size": 2},
    "run": {"tensorboard": False},
}


def tiny_raw(root: Path, out: Path, method: str, /, **sections: Any) -> dict[str, Any]:
    """A nested config mapping for a tiny CPU experiment on ``root`` writing under ``out``."""
    raw = merge(TINY, {"data": {"root": str(root)}, "method": {"name": method},
                       "run": {"out_dir": str(out)}})
    return merge(raw, sections)


def tiny_experiment(root: Path, out: Path, method: str, /, **sections: Any) -> Experiment:
    return build_experiment(tiny_raw(root, out, method, **sections))


@pytest.fixture
def tiny(phantom_root: Path, tmp_path: Path):
    """``tiny(method, **sections) -> Experiment`` writing runs under this test's tmp_path."""

    def make(method: str, /, **sections: Any) -> Experiment:
        return tiny_experiment(phantom_root, tmp_path / "runs", method, **sections)

    return make


@pytest.fixture(scope="session")
def trained(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step supervised run on the phantoms (never modified: copy it to break it)."""
    from vasseg.engine.run import train_experiment

    exp = tiny_experiment(phantom_root, tmp_path_factory.mktemp("trained"), "supervised",
                          data={"num_val": 0}, train={"iterations": 2, "ckpt_every": 2})
    return train_experiment(exp)


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of :func:`trained` to break, named like it (so ``--resume`` finds it under ``runs``)."""
    return Path(shutil.copytree(trained, tmp_path / "runs" / trained.name))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A valid 20^3 NIfTI input."""
    import nibabel as nib
    import numpy as np

    path = tmp_path / "in" / "scan.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)),
             str(path))
    return path

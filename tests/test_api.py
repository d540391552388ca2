"""The Python API: ``vasseg.load_model(...).predict(...)``, the README's example, ``__version__``."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import vasseg

from tests.trained import phantom_h5, phantom_nifti, trained_run

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> Path:
    return trained_run(tmp_path_factory, phantom_root)


def readme_example() -> str:
    """The first ``python`` block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]


def test_the_readme_example_runs(run: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch,
                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(run.parents[2])  # the folder holding vasseg-demo/
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.split()[0] == vasseg.__version__


def test_arrays_tensors_and_files_give_the_same_labels(run: Path, phantom_root: Path, tmp_path: Path) -> None:
    model = vasseg.load_model(run, device="cpu")
    with h5py.File(phantom_h5(phantom_root), "r") as f:
        image = f["image"][()]
    labels = model.predict(image)
    probs = model.predict(torch.from_numpy(image), probs=True)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    assert probs.dtype == np.float32 and probs.shape == (2, *image.shape)
    assert np.abs(probs.sum(0) - 1).max() < 1e-5 and np.array_equal(probs.argmax(0), labels)
    assert np.array_equal(model.predict(phantom_nifti(phantom_root, tmp_path / "case.nii.gz")), labels)
    assert np.array_equal(model.predict(str(phantom_h5(phantom_root))), labels)
    assert model.class_names == ("background", "left atrium") and model.label_ids == (0, 1)


def test_bad_inputs_are_one_line_errors(run: Path, tmp_path: Path) -> None:
    model = vasseg.load_model(run, device="cpu")
    with pytest.raises(ValueError, match=r"^image: expected a 3-D array \(X, Y, Z\), \(1, X, Y, Z\) or \(X, Y, Z, 1\), got "
                                         r"shape \(4, 4\)$"):
        model.predict(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="finite"):
        model.predict(np.full((8, 8, 8), np.nan))
    with pytest.raises(ValueError, match=f"{tmp_path / 'none.nii.gz'}: no such file"):
        model.predict(tmp_path / "none.nii.gz")
    with pytest.raises(vasseg.config.ConfigError, match="no such run folder or checkpoint file"):
        vasseg.load_model(tmp_path / "nothing")


def test_import_vasseg_stays_light() -> None:
    """``import vasseg`` (and so every CLI start) does not import torch for the API."""
    import subprocess
    import sys

    code = "import sys, vasseg; print(vasseg.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [vasseg.__version__, "False"]

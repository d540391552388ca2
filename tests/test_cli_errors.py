"""``vasseg train`` on bad inputs: one line naming the file and the problem, exit 2, nothing written.

Each case breaks one file of a small phantom dataset (or one config value) and runs the CLI
in-process. The run's output folder must not exist afterwards: every check runs before the run
folder is made.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

from vasseg.cli import main
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.data.volumes import Case, DataError, VolumeSet, check_training_cases, min_training_extent

from tests.clitools import cli_error, listing, write_config
from tests.conftest import tiny_raw

CASE = "phantom_000"  # labeled (the first ids of train.list are)
SHAPE = (20, 20, 20)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """3 training phantoms + 1 test phantom, 20^3 voxels, in the LA layout."""
    return write_phantom_la_layout(tmp_path / "LA", n_train=3, n_test=1, shape=SHAPE, seed=0)


def _config(root: Path, tmp_path: Path, **sections) -> Path:
    raw = tiny_raw(root, tmp_path / "runs", "supervised", data={"labeled": 2, "num_val": 0})
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return write_config(tmp_path / "exp.yaml", raw)


def _case_file(root: Path) -> Path:
    return root / "2018LA_Seg_Training Set" / CASE / "mri_norm2.h5"


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["image"][()], f["label"][()]


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _with_nan(p: Path) -> None:
    image, label = _arrays(p)
    image[3, 4, 5] = np.nan
    _rewrite(p, image=image, label=label)


def _with_inf(p: Path) -> None:
    image, label = _arrays(p)
    image[0, 0, 0] = -np.inf
    _rewrite(p, image=image, label=label)


def _shapes_differ(p: Path) -> None:
    image, label = _arrays(p)
    _rewrite(p, image=image, label=label[:, :, :-1])


def _label_out_of_range(p: Path) -> None:
    image, label = _arrays(p)
    label[label == 1] = 5
    _rewrite(p, image=image, label=label)


def _empty_label(p: Path) -> None:
    image, label = _arrays(p)
    _rewrite(p, image=image, label=np.zeros_like(label))


def _too_small(p: Path) -> None:
    image, label = _arrays(p)
    _rewrite(p, image=image[:, :, :6], label=label[:, :, :6])  # 6 < half of the 16-voxel patch


def _empty_axis(p: Path) -> None:
    image, label = _arrays(p)
    _rewrite(p, image=image[:, :, :0], label=label[:, :, :0])


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, "cannot open as HDF5 (Unable to synchronously open file (truncated file"),
    "not hdf5": (lambda p: p.write_bytes(b"\x89HDF-not-really" * 40), "cannot open as HDF5"),
    "no label key": (lambda p: _rewrite(p, image=_arrays(p)[0]), "missing key 'label' (keys: image)"),
    "no image key": (lambda p: _rewrite(p, label=_arrays(p)[1]), "missing key 'image' (keys: label)"),
    "shapes differ": (_shapes_differ, "label shape (20, 20, 19) != image shape (20, 20, 20)"),
    "label values": (_label_out_of_range, "label values 5 outside 0..1"),
    "nan": (_with_nan, "image holds 1 NaN/inf values"),
    "inf": (_with_inf, "image holds 1 NaN/inf values"),
    "empty axis": (_empty_axis, "image has an empty axis (shape (20, 20, 0))"),
    "too small": (_too_small, "volume (20, 20, 6) of case phantom_000 is too small for data.patch_size (16, 16, 16)"),
    "empty label": (_empty_label, "label of labeled case phantom_000 has no foreground"),
}


@pytest.mark.parametrize("kind", list(BREAKS))
def test_bad_case_file(kind: str, root: Path, tmp_path: Path, capsys) -> None:
    breaker, problem = BREAKS[kind]
    path = _case_file(root)
    breaker(path)
    line = cli_error(capsys, "train", "--config", str(_config(root, tmp_path)), "--quiet")
    assert f"{path}: {problem}" in line
    assert listing(tmp_path / "runs") == []


def test_missing_case_names_the_root_the_list_file_and_the_id(root: Path, tmp_path: Path, capsys) -> None:
    shutil.rmtree(_case_file(root).parent)
    line = cli_error(capsys, "train", "--config", str(_config(root, tmp_path)))
    assert f"LA root {root}: 1 of 2 cases listed in {root / 'train.list'} are missing: {CASE}" in line
    assert listing(tmp_path / "runs") == []


def test_missing_id_list_and_data_root(root: Path, tmp_path: Path, capsys) -> None:
    (root / "train.list").unlink()
    line = cli_error(capsys, "train", "--config", str(_config(root, tmp_path)))
    assert f"{root / 'train.list'}: cannot read id list" in line
    line = cli_error(capsys, "train", "--config", str(_config(root, tmp_path)), f"data.root={tmp_path / 'nope'}")
    assert f"data.root: {tmp_path / 'nope'} is not a folder" in line


def test_an_empty_unlabeled_label_is_fine_but_a_small_unlabeled_volume_is_not() -> None:
    image = torch.zeros((1, 20, 20, 20))
    unlabeled = VolumeSet([Case("u", image, torch.zeros((20, 20, 20), dtype=torch.uint8), (1.0, 1.0, 1.0))])
    check_training_cases(unlabeled, (16, 16, 16), augment=True, labeled=False)
    assert min_training_extent((112, 112, 80)) == (56, 56, 40)
    tall = VolumeSet([Case("t", torch.zeros((1, 60, 30, 40)), None, (1.0, 1.0, 1.0), source="t.h5")])
    check_training_cases(tall, (56, 56, 80), augment=False, labeled=False)  # 30 >= 28
    with pytest.raises(DataError, match=r"^t.h5: volume \(60, 30, 40\) .* either way round"):
        check_training_cases(tall, (56, 80, 80), augment=True, labeled=False)  # rotated: 30 < 40


@pytest.mark.parametrize(
    "override, problem",
    [
        ("train.iterationz=3", "unknown key 'train.iterationz' (did you mean 'iterations'?)"),
        ("train.iterations=many", "train.iterations: expected an integer, got 'many'"),
        ("data.patch_size=[16,16]", "data.patch_size: expected 3 values, got 2"),
        ("train.lr=-1", "train.lr: must be a positive finite number (got -1.0)"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints: must not be negative (got -1)"),
        ("method.name=nope", "method.name: unknown method 'nope'; registered:"),
        ("method.consistency=0.1", "unknown key 'method.consistency'"),
        ("optimizer.lr=1", "unknown section 'optimizer'"),
    ],
)
def test_bad_config_value(override: str, problem: str, root: Path, tmp_path: Path, capsys) -> None:
    line = cli_error(capsys, "train", "--config", str(_config(root, tmp_path)), override)
    assert problem in line
    assert listing(tmp_path / "runs") == []


def test_missing_or_invalid_config_file(tmp_path: Path, capsys) -> None:
    line = cli_error(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    assert f"{tmp_path / 'none.yaml'}: cannot read config (No such file or directory)" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert f"{bad}: invalid YAML" in cli_error(capsys, "train", "--config", str(bad))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"train:\n  lr: 0.1  # caf\xe9\n")
    assert f"{latin}: config is not UTF-8 text (byte 0xe9" in cli_error(capsys, "train", "--config", str(latin))
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    line = cli_error(capsys, "train", "--config", str(loop))
    assert line.endswith(f"{loop}: the base: chain loops ({loop} -> {loop})")


def test_output_folder_that_cannot_be_created(root: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "runs"
    line = cli_error(capsys, "train", "--config", str(_config(root, tmp_path)), "--out-dir", str(out))
    assert f"{out}: cannot create the output folder ({blocker} is not a folder)" in line


def test_read_only_output_folder(root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    # Tests may run as root, which chmod cannot stop: stand in for a read-only mount.
    monkeypatch.setattr("vasseg.atomic.os.access", lambda path, mode: Path(path) != tmp_path)
    line = cli_error(capsys, "train", "--config", str(_config(root, tmp_path)), "--out-dir", str(tmp_path / "x"))
    assert f"{tmp_path / 'x'}: output folder is not writable ({tmp_path} is read-only)" in line


def test_debug_shows_the_traceback_instead(root: Path, tmp_path: Path) -> None:
    _truncate(_case_file(root))
    with pytest.raises(DataError, match="cannot open as HDF5"):
        main(["train", "--config", str(_config(root, tmp_path)), "--debug"])


def test_a_user_error_stays_one_line_without_nibabel(tmp_path: Path) -> None:
    """A bare GPU host may lack nibabel: a bad config must still be a one-line error, exit 2."""
    code = ("import sys; sys.modules['nibabel'] = None; from vasseg.cli import main; "
            f"sys.exit(main(['train', '--config', {str(tmp_path / 'missing.yaml')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "missing.yaml: cannot read config" in proc.stderr and "Traceback" not in proc.stderr

"""Issue 25 items 3-8 and its rough edges: inputs that gave a traceback or were silently dropped.

Each now stops the command with one line naming the file (or the option) and the problem, exit 2.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from vasseg.api import array_volume, load_model
from vasseg.cli import main
from vasseg.config import ConfigError
from vasseg.io import ImageIOError, read_volume

from tests.clitools import cli_error, listing, write_config
from tests.conftest import tiny_raw

CPU = ("--device", "cpu", "--quiet")


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


# ------------------------------------------------------------------------------ 3: devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without CUDA")
def test_a_bad_device_is_one_line_naming_the_option(run_copy: Path, image: Path, tmp_path: Path, capsys,
                                                     phantom_root: Path) -> None:
    forms = "is not a device; use auto, cpu, cuda or cuda:N"
    line = cli_error(capsys, "predict", str(run_copy), str(image), str(tmp_path / "p.nii.gz"), "--device", "gpu7")
    assert line == f"vasseg predict: error: --device: 'gpu7' {forms}"
    line = cli_error(capsys, "evaluate", str(run_copy), "--split", "test", "--device", "gpu7")
    assert line == f"vasseg evaluate: error: --device: 'gpu7' {forms}"
    config = write_config(tmp_path / "exp.yaml", tiny_raw(phantom_root, tmp_path / "new", "supervised"))
    line = cli_error(capsys, "train", "--config", str(config), "train.device=gpu7", "--quiet")
    assert line == f"vasseg train: error: train.device: 'gpu7' {forms}"
    with pytest.raises(ConfigError, match=f"^device: 'gpu7' {forms}$"):
        load_model(run_copy, device="gpu7")
    line = cli_error(capsys, "predict", str(run_copy), str(image), str(tmp_path / "p.nii.gz"), "--device", "cuda")
    assert line == "vasseg predict: error: --device: 'cuda' requested but this torch build sees no CUDA device"
    if not torch.backends.mps.is_available():
        line = cli_error(capsys, "predict", str(run_copy), str(image), str(tmp_path / "p.nii.gz"), "--device", "mps")
        assert "--device: 'mps' requested but this machine has no MPS device" in line
    assert listing(tmp_path / "new") == [] and not (tmp_path / "p.nii.gz").exists()


# ------------------------------------------------------------------------------ 4, 5: headers


def test_a_singular_affine_is_refused_at_read(run_copy: Path, tmp_path: Path, capsys) -> None:
    """The sform's y row zeroed (nibabel cannot write such a file itself): it failed when writing."""
    raw = bytearray(_nifti(tmp_path / "ok.nii", np.ones((20, 20, 20), np.float32)).read_bytes())
    struct.pack_into("<4f", raw, 296, 0.0, 0.0, 0.0, 0.0)  # srow_y of the NIfTI-1 header
    scan = tmp_path / "flat.nii"
    scan.write_bytes(bytes(raw))
    line = cli_error(capsys, "predict", str(run_copy), str(scan), str(tmp_path / "out.nii.gz"), *CPU)
    assert line.startswith(f"vasseg predict: error: {scan}: singular affine (a zero voxel size")
    assert not (tmp_path / "out.nii.gz").exists()


def _huge_header(path: Path, small: Path) -> Path:
    raw = bytearray(small.read_bytes())
    struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[] of the NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_a_header_claiming_a_huge_volume_is_refused_before_allocating(name: str, tmp_path: Path) -> None:
    small = _nifti(tmp_path / "small.nii", np.ones((4, 4, 4), np.float32))
    huge = _huge_header(tmp_path / name, small)
    with pytest.raises(ImageIOError, match=rf"^{huge}: cannot read NIfTI: its header's shape \(30000, 30000, 30000\) "
                                           rf"needs 108000000000000 bytes of voxels, the file holds \d+ \(truncated, "
                                           rf"or a corrupt header\)$"):
        read_volume(huge)


def test_a_volume_over_the_memory_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    import vasseg.io as io_module

    scan = _nifti(tmp_path / "s.nii", np.ones((8, 8, 8), np.float32))
    monkeypatch.setattr(io_module, "memory_limit", lambda: 1000)
    with pytest.raises(ImageIOError, match=r"needs 0.0 GiB as float32, over the limit of 0.0 GiB \(half this "):
        read_volume(scan)


# ------------------------------------------------------------------------------ 6: links


def test_broken_and_looping_links_are_named_as_failed_cases(run_copy: Path, image: Path, tmp_path: Path,
                                                             capsys) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    os.symlink(image, scans / "good.nii.gz")
    os.symlink(tmp_path / "gone.nii.gz", scans / "broken.nii.gz")
    os.symlink(scans / "loop.nii.gz", scans / "loop.nii.gz")
    out = tmp_path / "out"
    rc = main(["predict", str(run_copy), str(scans), str(out), *CPU])
    stdout, stderr = capsys.readouterr()
    assert rc == 2 and stdout.split() == [str(out / "good.nii.gz")]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vasseg predict: error: 2 of 3 cases failed: ")
    assert f"{scans / 'broken.nii.gz'}: symbolic link to {tmp_path / 'gone.nii.gz'}, which does not exist" in last
    assert f"{scans / 'loop.nii.gz'}: symbolic link to {scans / 'loop.nii.gz'}, which does not exist or loops" in last
    line = cli_error(capsys, "predict", str(run_copy), str(scans / "loop.nii.gz"), str(tmp_path / "x.nii.gz"), *CPU)
    assert f"{scans / 'loop.nii.gz'}: symbolic link to" in line


# ------------------------------------------------------------------------------ 7, 8 and config files


def test_config_files_scalar_sections_empty_files_and_duplicate_keys(tmp_path: Path, capsys) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.05, "iterations": 7}}))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("base: base.yaml\ntrain: 5\n")
    line = cli_error(capsys, "train", "--config", str(scalar), "train.iterations=3")
    assert line == f"vasseg train: error: {scalar}: section 'train' must be a mapping of keys, got 5"
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    assert cli_error(capsys, "train", "--config", str(empty)) == f"vasseg train: error: {empty}: config file is empty"
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    line = cli_error(capsys, "train", "--config", str(twice))
    assert line == f"vasseg train: error: {twice}: key 'lr' given twice (line 3); keep one"


def test_a_non_utf8_id_list_is_named(phantom_root: Path, tmp_path: Path, capsys) -> None:
    import shutil

    root = Path(shutil.copytree(phantom_root, tmp_path / "LA"))
    (root / "train.list").write_bytes(b"phantom_000\nphantom_\xff01\n")
    config = write_config(tmp_path / "exp.yaml", tiny_raw(root, tmp_path / "runs", "supervised"))
    line = cli_error(capsys, "train", "--config", str(config), "--quiet")
    assert line == (f"vasseg train: error: {root / 'train.list'}: id list is not UTF-8 text (byte 0xff at "
                    f"offset 20)")


# ------------------------------------------------------------------------------ rough edges


def test_predict_outputs_under_a_file_or_named_like_a_file(run_copy: Path, image: Path, tmp_path: Path,
                                                           capsys) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "seg.nii.gz"
    line = cli_error(capsys, "predict", str(run_copy), str(image), str(out), *CPU)
    assert line == f"vasseg predict: error: {out}: {tmp_path / 'afile'} is a file, not a folder"
    out = tmp_path / "pout.txt"
    line = cli_error(capsys, "predict", str(run_copy), str(image), str(out), *CPU)
    assert line == (f"vasseg predict: error: {out}: a file name, but a label map must end in .nii or .nii.gz (an "
                    f"output folder's name needs no extension)")
    assert not out.exists()


def test_a_complex_nifti_is_refused_without_a_warning(tmp_path: Path, recwarn) -> None:
    scan = _nifti(tmp_path / "c.nii.gz", np.ones((6, 6, 6), np.complex64))
    with pytest.raises(ImageIOError, match=r"complex-valued image \(complex64\) is not supported; save its "):
        read_volume(scan)
    assert not [w for w in recwarn if "complex" in str(w.message).lower()]


def test_the_api_takes_a_trailing_singleton_axis_and_names_an_empty_array() -> None:
    x = np.zeros((5, 6, 7, 1), np.float32)
    assert array_volume(x, (1, 1, 1)).image.shape == (5, 6, 7)
    assert array_volume(x[..., 0][None], (1, 1, 1)).image.shape == (5, 6, 7)
    with pytest.raises(ValueError, match=r"^image: empty array \(shape \(0, 6, 7\)\)$"):
        array_volume(np.zeros((0, 6, 7)), (1, 1, 1))


def test_a_deleted_latest_pointer_uses_the_newest_step_file(run_copy: Path, image: Path, tmp_path: Path,
                                                            capsys, caplog) -> None:
    (run_copy / "checkpoints" / "latest").unlink()
    out = tmp_path / "p.nii.gz"
    with caplog.at_level("WARNING", logger="vasseg"):
        assert main(["predict", str(run_copy), str(image), str(out), *CPU]) == 0
    assert f"{run_copy / 'checkpoints' / 'latest'} is missing; using the newest step checkpoint, " \
           f"step_000002.pt" in caplog.text
    assert out.is_file()


def test_corrupted_weight_bytes_in_a_model_file_are_refused(run_copy: Path, image: Path, tmp_path: Path,
                                                            capsys) -> None:
    model = tmp_path / "m.safetensors"
    assert main(["export", str(run_copy), str(model), "--quiet"]) == 0
    capsys.readouterr()
    raw = bytearray(model.read_bytes())
    raw[-3] ^= 0x40  # a byte of the last tensor's data: the header still parses
    model.write_bytes(bytes(raw))
    line = cli_error(capsys, "predict", str(model), str(image), str(tmp_path / "p.nii.gz"), *CPU)
    assert line == (f"vasseg predict: error: {model}: the weights are corrupt (their SHA-256 differs from the one "
                    f"recorded when the file was written); export the model again")

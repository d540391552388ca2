"""The multi-organ CT path end to end: prepare -> train -> evaluate (Table II) -> predict.

Synthetic NIfTI phantoms run by default; the real example CT of ../shared/data runs with
``-m realdata`` (its labels are a model's output: the tests check the pipeline, not accuracy).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from vasseg.cli import main
from vasseg.config import load_config
from vasseg.data.nifti import write_synthetic_ct_dataset
from vasseg.data.prepare import PrepareOptions, prepare_dataset
from vasseg.data.prepared import labels_to_source, load_label_map, read_manifest
from vasseg.engine.evaluate import Row, summarize_rows, write_results
from vasseg.engine.run import train_experiment
from vasseg.io import read_volume
from vasseg.methods import available_methods

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CT = REPO.parent / "shared" / "data" / "abdomen_ct_example"
ORGANS = ("background", "spleen", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "pancreas",
          "duodenum")
TINY = ["model.filters=4", "data.patch_size=[16,16,16]", "eval.stride=[8,8,8]", "train.iterations=3",
        "train.lr_step=2", "train.ckpt_every=3", "train.log_every=1", "train.device=cpu",
        "train.channels_last=\"off\"", "run.tensorboard=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 CT phantoms (48x40x24, ~0.8x0.8x2.5 mm, half stored LPS) in the BTCV layout."""
    return write_synthetic_ct_dataset(tmp_path_factory.mktemp("ct"), 8, (48, 40, 24), seed=11)


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_cli_prepare_train_evaluate_predict(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prepared = tmp_path / "mo"
    _run(["prepare", str(synthetic), "--out", str(prepared), "--shape", "32", "32", "16", "--test-fraction",
          "0.25", "--quiet"], capsys)
    assert len((prepared / "test.list").read_text().split()) == 2

    run_dir = Path(_run(["train", "--config", str(REPO / "configs/mo_cpu/supervised_14.yaml"),
                         f"data.root={prepared}", "data.labeled=4", *TINY, "--out-dir", str(tmp_path / "runs"),
                         "--quiet"], capsys).strip().splitlines()[-1])
    assert (run_dir / "checkpoints").is_dir()

    table = _run(["evaluate", str(run_dir), "--split", "test", "--quiet"], capsys)
    assert "Scored on the model's grid" in table and "Scored on the original scan" in table
    assert table.count("| method | Dice % | Jaccard % | 95HD (vox) | ASSD* (vox) | 95HD (mm) | ASSD* (mm) | "
                       "spleen (Dice %) | left kidney (Dice %) |") == 2
    assert "| supervised (duodenum) | 4 |" in table
    out_dir = next((run_dir / "eval").glob("test_*"))
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["grid"] == "model" and set(summary["other_grids"]) == {"native"}
    for name, grid in (("cases.csv", "model"), ("cases_native.csv", "native")):
        rows = list(csv.DictReader((out_dir / name).open()))
        assert len(rows) == 2 * 8 and {r["grid"] for r in rows} == {grid}

    image = synthetic / "img" / "img0002.nii.gz"  # stored LPS
    pred_path = tmp_path / "pred.nii.gz"
    _run(["predict", str(run_dir), str(image), str(pred_path), "--quiet"], capsys)
    src, pred = nib.load(str(image)), nib.load(str(pred_path))
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert np.allclose(pred.header.get_zooms(), src.header.get_zooms())
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 3, 4, 5, 6, 7, 11, 14}  # BTCV ids restored


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "vas"])
def test_every_method_trains_on_nine_classes(method: str, synthetic: Path, tmp_path_factory: pytest.TempPathFactory,
                                             tmp_path: Path) -> None:
    """Two steps on 9-class volumes; 16^3 crops of 32x32x16 volumes miss some organs entirely."""
    if method not in available_methods():
        pytest.skip(f"method {method} is not registered")
    prepared = tmp_path_factory.getbasetemp() / "mo_nine"
    if not prepared.exists():
        prepare_dataset([synthetic], prepared, PrepareOptions(shape=(32, 32, 16)), progress=False)
    config = REPO / "configs" / "mo" / f"{method}_14.yaml"
    exp = load_config(config, [f"data.root={prepared}", "data.labeled=3", "data.labeled_bs=2", "train.iterations=2",
                               f"run.out_dir={tmp_path}", *[o for o in TINY if "iterations" not in o]])
    run_dir = train_experiment(exp, evaluate_val=False)
    rows = [json.loads(line) for line in (run_dir / "scalars.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)


def _rows(grid: str, dice: float) -> list[Row]:
    values = {"dice": dice, "jaccard": dice / 2, "hd95": 2.0, "asd": 1.0, "assd": 1.0, "hd95_mm": 4.0,
              "asd_mm": 2.0, "assd_mm": 2.0}
    return [Row(case=c, cls=k, values=values, status="ok", grid=grid) for c in ("a", "b") for k in range(1, 9)]


def test_table_ii_layout_and_grids(tmp_path: Path) -> None:
    rows = _rows("model", 0.5) + _rows("native", 0.25)
    summary = summarize_rows(rows)
    assert summary["grid"] == "model" and summary["mean"]["dice"].mean == 0.5
    assert summary["other_grids"]["native"]["mean"]["dice"].mean == 0.25
    table = write_results(rows, summary, tmp_path, "vas", "14", "note", ORGANS)
    header = ("| method | Dice % | Jaccard % | 95HD (vox) | ASSD* (vox) | 95HD (mm) | ASSD* (mm) | "
              + " | ".join(f"{o} (Dice %)" for o in ORGANS[1:]) + " |")
    assert header in table
    assert "| vas | 50.00 | 25.00 | 2.00 | 1.00 | 4.00 | 2.00 | " + " | ".join(["50.00"] * 8) + " |" in table
    assert "| vas | 25.00 | 12.50 |" in table
    assert len(list(csv.DictReader((tmp_path / "cases.csv").open()))) == 16
    assert json.loads((tmp_path / "summary.json").read_text())["other_grids"]["native"]["cases"] == 2


# --------------------------------------------------------------------------- the real example CT


def resampling_error(native: np.ndarray, v_native: float, prepared: np.ndarray, v_prep: float) -> float:
    """Volume (mm^3) of the one-voxel shells around both surfaces, where resampling can change a
    mask (as in tests/data/test_prepare.py)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    def shell(mask: np.ndarray) -> int:
        return int((binary_dilation(mask) & ~binary_erosion(mask)).sum())

    return max(shell(native) * v_native, shell(prepared) * v_prep)


def _example_source(tmp_path: Path) -> Path:
    """The example CT as a BTCV-style pair (symlinks: ../shared/data stays read-only)."""
    if not (EXAMPLE_CT / "ct.nii.gz").is_file():
        pytest.skip(f"{EXAMPLE_CT} not found")
    src = tmp_path / "example"
    src.mkdir()
    (src / "img0001.nii.gz").symlink_to(EXAMPLE_CT / "ct.nii.gz")
    (src / "label0001.nii.gz").symlink_to(EXAMPLE_CT / "seg.nii.gz")
    return src


@pytest.mark.realdata
def test_example_ct_prepare_keeps_every_mapped_organ(tmp_path: Path) -> None:
    out = prepare_dataset([_example_source(tmp_path)], tmp_path / "prep", PrepareOptions(
        label_map="totalsegmentator_v2", test_fraction=0.0), progress=False)
    record = read_manifest(out)["cases"]["0001"]
    seg = np.asarray(nib.load(str(EXAMPLE_CT / "seg.nii.gz")).dataobj)
    lm = load_label_map("totalsegmentator_v2")
    with h5py.File(out / "cases" / "0001.h5", "r") as f:
        label, native = f["label"][()], f["native_label"][()]
        v_native, v_prep = float(np.prod(f.attrs["canonical_spacing"])), float(np.prod(f.attrs["spacing"]))
    assert label.shape == (128, 128, 64)
    for source_id, cls in lm.to_class.items():
        name = ORGANS[cls]
        assert record["native_voxels"][name] == int((seg == source_id).sum())  # mapping is exact
        error = abs(record["voxels"][name] * v_prep - record["native_voxels"][name] * v_native)
        assert error <= resampling_error(native == cls, v_native, label == cls, v_prep), name
    # Oracle: the prepared label as probabilities, mapped back onto the scan's own grid and ids.
    exp = load_config(REPO / "configs/mo/supervised_14.yaml", [f"data.root={out}"])
    probs = torch.nn.functional.one_hot(torch.from_numpy(label).long(), 9).permute(3, 0, 1, 2).float()
    restored = labels_to_source(probs, read_volume(EXAMPLE_CT / "ct.nii.gz"), tmp_path, exp)
    for source_id in lm.to_class:
        a, b = restored == source_id, seg == source_id
        if b.any():
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97, source_id


@pytest.mark.realdata
def test_example_ct_predict_opens_on_the_input_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = _example_source(tmp_path)
    prepared = tmp_path / "prep"
    _run(["prepare", str(source), "--out", str(prepared), "--label-map", "totalsegmentator_v2", "--shape", "64",
          "64", "32", "--test-fraction", "0", "--quiet"], capsys)
    run_dir = Path(_run(["train", "--config", str(REPO / "configs/mo_cpu/supervised_14.yaml"),
                         f"data.root={prepared}", "data.labeled=1", "data.labeled_bs=1", "data.patch_size=[32,32,32]",
                         *[o for o in TINY if "patch_size" not in o], "eval.stride=[32,32,32]",
                         "--out-dir", str(tmp_path / "runs"), "--quiet"], capsys).strip().splitlines()[-1])
    pred_path = tmp_path / "example_pred.nii.gz"
    _run(["predict", str(run_dir), str(EXAMPLE_CT / "ct.nii.gz"), str(pred_path), "--quiet"], capsys)
    src, pred = nib.load(str(EXAMPLE_CT / "ct.nii.gz")), nib.load(str(pred_path))
    assert pred.shape == src.shape
    assert np.allclose(pred.affine, src.affine) and np.allclose(pred.header.get_zooms(), src.header.get_zooms())
    assert np.allclose(pred.get_qform(), src.affine) and np.allclose(pred.get_sform(), src.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 3, 4, 15, 5, 6, 7, 19}  # TotalSegmentator ids

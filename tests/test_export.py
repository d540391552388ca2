"""Exported model files (``vasseg export``): round trip, size, refusal of pickles, use by
``predict`` / ``evaluate`` / ``load_model``, and ``train.init_from``.

Round-trip tolerance (stated in the README): the largest per-voxel probability difference to
the checkpoint's predictions is 0 for fp32 (bit-identical), at most 2e-3 for fp16 and 2e-2 for
bf16, and the label maps agree wherever the checkpoint's winning probability leads by more than
twice that. Measured: 7e-5 and 5e-4 on this test's 2-step model; 6.9e-4 and 5.1e-3 on the demo's
mean-teacher run (8 filters, 150 steps; 1 and 6 of 384,000 test voxels changed label). Both
sides compute in fp32 (``precision="fp32"``): these bounds are about the stored weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import vasseg
from vasseg.cli import main
from vasseg.config import build_experiment, load_config, run_name
from vasseg.data.nifti import write_synthetic_ct_dataset
from vasseg.data.prepare import PrepareOptions, prepare_dataset
from vasseg.engine.run import train_experiment
from vasseg.engine.setup import build_method
from vasseg.engine.init_from import init_student
from vasseg.inference.export import export_run
from vasseg.modelfile import ModelFileError, read_model_file, write_model_file

from tests.clitools import cli_error
from tests.conftest import single_thread, tiny_experiment
from tests.trained import phantom_h5, trained_run

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = {"fp32": 0.0, "fp16": 2e-3, "bf16": 2e-2}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> Path:
    return trained_run(tmp_path_factory, phantom_root)


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    return {dtype: export_run(run, folder / f"model_{dtype}.safetensors", dtype=dtype) for dtype in TOLERANCE}


@pytest.fixture(scope="module")
def reference(run: Path, phantom_root: Path) -> np.ndarray:
    """The run's own probabilities ``(K, X, Y, Z)`` for one phantom."""
    with single_thread():
        return vasseg.load_model(run, device="cpu", precision="fp32").predict(phantom_h5(phantom_root), probs=True)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_the_exported_model_predicts_what_the_run_predicts(dtype, reference, exported, phantom_root) -> None:
    case = phantom_h5(phantom_root)
    model = vasseg.load_model(exported[dtype], device="cpu", precision="fp32")
    probs = model.predict(case, probs=True)
    assert float(np.abs(probs - reference).max()) <= TOLERANCE[dtype]
    margin = np.abs(reference[1] - reference[0])
    sure = margin > 2 * TOLERANCE[dtype]
    assert np.array_equal(probs.argmax(0)[sure], reference.argmax(0)[sure]) and sure.mean() > 0.99
    assert model.step == 2 and model.class_names == ("background", "left atrium")


def test_the_file_describes_itself(exported, run) -> None:
    model_file = read_model_file(exported["fp16"])
    assert model_file.exp.method.name == "mean_teacher" and model_file.exp.model.filters == 4
    assert model_file.preprocessing == {"kind": "zscore", "scale": 1.0, "intensity": "file"}
    assert model_file.info == {"network": "student", "dtype": "fp16", "step": 2, "method": "mean_teacher",
                               "checkpoint": "step_000002.pt"}
    weights = model_file.weights
    assert weights["encoder.block_five.0.weight"].dtype == torch.float16
    assert weights["encoder.block_five.1.running_var"].dtype == torch.float32  # buffers stay exact
    assert weights["encoder.block_five.1.num_batches_tracked"].dtype == torch.int64
    assert not any(k.startswith("teacher.") for k in weights)


def test_a_half_precision_la_vnet_is_at_most_20_mb(tmp_path: Path) -> None:
    exp = load_config(REPO / "configs" / "la" / "vas_16.yaml")
    method = build_method(exp)
    assert sum(p.numel() for p in method.student.parameters()) == 9_448_866
    for dtype in ("fp16", "bf16"):
        path = write_model_file(tmp_path / f"la_{dtype}.safetensors", exp, method.student,
                                {"kind": "zscore", "scale": 1.0}, ("background", "left atrium"), dtype)
        assert path.stat().st_size <= 20_000_000


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_in_place_of_a_model_file_is_refused_everywhere(run, phantom_root, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    fake = tmp_path / "model.safetensors"
    torch.save({"weights": Payload(marker)}, fake)
    refusal = f"{fake}: refused: this is a pickle (torch.save) file, not a safetensors model file; nothing in it"
    assert refusal in cli_error(capsys, "predict", str(fake), str(phantom_h5(phantom_root)), str(tmp_path / "p.nii.gz"))
    assert refusal in cli_error(capsys, "evaluate", str(fake), "--split", "test", "--quiet")
    assert refusal in cli_error(capsys, "train", "--config", str(REPO / "configs/la/supervised_16.yaml"),
                                f"data.root={phantom_root}", f"train.init_from={fake}", "data.patch_size=[16,16,16]",
                                "model.filters=4", "data.labeled=4", "--out-dir", str(tmp_path / "runs"), "--quiet")
    with pytest.raises(ModelFileError, match="refused: this is a pickle"):
        vasseg.load_model(fake)
    assert not marker.exists() and not list((tmp_path / "runs").glob("*"))  # no run folder left
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert f"{fake}: not a readable safetensors model file" in cli_error(capsys, "evaluate", str(fake), "--quiet")


def test_evaluate_and_predict_accept_the_model_file(run, exported, phantom_root, tmp_path, capsys) -> None:
    model = exported["fp32"]
    assert main(["evaluate", str(model), "--split", "test", "--device", "cpu", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu", "--quiet", "--out",
                 str(tmp_path / "run_eval")]) == 0
    run_table = capsys.readouterr().out
    assert (model.parent / "eval" / "test_model_fp32" / "cases.csv").is_file()
    assert table.split("| mean_teacher |")[1].split("\n")[0] == run_table.split("| mean_teacher |")[1].split("\n")[0]
    out = tmp_path / "pred.nii.gz"
    assert main(["predict", str(exported["fp16"]), str(phantom_h5(phantom_root)), str(out), "--device", "cpu",
                 "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    line = cli_error(capsys, "predict", str(model), str(phantom_h5(phantom_root)), str(tmp_path / "b.nii.gz"),
                     "--checkpoint", "best")
    assert f"--checkpoint best: {model} is a model file with one set of weights" in line


def test_export_cli_refuses_to_overwrite_and_writes_atomically(run, tmp_path, capsys) -> None:
    out = tmp_path / "m.safetensors"
    assert main(["export", str(run), str(out), "--dtype", "bf16", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert read_model_file(out).info["dtype"] == "bf16"
    assert f"{out}: already exists; pass --overwrite to replace" in cli_error(capsys, "export", str(run), str(out))
    assert "a model file must end in .safetensors" in cli_error(capsys, "export", str(run), str(tmp_path / "m.pt"))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("source", ["model file", "checkpoint"])
def test_init_from_starts_the_student_and_its_teacher_from_the_weights(source, run, exported, phantom_root,
                                                                      tmp_path) -> None:
    path = exported["fp32"] if source == "model file" else next((run / "checkpoints").glob("step_*.pt"))
    expected = read_model_file(exported["fp32"]).weights
    exp = tiny_experiment(phantom_root, tmp_path, "mean_teacher", train={"init_from": str(path)})
    method = build_method(exp)
    init_student(method, exp.train.init_from)
    for net in (method.student, method.teacher):
        assert all(torch.equal(t, expected[k]) for k, t in net.state_dict().items())


def test_init_from_in_training_is_logged_and_a_mismatch_is_one_line(exported, phantom_root, tmp_path, caplog,
                                                                    capsys) -> None:
    exp = tiny_experiment(phantom_root, tmp_path / "runs", "supervised", data={"num_val": 0},
                          train={"iterations": 1, "ckpt_every": 1, "init_from": str(exported["fp16"])})
    with caplog.at_level("INFO", logger="vasseg"):
        train_experiment(exp)
    assert f"train.init_from: student weights from {exported['fp16']} (model file (step 2, mean_teacher)); " \
           f"optimizer, schedule and other networks start fresh at step 0" in caplog.text
    line = cli_error(capsys, "train", "--config", str(REPO / "configs/la/supervised_16.yaml"),
                     f"data.root={phantom_root}", f"train.init_from={exported['fp16']}", "data.patch_size=[16,16,16]", "model.filters=8",
                     "data.labeled=4", "--out-dir", str(tmp_path / "other"), "--quiet")
    assert f"{exported['fp16']}: weights do not fit the network (Error(s) in loading state_dict for VNet" in line
    assert not list((tmp_path / "other").glob("*"))


def test_a_prepared_ct_model_file_needs_nothing_else(tmp_path: Path) -> None:
    """A multi-organ run's model file carries its HU window, shape and label map: with the dataset
    and the run folder gone it still writes source ids on the CT's own grid, with probabilities."""
    source = write_synthetic_ct_dataset(tmp_path / "ct", 3, (32, 32, 16), seed=5)
    prepared = prepare_dataset([source], tmp_path / "prep", PrepareOptions(shape=(32, 32, 16), test_fraction=0.0),
                               progress=False)
    exp = load_config(REPO / "configs/mo_cpu/supervised_14.yaml", [
        f"data.root={prepared}", "data.labeled=3", "data.labeled_bs=2", "data.patch_size=[16,16,16]",
        "model.filters=4", "eval.stride=[16,16,16]", "train.iterations=1", "train.ckpt_every=1",
        "train.device=cpu", "run.tensorboard=false", f"run.out_dir={tmp_path / 'runs'}", "train.progress=false"])
    run_dir = train_experiment(exp, evaluate_val=False)
    image = source / "img" / "img0002.nii.gz"  # stored LPS
    expected = vasseg.load_model(run_dir, device="cpu").predict(image)
    model_path = export_run(run_dir, tmp_path / "mo.safetensors", dtype="fp32")
    shutil.rmtree(prepared)
    shutil.rmtree(run_dir)
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(model_path), str(image), str(out), "--save-probabilities", "--device", "cpu",
                 "--quiet"]) == 0
    labels = np.asarray(nib.load(str(out)).dataobj)
    assert labels.shape == nib.load(str(image)).shape and np.array_equal(labels, expected)
    with np.load(tmp_path / "seg.npz") as npz:
        probs, ids = npz["probabilities"].astype(np.float32), npz["label_ids"]
    assert ids.tolist() == [0, 1, 3, 4, 5, 6, 7, 11, 14]  # BTCV ids of the 8 organs
    assert np.abs(probs.sum(0) - 1).max() <= 5e-3
    top2 = np.sort(probs, axis=0)[-2:]
    differ = ids[probs.argmax(0)] != labels
    assert (top2[1] - top2[0] < 2e-3)[differ].all()  # only float16 near-ties differ


def test_a_fine_tuned_run_gets_its_own_folder() -> None:
    plain, tuned = build_experiment({}), build_experiment({"train": {"init_from": "/models/la.safetensors"}})
    assert run_name(plain) != run_name(tuned)

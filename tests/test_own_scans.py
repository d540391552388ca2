"""Semi-supervised training on a user's own scans, end to end (issue 26): nnU-Net layout + an
unlabeled folder -> ``vasseg prepare`` -> ``vasseg train`` on the planned config -> ``vasseg predict``
on imagesTs, and the README's three commands. The shipped example CT as an unlabeled case runs with
``-m realdata``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml

from vasseg.cli import main
from vasseg.data.batcher import TwoStreamBatcher
from vasseg.data.prepared import read_manifest
from vasseg.data.synthetic_nnunet import write_synthetic_nnunet, write_unlabeled_scans
from vasseg.modelfile import read_model_file

from tests.conftest import SHARED_DATA

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_CT = SHARED_DATA / "abdomen_ct_example" / "ct.nii.gz"

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys: pytest.CaptureFixture, *argv: str) -> list[str]:
    code = main([*argv, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.split()


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The unlabeled case ids of every batch the trainer draws."""
    ids: list[str] = []
    original = TwoStreamBatcher.next

    def recording(self: TwoStreamBatcher):  # noqa: ANN202
        batch = original(self)
        ids.extend(batch.ids_u)
        return batch

    monkeypatch.setattr(TwoStreamBatcher, "next", recording)
    return ids


def _same_grid(images: Path, predictions: Path) -> list[str]:
    """Every image of ``images`` has its prediction ``<case>.nii.gz`` with the same shape and affine."""
    names = []
    for image_path in sorted(images.glob("*_0000.nii.gz")):
        name = image_path.name[: -len("_0000.nii.gz")]
        image, pred = nib.load(str(image_path)), nib.load(str(predictions / f"{name}.nii.gz"))
        assert pred.shape == image.shape and np.allclose(pred.affine, image.affine, atol=1e-5), name
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
        names.append(name)
    return names


def test_mr_nnunet_dataset_with_an_unlabeled_folder_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               drawn: list[str]) -> None:
    raw = write_synthetic_nnunet(tmp_path / "Dataset042_Heart", labeled=3, test=2, seed=8)
    more = write_unlabeled_scans(tmp_path / "more_scans", 4, seed=21)
    affine = nib.load(str(raw / "imagesTr" / "case_000_0000.nii.gz")).affine
    assert not np.allclose(affine, np.diag(np.diag(affine)))  # rotated: a non-identity affine
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    assert spacing[2] > 2 * spacing[0]  # anisotropic

    out = tmp_path / "prepared"
    assert _run(capsys, "prepare", str(raw), "--unlabeled", str(more), "--out", str(out)) == [str(out)]
    assert read_manifest(out)["modality"] == "mr"

    run_dir = Path(_run(capsys, "train", "--config", str(out / "config.yaml"), "method.name=mean_teacher",
                        "train.iterations=4", "--out-dir", str(tmp_path / "runs"))[-1])
    unlabeled = yaml.safe_load((run_dir / "split.yaml").read_text())["unlabeled"]
    extra = ["extra_000", "extra_001", "extra_002", "extra_003"]
    assert unlabeled == extra and sorted(set(drawn)) == extra and len(drawn) == 4 * 2

    predictions = tmp_path / "predictions"
    written = _run(capsys, "predict", str(run_dir), str(raw / "imagesTs"), str(predictions))
    assert written == [str(predictions / "case_003.nii.gz"), str(predictions / "case_004.nii.gz")]
    assert _same_grid(raw / "imagesTs", predictions) == ["case_003", "case_004"]

    # The model file carries the MR preprocessing: it predicts the same maps without the run folder.
    model = tmp_path / "model.safetensors"
    _run(capsys, "export", str(run_dir), str(model), "--dtype", "fp32")
    prep = read_model_file(model).preprocessing
    assert prep["modality"] == "mr" and prep["percentiles"] == [0.5, 99.5] and prep["target_spacing"]
    _run(capsys, "predict", str(model), str(raw / "imagesTs"), str(tmp_path / "from_file"))
    for name in ("case_003", "case_004"):
        a, b = (np.asarray(nib.load(str(d / f"{name}.nii.gz")).dataobj) for d in (predictions, tmp_path / "from_file"))
        assert np.array_equal(a, b)


def readme_commands() -> list[list[str]]:
    """The ``bash`` block of the README's "Train on your own scans" section, one argv per line."""
    section = README.read_text().split("\n## Train on your own scans\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_readme_three_commands(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["vasseg", "prepare"], ["vasseg", "train"], ["vasseg", "predict"]]
    monkeypatch.chdir(tmp_path)
    write_synthetic_nnunet(tmp_path / "Dataset042_Heart", labeled=2, test=1, shape=(32, 32, 12), seed=2)
    write_unlabeled_scans(tmp_path / "more_scans", 2, shape=(32, 32, 12))
    _run(capsys, *commands[0][1:])
    # The README's train command, shortened to 2 steps with a smaller VNet: only the length is changed.
    run_dir = _run(capsys, *commands[1][1:], "train.iterations=2", "model.filters=4")[-1]
    assert Path(run_dir).parent == tmp_path / "runs" and "_vas_" in Path(run_dir).name
    predict = [run_dir if arg == "runs/<run>" else arg for arg in commands[2][1:]]
    _run(capsys, *predict)
    assert _same_grid(tmp_path / "Dataset042_Heart" / "imagesTs", tmp_path / "predictions") == ["case_002"]


@pytest.mark.realdata
def test_the_example_ct_is_an_unlabeled_case(tmp_path: Path, capsys: pytest.CaptureFixture, drawn: list[str]) -> None:
    """A CT dataset in nnU-Net layout (channel "CT") with ../shared/data's example CT as unlabeled scan."""
    if not EXAMPLE_CT.is_file():
        pytest.skip(f"{EXAMPLE_CT} not found")
    from vasseg.data.nifti import BTCV_NAMES, write_synthetic_ct_dataset

    source = write_synthetic_ct_dataset(tmp_path / "phantoms", 2, (48, 40, 24), seed=3)
    raw = tmp_path / "Dataset007_Abdomen"
    for i in (1, 2):
        (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
        (raw / "labelsTr").mkdir(exist_ok=True)
        (raw / "imagesTr" / f"abd_{i}_0000.nii.gz").symlink_to(source / "img" / f"img{i:04d}.nii.gz")
        (raw / "labelsTr" / f"abd_{i}.nii.gz").symlink_to(source / "label" / f"label{i:04d}.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": {v if k else "background": k for k, v in BTCV_NAMES.items()},
            "numTraining": 2, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "prepared"
    _run(capsys, "prepare", str(raw), "--unlabeled", str(EXAMPLE_CT), "--out", str(out))
    manifest = read_manifest(out)
    record = manifest["cases"]["ct"]
    assert manifest["modality"] == "ct" and record["role"] == "unlabeled" and not record["labeled"]
    assert record["original_shape"] == [122, 101, 30]
    with h5py.File(out / "cases" / "ct.h5", "r") as f:
        assert set(f) == {"image"}  # no label
        grid = np.round(f.attrs["canonical_shape"] * f.attrs["canonical_spacing"] / manifest["target_spacing"])
    assert record["shape"] == grid.astype(int).tolist()
    run_dir = Path(_run(capsys, "train", "--config", str(out / "config.yaml"), "train.iterations=2",
                        "model.filters=4", "--out-dir", str(tmp_path / "runs"))[-1])
    assert yaml.safe_load((run_dir / "split.yaml").read_text())["unlabeled"] == ["ct"] and set(drawn) == {"ct"}

"""Dataset formats are plug-ins: a toy format defined in this file trains, evaluates and predicts
through the engine, which knows no format by name."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

from tests.conftest import tiny_experiment
from vasseg import registry
from vasseg.config import ConfigError, build_experiment
from vasseg.data.format import DataFormat, Record, format_for_record
from vasseg.data.synthetic import make_phantom
from vasseg.data.volumes import Case, DataError, rescale_case

SRC = Path(__file__).resolve().parents[2] / "src" / "vasseg"


class ToyFormat(DataFormat):
    """``ROOT/<id>.npz`` holding ``image`` (100x the model's intensities) and ``label``."""

    class_names = ("background", "toy organ")

    def check_cases(self, ids: Sequence[str], list_name: str) -> None:
        if missing := [i for i in ids if not (self.root / f"{i}.npz").is_file()]:
            raise DataError(f"{self.root}: {', '.join(missing)} listed in {list_name} have no .npz")

    def read_case(self, case_id: str) -> Case:
        with np.load(self.root / f"{case_id}.npz") as z:
            image, label = z["image"] / 100.0, z["label"]
        case = Case(case_id, torch.from_numpy(image.astype(np.float32))[None], torch.from_numpy(label),
                    self.data.spacing, source=str(self.root / f"{case_id}.npz"), native_shape=label.shape)
        return rescale_case(case, self.data.scale, self.data.num_classes)

    @classmethod
    def input_intensities(cls, volume, record: Record) -> np.ndarray:  # noqa: ANN001 - a vasseg.io.Volume
        return (volume.image / 100.0).astype(np.float32)


@pytest.fixture
def toy_format(monkeypatch: pytest.MonkeyPatch) -> type[ToyFormat]:
    """Register the toy format for one test only (config errors list the registered formats)."""
    monkeypatch.setitem(registry.REGISTERED[registry.FORMAT], "toy", ToyFormat)
    monkeypatch.setattr(ToyFormat, "name", "toy")
    return ToyFormat


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    ids = [f"toy_{i}" for i in range(8)]
    for i, case_id in enumerate(ids):
        image, label = make_phantom((24, 24, 24), 2, seed=(5, i))
        np.savez(root / f"{case_id}.npz", image=image * 100.0, label=label)
    (root / "train.list").write_text("\n".join(ids[:6]) + "\n")
    (root / "test.list").write_text("\n".join(ids[6:]) + "\n")
    return root


def test_a_format_from_a_test_file_trains_evaluates_and_predicts(toy_format, toy_root: Path, tmp_path: Path) -> None:
    from vasseg.api import load_model
    from vasseg.engine.run import train_experiment
    from vasseg.inference.evaluate import evaluate_run

    exp = tiny_experiment(toy_root, tmp_path / "runs", "mean_teacher", data={"dataset": "toy", "num_val": 1},
                          train={"iterations": 2, "ckpt_every": 2})
    run_dir = train_experiment(exp)
    assert (run_dir / "eval" / "val_last" / "cases.csv").is_file()
    out, table = evaluate_run(run_dir, split="test", device="cpu", progress=False)
    assert "(2 cases)" in table and len((out / "cases.csv").read_text().splitlines()) == 3
    model = load_model(run_dir, device="cpu")
    assert model.preprocessing == {"kind": "toy", "scale": 1.0} and model.class_names == ToyFormat.class_names
    with np.load(toy_root / "toy_7.npz") as z:
        image = z["image"]
    probs = model.predict(image, probs=True)
    assert probs.shape == (2, 24, 24, 24) and np.allclose(probs.sum(0), 1.0, atol=1e-5)
    assert (model.predict(image) == probs.argmax(0)).all()


def test_an_unknown_format_fails_at_load_naming_the_registered_ones(toy_format) -> None:
    with pytest.raises(ConfigError) as err:
        build_experiment({"data": {"dataset": "nope"}})
    assert str(err.value) == "data.dataset: 'nope' is not one of la, prepared, toy"
    assert build_experiment({"data": {"dataset": "toy"}}).data.dataset == "toy"


def test_records_find_their_format_and_an_unknown_kind_is_one_line() -> None:
    assert format_for_record({"kind": "zscore"}).name == "la"
    assert format_for_record({"kind": "prepared"}).name == "prepared"
    with pytest.raises(ValueError, match="model.safetensors: record kind 'mystery' is not one of zscore, prepared"):
        format_for_record({"kind": "mystery"}, "model.safetensors")


def test_the_engine_picks_no_format_by_name() -> None:
    hits = [f"{p.relative_to(SRC)}:{n}" for p in sorted((SRC / "engine").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if "dataset ==" in line]
    assert not hits, hits

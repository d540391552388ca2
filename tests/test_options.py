"""Option sets are types (``Literal``) and what a method needs of the experiment is checked at load:
every such mistake is one line naming the key (and the allowed values), exit 2 from the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from vasseg.cli import main
from vasseg.config import ConfigError, load_config
from vasseg.typed import build_dataclass

DEMO = Path(__file__).resolve().parents[1] / "configs" / "phantoms" / "demo.yaml"


@dataclass(frozen=True)
class Choices:
    mode: Literal["fast", "exact"] = "fast"
    level: Literal[1, 2] | None = None


def test_a_literal_accepts_its_values_only_and_names_them() -> None:
    assert build_dataclass(Choices, {"mode": "exact", "level": 2}, "x") == Choices("exact", 2)
    assert build_dataclass(Choices, {"level": None}, "x").level is None
    for values, message in (({"mode": "quick"}, "x.mode: 'quick' is not one of fast, exact"),
                            ({"level": "2"}, "x.level: '2' is not one of 1, 2"),
                            ({"level": True}, "x.level: True is not one of 1, 2")):
        with pytest.raises(ConfigError) as err:
            build_dataclass(Choices, values, "x")
        assert str(err.value) == message


@pytest.mark.parametrize("method, key, allowed", [
    ("supervised", "supervised_loss", "ce_dice, dice, ce"),
    ("mean_teacher", "supervised_loss", "ce_dice, dice, ce"),
    ("vas", "supervised_loss", "dice, ce_dice"),
    ("vas", "teacher_mode", "train, eval"),
    ("mcnet", "version", "v1, v2"),
    ("sassnet", "disc_input", "eval_recompute, cached"),
])
def test_a_method_option_typo_fails_at_load_with_the_allowed_values(method: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"method.name={method}", f"method.{key}=ce_dic"])
    assert str(err.value) == f"method.{key}: 'ce_dic' is not one of {allowed}"


@pytest.mark.parametrize("key, allowed", [("train.amp", "auto, none, bf16, fp16"), ("model.norm", "batchnorm, "
                                          "groupnorm, instancenorm, none"), ("eval.checkpoint", "last, best")])
def test_a_core_option_typo_fails_at_load_with_the_allowed_values(key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}=typo"])
    assert str(err.value) == f"{key}: 'typo' is not one of {allowed}"


@pytest.mark.parametrize("method", ["mean_teacher", "uamt", "sassnet", "admt"])
def test_a_method_that_needs_unlabeled_patches_refuses_none_at_load(method: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"method.name={method}", "data.unlabeled_bs=0"])
    assert str(err.value) == (f"data.unlabeled_bs: method {method!r} needs unlabeled patches, so it must be >= 1 "
                              f"(got 0)")


def test_methods_without_that_need_load_with_no_unlabeled_patches() -> None:
    for method in ("supervised", "dtc", "mcnet"):
        assert load_config(None, [f"method.name={method}", "data.unlabeled_bs=0"]).data.unlabeled_bs == 0


def test_mean_teacher_without_unlabeled_patches_exits_2_with_one_line(tmp_path, capsys) -> None:
    code = main(["train", "--config", str(DEMO), f"data.root={tmp_path}",
                 "method.name=mean_teacher", "data.unlabeled_bs=0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["vasseg train: error: data.unlabeled_bs: method 'mean_teacher' needs unlabeled "
                                 "patches, so it must be >= 1 (got 0)"]

"""Config loading: round trip, strict keys and types, overrides, base files, method params."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from vasseg.config import (
    ConfigError,
    build_experiment,
    config_hash,
    dump_yaml,
    load_config,
    run_name,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_round_trip() -> None:
    exp = build_experiment({})
    again = build_experiment(yaml.safe_load(dump_yaml(exp)))
    assert again == exp
    assert to_dict(again) == to_dict(exp)


def test_unknown_key_names_its_path_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train.iteratons' \(did you mean 'iterations'\?\)"):
        build_experiment({"train": {"iteratons": 10}})


def test_unknown_section_and_method_key() -> None:
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        build_experiment({"trian": {}})
    with pytest.raises(ConfigError, match="unknown key 'method.consistancy'"):
        build_experiment({"method": {"name": "mean_teacher", "consistancy": 1.0}})


def test_wrong_types_are_rejected() -> None:
    with pytest.raises(ConfigError, match="train.iterations: expected an integer"):
        build_experiment({"train": {"iterations": "many"}})
    with pytest.raises(ConfigError, match="data.patch_size: expected 3 values"):
        build_experiment({"data": {"patch_size": [16, 16]}})
    with pytest.raises(ConfigError, match="data.augment: expected true/false"):
        build_experiment({"data": {"augment": "yes"}})
    with pytest.raises(ConfigError, match="method.consistency: expected a number"):
        build_experiment({"method": {"name": "mean_teacher", "consistency": "high"}})


def test_int_is_accepted_for_float_and_list_for_tuple() -> None:
    exp = build_experiment({"train": {"lr": 1}, "data": {"patch_size": [32, 32, 16]}})
    assert exp.train.lr == 1.0 and isinstance(exp.train.lr, float)
    assert exp.data.patch_size == (32, 32, 16)


def test_unknown_method_and_bad_choices() -> None:
    with pytest.raises(ConfigError, match="unknown method 'vass'"):
        build_experiment({"method": {"name": "vass"}})
    with pytest.raises(ConfigError, match="train.optimizer: 'rmsprop' is not one of sgd, adam"):
        build_experiment({"train": {"optimizer": "rmsprop"}})
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_experiment({"data": {"patch_size": [100, 112, 80]}})


def test_overrides_and_base_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("train:\n  iterations: 100\n  lr: 0.5\ndata:\n  root: data\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  lr: 0.1\nmethod:\n  name: mean_teacher\n")
    exp = load_config(tmp_path / "child.yaml", ["train.iterations=7", "method.consistency=0.3"])
    assert exp.train.iterations == 7 and exp.train.lr == 0.1
    assert exp.method.name == "mean_teacher" and exp.method.params.consistency == 0.3
    # relative data.root resolves against the config file's folder, not the working directory
    assert exp.data.root == str((tmp_path / "data").resolve())
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(tmp_path / "child.yaml", ["train.iterations"])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_run_name_hash_ignores_run_section_but_not_method() -> None:
    a = build_experiment({"run": {"out_dir": "x"}})
    b = build_experiment({"run": {"out_dir": "y"}})
    c = build_experiment({"train": {"seed": 3}})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert run_name(c).startswith("la_supervised_8l_s3_")


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path: Path) -> None:
    if path.name.startswith("_"):
        pytest.skip("base file")
    exp = load_config(path)
    assert exp.train.iterations > 0


@pytest.mark.parametrize("data, message", [
    ({"intensity": "minmax"}, "data.intensity: 'minmax' is not one of file, zscore"),
    ({"intensity": "zscore", "dataset": "prepared"}, "data.intensity: 'zscore' applies to the LA format only"),
    ({"folds": 3, "num_val": 16}, "data.folds: k-fold validation excludes data.num_val"),
    ({"folds": 3, "fold": 3}, "data.fold: must be in 0..2"),
    ({"fold": 1}, "data.fold: must be in 0..0"),
    ({"folds": -1}, "data.folds: must not be negative"),
])
def test_intensity_and_fold_options_are_checked(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_experiment({"data": data})


def test_the_cross_validation_protocol_validates_each_fold_once() -> None:
    from vasseg.engine.setup import experiment_split

    ids = (REPO / ".." / "shared" / "data" / "LA" / "train.list")
    if not ids.is_file():
        pytest.skip("no LA train.list beside the checkout")
    splits = [experiment_split(load_config(REPO / "configs/la_cv/vas_8.yaml", [f"data.fold={k}"]))
              for k in range(3)]
    assert all(s.summary() == "8 labeled, 48 unlabeled, 24 val" for s in splits)
    assert len({i for s in splits for i in s.val}) == 72
    assert all(set(s.val).isdisjoint(s.unlabeled) and set(s.val).isdisjoint(s.labeled) for s in splits)


def test_the_4_labeled_protocol_configs_load_and_validate_each_of_76_ids_once() -> None:
    """Issue 27's done-when: every configs/la_cv4 config has data.labeled == 4 and 3 folds of 25/26/25."""
    from vasseg.engine.setup import experiment_split

    if not (REPO / ".." / "shared" / "data" / "LA" / "train.list").is_file():
        pytest.skip("no LA train.list beside the checkout")
    paths = sorted((REPO / "configs" / "la_cv4").glob("*_4*.yaml"))
    assert {p.stem for p in paths} >= {"supervised_4", "supervised_4_bs2", "mean_teacher_4", "vas_4", "admt_4",
                                       "bcp_4", "uamt_4", "dtc_4", "mcnet_4", "sassnet_4"}
    for path in paths:
        exp = load_config(path)
        assert (exp.data.labeled, exp.data.folds, exp.data.intensity) == (4, 3, "zscore"), path.name
    splits = [experiment_split(load_config(REPO / "configs/la_cv4/vas_4.yaml", [f"data.fold={k}"]))
              for k in range(3)]
    assert [len(s.val) for s in splits] == [25, 26, 25]
    assert all(len(s.labeled) == 4 and len(s.labeled) + len(s.unlabeled) + len(s.val) == 80 for s in splits)
    assert len({i for s in splits for i in s.val}) == 76
    assert all(set(s.val).isdisjoint(s.unlabeled) and set(s.val).isdisjoint(s.labeled) for s in splits)


def test_the_cpu_protocols_pin_fp32_training() -> None:
    """Their committed runs trained in fp32; train.amp=auto would pick bf16 on a bf16 CPU."""
    paths = [p for folder in ("la_cpu", "la_cv", "la_cv4") for p in sorted((REPO / "configs" / folder).rglob("*.yaml"))
             if not p.name.startswith("_")]
    assert len(paths) >= 20
    amps = {str(p.relative_to(REPO)): load_config(p).train.amp for p in paths}
    assert amps == dict.fromkeys(amps, "none")


# ------------------------------------------------------------------------------ loader failures


def test_a_base_chain_that_loops_names_its_files(tmp_path: Path) -> None:
    a, b, me = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "me.yaml"
    a.write_text("base: b.yaml\ntrain:\n  lr: 0.1\n")
    b.write_text("base: ./a.yaml\n")
    me.write_text("base: me.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(a)
    assert str(err.value) == f"{a}: the base: chain loops ({a} -> {b} -> {a})"
    with pytest.raises(ConfigError) as err:
        load_config(me)
    assert str(err.value) == f"{me}: the base: chain loops ({me} -> {me})"


def test_a_shared_base_is_not_a_loop(tmp_path: Path) -> None:
    (tmp_path / "root.yaml").write_text("train:\n  iterations: 9\n")
    (tmp_path / "mid.yaml").write_text("base: root.yaml\ntrain:\n  lr: 0.2\n")
    (tmp_path / "leaf.yaml").write_text("base: mid.yaml\n")
    exp = load_config(tmp_path / "leaf.yaml")
    assert (exp.train.iterations, exp.train.lr) == (9, 0.2)


def test_a_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    base = tmp_path / "latin1.yaml"
    base.write_bytes("train:\n  lr: 0.1  # caf\u00e9\n".encode("latin-1"))
    child = tmp_path / "child.yaml"
    child.write_text("base: latin1.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert str(err.value) == f"{base}: config is not UTF-8 text (byte 0xe9 at offset 23); save it as UTF-8"


def _float_options() -> list[tuple[str, str, int]]:
    """(method name, dotted key, tuple length or 0) of every float option, methods' included."""
    from vasseg.config import SECTIONS, method_params_class
    from vasseg.methods import available_methods

    def floats(cls: type, prefix: str) -> list[tuple[str, int]]:
        out = []
        for name, hint in typing.get_type_hints(cls).items():
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if hint is float or args == [float]:
                out.append((f"{prefix}.{name}", 0))
            elif typing.get_origin(hint) is tuple and args and set(args) == {float}:
                out.append((f"{prefix}.{name}", len(args)))
        return out

    options = [("supervised", key, n) for sec, cls in SECTIONS.items() for key, n in floats(cls, sec)]
    for method in available_methods():
        options += [(method, key, n) for key, n in floats(method_params_class(method), "method")]
    return options


FLOAT_OPTIONS = _float_options()


@pytest.mark.parametrize("method, key, n", FLOAT_OPTIONS, ids=[f"{m}:{k}" for m, k, _ in FLOAT_OPTIONS])
def test_every_float_option_takes_scientific_notation(method: str, key: str, n: int) -> None:
    """YAML 1.1 reads ``1e-3`` as a string; 0.5 written three ways must load as 0.5 everywhere."""
    for text in ("5e-1", "5E-1", "0.05e1"):
        value = f"[{', '.join([text] * n)}]" if n else text
        exp = load_config(None, [f"method.name={method}", f"{key}={value}"])
        section, name = key.split(".")
        got = getattr(exp.method.params if section == "method" else getattr(exp, section), name)
        assert got == ((0.5,) * n if n else 0.5), (key, text)


def test_scientific_notation_in_a_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text("train:\n  lr: 1e-3\n  weight_decay: 1E-4\n  poly_power: 2e2\n"
                                       "method:\n  name: vas\n  disc_lr: 2e-4\n  disc_betas: [5e-1, 9.99e-1]\n")
    exp = load_config(tmp_path / "exp.yaml")
    assert (exp.train.lr, exp.train.weight_decay, exp.train.poly_power) == (1e-3, 1e-4, 200.0)
    assert exp.method.params.disc_lr == 2e-4 and exp.method.params.disc_betas == (0.5, 0.999)
    with pytest.raises(ConfigError, match="train.iterations: expected an integer, got '6e3'"):
        load_config(tmp_path / "exp.yaml", ["train.iterations=6e3"])  # integers stay integers
    with pytest.raises(ConfigError, match="run.name: expected a string, got 1.5"):
        load_config(None, ["run.name=1.5"])
    assert load_config(None, ["run.name=1e3"]).run.name == "1e3"  # a string option keeps its text

"""Issue 29 item 2: the run folder as one object (:class:`vasseg.rundir.RunDir`).

Run-folder names must never change: a committed run's ``config.yaml`` still hashes to its folder's
name, and the committed run folders stay readable.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vasseg.config import load_config
from vasseg.errors import CheckpointError, ConfigError
from vasseg.rundir import RunDir, locate, step_file

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "vasseg"
COMMITTED = sorted(p.parent for p in (REPO / "benchmarks").glob("*_runs/**/config.yaml"))


# Run-folder names as the identity rule gave them at fcb4ae8 (before issue 29), for repository configs
# and for committed runs' config.yaml files. The committed runs themselves were named under an older
# rule (before issue 25's vasseg.identity): none of their folder names is the current rule's name,
# so what is pinned here is the rule, not their folder names.
GOLDEN = {
    ("configs/la/vas_16.yaml", "data.root=/data/LA", "train.seed=7"): "la_vas_16l_s7_2f3b5853",
    ("configs/la/mean_teacher_8.yaml", "data.root=/data/LA", "train.seed=7"): "la_mean_teacher_8l_s7_d6411581",
    ("configs/la/supervised_8.yaml", "data.root=/data/LA", "train.seed=7"): "la_supervised_8l_s7_b822305a",
    ("benchmarks/la_cpu_runs/la_admt_8l_s1337_cc0d29ab/config.yaml",): "la_admt_8l_s1337_5a5c4016",
    ("benchmarks/la_cv4_runs/la_cv4/la_supervised_4l_s1337_6465fdb2/config.yaml",): "la_supervised_4l_s1337_2581fe76",
    ("benchmarks/la_cv_runs/la_cv/la_vas_8l_s1337_96520d14/config.yaml",): "la_vas_8l_s1337_5ee10fbf",
}


@pytest.mark.parametrize(("source", "name"), GOLDEN.items(), ids=lambda v: v[0] if isinstance(v, tuple) else v)
def test_the_run_name_rule_is_unchanged(source: tuple[str, ...], name: str) -> None:
    exp = load_config(REPO / source[0], list(source[1:]))
    assert RunDir.of(exp).name == name


def test_every_committed_run_config_still_loads_and_names_a_run() -> None:
    assert len(COMMITTED) >= 20
    for run in COMMITTED:
        exp = load_config(run / "config.yaml")
        assert not exp.run.name and RunDir.of(exp).name.startswith(run.name[:-8])  # same prefix, same rule


def test_committed_runs_stay_readable_by_the_report() -> None:
    from vasseg.report.collect import find_run_dirs, load_record, read_scalars

    found = find_run_dirs([REPO / "benchmarks"])
    assert set(found) == {p.resolve() for p in COMMITTED}
    record = load_record(COMMITTED[0], "val_last")
    assert record.exp.method.name and record.split.labeled and read_scalars(COMMITTED[0])


def test_the_layout(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "out" / "la_vas_8l_s1_0123abcd")
    names = {"config": "config.yaml", "split": "split.yaml", "env": "env.json", "data_files": "data_files.json",
             "train_log": "train.log", "scalars": "scalars.jsonl", "packed_scalars": "scalars.jsonl.gz",
             "tensorboard": "tb", "checkpoints": "checkpoints", "features": "features",
             "model_file": "model.safetensors"}
    assert {k: getattr(run, k) for k in names} == {k: run.path / v for k, v in names.items()}
    assert run.lock == tmp_path / "out" / ".la_vas_8l_s1_0123abcd.lock"
    assert run.eval_dir("test_last") == run.path / "eval" / "test_last"
    assert step_file(120) == "step_000120.pt"


def test_checkpoints_of_a_run_folder(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert not run.is_run() and not run.has_checkpoint()
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        run.checkpoint("last")
    run.checkpoints.mkdir(parents=True)
    (run.checkpoints / step_file(4)).write_bytes(b"")
    (run.checkpoints / "latest").write_text(step_file(4) + "\n")
    assert run.has_checkpoint() and run.checkpoint() == run.checkpoints / "step_000004.pt"
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        run.checkpoint("best")
    with pytest.raises(ConfigError, match="is not last, best"):
        run.checkpoint("newest")
    assert locate(run.path) == (run, run.checkpoints / "step_000004.pt")
    assert locate(run.checkpoints / "step_000004.pt") == (run, run.checkpoints / "step_000004.pt")
    with pytest.raises(ConfigError, match="no such run folder or checkpoint file"):
        locate(tmp_path / "gone")


# Files of a run folder, by their literal names: only vasseg.rundir spells them.
RUN_FILES = re.compile(r"""["'](config\.yaml|split\.yaml|env\.json|data_files\.json|train\.log|scalars\.jsonl"""
                       r"""|model\.safetensors|best\.pt|checkpoints|latest|val_last)["']""")
# Dataset preparation writes a dataset folder (its own config.yaml and split.yaml), not a run folder;
# the report's --eval option names its default in the parser, which imports nothing.
OTHER_FOLDERS = {"data/plan.py", "data/prepare.py", "report/cli.py", "report/sections.py"}


def test_run_folder_file_names_are_spelled_in_one_module() -> None:
    found = [f"{path.relative_to(SRC)}:{n}: {line.strip()}"
             for path in sorted(SRC.rglob("*.py")) if path.name != "rundir.py"
             and str(path.relative_to(SRC)) not in OTHER_FOLDERS
             for n, line in enumerate(path.read_text().splitlines(), 1) if RUN_FILES.search(line)]
    assert not found, "\n".join(found)

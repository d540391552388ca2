"""The one-call GPU window (issue 30) simulated on the CPU: the plan fits the device's limits, and
the window runs end to end on phantoms into a fake $OUT, returning what it promised."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_plan  # noqa: E402
import gpu_window  # noqa: E402


def _quantised_la(source: Path, root: Path) -> None:
    """The phantoms of ``source`` as 8-bit z-scored images (what LA files hold, and what pack takes)."""
    import shutil

    import h5py
    import numpy as np

    shutil.copytree(source, root)
    for path in root.glob("2018LA_Seg_Training Set/*/mri_norm2.h5"):
        with h5py.File(path, "r+") as h:
            image = h["image"][...]
            levels = np.round((image - image.min()) / (np.ptp(image) + 1e-8) * 199)
            del h["image"]
            h["image"] = ((levels - levels.mean()) / levels.std()).astype(np.float32)


def _packs(phantom_root: Path, tmp_path: Path, chunk_mib: str = "60") -> Path:
    _quantised_la(phantom_root, tmp_path / "la_home")
    packs = tmp_path / "checkout"
    for name, lst in ((".lapack", "train.list"), (".lapack_test", "test.list")):
        cmd = [sys.executable, "-m", "vasseg.data.pack", "pack", str(tmp_path / "la_home"), str(packs / name),
               "--list", lst, "--first", "4", "--last", "2", "--chunk-mib", chunk_mib]
        subprocess.run(cmd, check=True, capture_output=True)
    return packs


def _carry_part(packs: Path) -> int:
    """Leave the last train chunk behind (a call with room for part of the cases); returns how
    many training cases travel. The first chunks hold the 4 labeled and 2 validation cases."""
    import json

    manifest = json.loads((packs / ".lapack" / "manifest.json").read_text())
    assert len(manifest["chunks"]) >= 3
    last = manifest["chunks"][-1]
    (packs / ".lapack" / last).unlink()
    return sum(chunk != last for chunk in manifest["cases"].values())


def test_schedule_keeps_what_ends_within_the_budget_in_priority_order() -> None:
    jobs = [gpu_plan.Planned(n, s) for n, s in (("mt", 250), ("vas", 450), ("mt2", 250), ("vas2", 450))]
    kept, skipped = gpu_plan.schedule(jobs, slots=2, budget_s=500)
    assert [j.name for j in kept] == ["mt", "vas", "mt2"] and [j.name for j in skipped] == ["vas2"]
    kept, _ = gpu_plan.schedule(jobs, slots=1, budget_s=500)
    assert [j.name for j in kept] == ["mt", "mt2"]
    timing = gpu_window.Timing(step_s=0.05, startup_s=10.0, tail_s=2.0, gpu_mib=3000.0)
    assert timing.estimate(6000, 16, export=False) == pytest.approx(10 + 300 + 32)
    assert timing.estimate(6000, 16, export=True) == pytest.approx(20 + 300 + 32)


def test_chunks_are_what_the_tree_leaves_and_weights_come_back_in_parts() -> None:
    assert gpu_plan.chunk_mib(4.5) == pytest.approx(64 - 4.5 - gpu_plan.SLACK_MIB)
    assert gpu_plan.chunk_mib(10.0) == pytest.approx(64 - 10.0 - gpu_plan.SLACK_MIB)
    files = gpu_plan.returns(2, 6000, True, 18.0, 150.0)
    assert [n for n, _ in files] == ["summary.md", "sweep.jsonl", "window.tgz", "weights.tar.part00",
                                     "weights.tar.part01", "weights.tar.part02"]
    assert all(size <= gpu_plan.PART_MIB for _, size in files)


def test_plan_fits_the_device_limits(phantom_root: Path, tmp_path: Path) -> None:
    packs = _packs(phantom_root, tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_plan.py"), "plan", "--weights",
                           "--packs", str(packs / ".lapack"), str(packs / ".lapack_test")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    tree = float(re.match(r"tree ([\d.]+) MiB", lines[0]).group(1))
    carry = [float(ln.split()[-2]) for ln in lines if ln.startswith("carry ")]
    assert len(carry) == 4 and len(carry) <= gpu_plan.CARRY_PATHS  # 2 manifests + 2 chunks
    assert tree + sum(carry) <= gpu_plan.CARRY_MIB and tree <= 5.0
    (chars,) = [int(ln.split()[1]) for ln in lines if ln.startswith("command ")]
    assert chars <= gpu_plan.COMMAND_CHARS
    back = [float(ln.split()[-2]) for ln in lines if ln.startswith("returns ")]
    assert 3 < len(back) <= gpu_plan.RETURN_FILES and max(back) <= gpu_plan.RETURN_FILE_MIB
    assert sum(back) <= gpu_plan.RETURN_TOTAL_MIB
    assert any(ln.startswith("run mean_teacher_16 s1337") for ln in lines)
    packed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_plan.py"), "pack", str(tmp_path / "la_home"),
                             "--out", str(tmp_path / "sized")], capture_output=True, text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr
    size, room = map(float, re.match(r"tree ([\d.]+) MiB: chunks of <= ([\d.]+) MiB", packed.stdout).groups())
    assert room == pytest.approx(gpu_plan.CARRY_MIB - size - gpu_plan.SLACK_MIB, abs=0.01)


def _configs(phantom_root: Path, folder: Path) -> Path:
    folder.mkdir()
    for method, iterations in (("supervised", 4), ("mean_teacher", 100_000)):
        raw = tiny_raw(phantom_root, folder / "unused", method, data={"unlabeled_bs": 0 if method == "supervised" else 2},
                       train={"iterations": iterations, "ckpt_every": 2}, run={"tensorboard": False})
        raw.pop("run")
        (folder / f"{method}_4.yaml").write_text(yaml.safe_dump(raw))
    return folder


def test_window_runs_end_to_end_and_returns_what_it_promised(phantom_root: Path, tmp_path: Path) -> None:
    packs = _packs(phantom_root, tmp_path, chunk_mib="0.05")
    carried = _carry_part(packs)
    configs = _configs(phantom_root, tmp_path / "configs")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, LA=str(tmp_path / "LA"), RUNS=str(tmp_path / "window"),
               OUT=str(out), PACKS=str(packs))
    args = ["window", "--configs", str(configs), "--methods", "supervised mean_teacher", "--setting", "4",
            "--seeds", "7 8", "--num-val", "2", "--budget-s", "300", "--weights", "--", "train.device=cpu"]
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_table.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "LA" / "2018LA_Seg_Training Set").iterdir())) == carried + 2  # + 2 test
    assert f"{carried} of 10 training cases carried: runs use window.list ({carried - 6} unlabeled instead of 4)" \
        in proc.stderr
    returned = sorted(p.name for p in out.iterdir())
    assert returned[:3] == ["summary.md", "sweep.jsonl", "weights.tar.part00"] and "window.tgz" in returned
    assert len(returned) <= gpu_plan.RETURN_FILES
    assert all(p.stat().st_size <= gpu_plan.RETURN_FILE_MIB * 2**20 for p in out.iterdir())
    summary = (out / "summary.md").read_text()
    assert "skip mean_teacher_4_s7" in summary and "skip mean_teacher_4_s8" in summary  # 100k steps
    assert "| supervised_4 |" in summary and "2/2 runs finished" in summary
    assert "WARNING gpu_window: skip mean_teacher_4_s7" in proc.stderr
    records = (out / "sweep.jsonl").read_text().splitlines()
    assert len(records) == 2 and all('"rc": 0' in r for r in records)
    home = tmp_path / "home"
    home.mkdir()
    with tarfile.open(out / "window.tgz") as tar:
        names = tar.getnames()
        tar.extractall(home)
    assert not [n for n in names if "checkpoints" in n or n.endswith(".safetensors")]
    assert sum(n.startswith("window/") and n.endswith("eval/val_last/cases.csv") for n in names) == 2  # validated
    assert sum(n.startswith("window_smoke/") and n.endswith("eval/val_last/cases.csv") for n in names) == 2
    bundle = home / "weights.tar"
    bundle.write_bytes(b"".join(p.read_bytes() for p in sorted(out.glob("weights.tar.part*"))))
    with tarfile.open(bundle) as tar:
        tar.extractall(home)
    assert len(list((home / "window").glob("*/model.safetensors"))) == 2
    # A holder of the test cases evaluates the returned weights on their own copy of the data.
    test = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_table.sh"), "test"], capture_output=True, text=True,
                          env=dict(env, RUNS=str(home / "window"), LA=str(tmp_path / "la_home"),
                                   OUT=str(tmp_path / "home_out")), timeout=900)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "2 runs evaluated on the test split" in test.stdout
    assert "test split" in (home / "window" / "report" / "report.md").read_text()


def test_the_deadline_stops_the_runs_still_going(phantom_root: Path, tmp_path: Path) -> None:
    from vasseg.sweep.runner import expand_jobs

    configs = _configs(phantom_root, tmp_path / "configs")
    args, _ = gpu_window.parse(["--runs", str(tmp_path / "w"), "--deadline-s", str(gpu_window.PACK_RESERVE_S - 5)])
    window = gpu_window.Window(args)
    window.jobs = expand_jobs([str(configs / "mean_teacher_4.yaml")], [7], args.runs, ["train.device=cpu"])
    gpu_window.train(window, on_cpu=True)
    (job,) = window.jobs
    assert job.proc.poll() is not None and job.rc is None  # stopped, never recorded as finished
    assert window.decisions and window.decisions[-1].startswith("deadline: stopped the runs still going")
    assert (args.runs / "sweep.jsonl").read_text() == ""

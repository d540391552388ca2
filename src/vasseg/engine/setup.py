"""Everything a run needs before its first step: device, seeds, data, method, run folder."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from vasseg.config import ConfigError, Experiment, dump_yaml, run_name
from vasseg.data.splits import Split, make_split, write_split
from vasseg.data.volumes import Case, DataError, VolumeSet, rescale_case, validate_case
from vasseg.methods import get_method
from vasseg.methods.base import Method

log = logging.getLogger(__name__)


def select_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit CUDA request without CUDA is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} requested but this torch build sees no CUDA device")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally switch torch to deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic (documented by PyTorch).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        # Process-wide switches: a run after a deterministic one in the same process must not inherit them.
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = torch.cuda.is_available()  # fixed patch sizes: autotuning pays off


def autocast_dtype(exp: Experiment, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. ``auto``: bf16 on CUDA, fp32 on CPU."""
    amp = exp.train.amp
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def use_channels_last(exp: Experiment, device: torch.device) -> bool:
    mode = exp.train.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda")


@dataclass
class DataBundle:
    """The split and the loaded volumes of one experiment."""

    split: Split
    labeled: VolumeSet
    unlabeled: VolumeSet | None
    val: VolumeSet | None


def data_root(exp: Experiment) -> Path:
    if not exp.data.root:
        raise ConfigError("data.root: not set; give the dataset folder (e.g. data.root=/path/to/LA)")
    root = Path(exp.data.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder")
    return root


def experiment_split(exp: Experiment) -> Split:
    """Labeled / unlabeled / validation ids from the dataset's training list."""
    from vasseg.data.la import read_id_list

    root = data_root(exp)
    train_ids = read_id_list(root / exp.data.train_list)
    return make_split(train_ids, exp.data.labeled, exp.data.num_val, exp.data.val_ids or None)


def load_cases(exp: Experiment, ids: list[str], progress: bool = True,
               list_name: str = "the id list") -> VolumeSet:
    """Read (and validate) the cases ``ids`` of the experiment's dataset, on the CPU.

    ``list_name``: how an error about missing cases names the source of ``ids`` (its list file).
    """
    root = data_root(exp)
    if exp.data.dataset == "la":
        from vasseg.data.la import check_cases_exist, load_la

        check_cases_exist(root, ids, list_name)
        cases = load_la(root, ids, scale=exp.data.scale, spacing=exp.data.spacing, progress=progress,
                        num_classes=exp.data.num_classes)
    else:  # "prepared": the output of `vasseg prepare`
        from vasseg.data.prepared import check_classes, load_prepared

        check_classes(root, exp.data.num_classes, exp.data.class_names)
        cases = load_prepared(root, ids, scale=exp.data.scale, progress=progress)
    cases.validate(exp.data.num_classes)
    return cases


def iter_cases(exp: Experiment, ids: list[str], list_name: str) -> Iterator[Case]:
    """The validated cases ``ids`` one at a time, each read when the previous one is done with, so
    that evaluating many cases needs the memory of one. Missing files are reported before any case
    is read (one error names them all); a corrupt file stops the iteration when it is reached."""
    check_listed_cases(exp, ids, list_name)
    return (read_case(exp, case_id) for case_id in ids)


def check_listed_cases(exp: Experiment, ids: list[str], list_name: str) -> None:
    """One error naming every id without a file (and, for prepared data, a class-list mismatch)."""
    root = data_root(exp)
    if exp.data.dataset == "la":
        from vasseg.data.la import check_cases_exist

        check_cases_exist(root, ids, list_name)
        return
    from vasseg.data.prepared import case_path, check_classes

    check_classes(root, exp.data.num_classes, exp.data.class_names)
    if missing := [i for i in ids if not case_path(root, i).is_file()]:
        raise DataError(f"{root}: {len(missing)} of {len(ids)} cases listed in {list_name} have no file: "
                        f"{', '.join(missing)}")


def read_case(exp: Experiment, case_id: str) -> Case:
    """One validated case at the experiment's scale: image ``(1, X, Y, Z)``, label ``(X, Y, Z)``."""
    root, d = data_root(exp), exp.data
    if d.dataset == "la":
        from vasseg.data.la import read_la_case

        case = rescale_case(read_la_case(root, case_id, d.num_classes, d.spacing), d.scale, d.num_classes)
    else:
        from vasseg.data.prepared import load_prepared

        case = load_prepared(root, [case_id], scale=d.scale, progress=False)[0]
    validate_case(case, d.num_classes)
    return case


def build_data(exp: Experiment, method_cls: type[Method], progress: bool = True) -> DataBundle:
    """Load the labeled, unlabeled (if the method uses them) and validation volumes."""
    split = experiment_split(exp)
    wants_unlabeled = method_cls.uses_unlabeled and exp.data.unlabeled_bs > 0
    if wants_unlabeled and not split.unlabeled:
        raise ConfigError(f"method {method_cls.name!r} needs unlabeled cases but the split has none")
    listed = str(data_root(exp) / exp.data.train_list)
    labeled = load_cases(exp, split.labeled, progress, listed)
    unlabeled = load_cases(exp, split.unlabeled, progress, listed) if wants_unlabeled else None
    val = load_cases(exp, split.val, progress, listed) if split.val else None
    return DataBundle(split=split, labeled=labeled, unlabeled=unlabeled, val=val)


def build_method(exp: Experiment) -> Method:
    return get_method(exp.method.name)(exp)


def run_dir_for(exp: Experiment) -> Path:
    return Path(exp.run.out_dir).expanduser() / run_name(exp)


def prepare_run_dir(exp: Experiment, split: Split, resume: bool) -> Path:
    """Create the run folder and record the config, split and environment in it."""
    run_dir = run_dir_for(exp)
    ckpt = run_dir / "checkpoints" / "latest"
    if ckpt.exists() and not resume:
        raise ConfigError(
            f"{run_dir}: a run with this configuration already has checkpoints; "
            f"resume it with --resume or choose another run.name / run.out_dir"
        )
    if resume and (run_dir / "config.yaml").is_file():
        check_same_config(run_dir / "config.yaml", exp)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{run_dir}: output folder is not writable ({exc.strerror or exc})") from None
    (run_dir / "config.yaml").write_text(dump_yaml(exp))
    write_split(split, run_dir / "split.yaml")
    (run_dir / "env.json").write_text(json.dumps(environment(), indent=2))
    if exp.data.dataset == "prepared":  # predict needs the preprocessing record even if the data moves
        shutil.copy2(data_root(exp) / "prepared.json", run_dir / "prepared.json")
    return run_dir


def check_same_config(saved: Path, exp: Experiment) -> None:
    """A resumed run must keep the settings it was started with (schedules depend on them)."""
    from vasseg.config import load_config, to_dict

    ignored = {("train", "progress"), ("train", "log_every"), ("train", "device")}
    old, new = to_dict(load_config(saved)), to_dict(exp)
    changed = [f"{sec}.{key}" for sec in old if sec != "run" and isinstance(old[sec], dict)
               for key in old[sec] if (sec, key) not in ignored and old[sec].get(key) != new[sec].get(key)]
    if changed:
        raise ConfigError(f"{saved.parent}: cannot resume with changed settings ({', '.join(changed[:5])}); "
                          f"use another run.name or run.out_dir")


def environment() -> dict[str, str]:
    """Versions and hardware, recorded next to every run."""
    from vasseg import __version__

    env = {
        "vasseg": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.version.cuda or "none",
        "command": " ".join(sys.argv),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env

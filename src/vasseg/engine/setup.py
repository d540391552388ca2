"""Everything a run needs before its first step: device, seeds, method, run folder.

The data (split, volumes) come from :mod:`vasseg.data.setup`, re-exported here for callers.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from vasseg.config import ConfigError, Experiment, dump_yaml
from vasseg.data.format import get_format
from vasseg.data.setup import (  # noqa: F401 - the data half, re-exported
    DataBundle,
    build_data,
    data_root,
    experiment_split,
    iter_cases,
    load_cases,
    read_case,
)
from vasseg.data.splits import Split, write_split
from vasseg.engine.resume import check_resume, record_data_files
from vasseg.inferer.precision import describe_precision, device_supports_bf16, precision_name
from vasseg.methods import get_method
from vasseg.methods.base import Method
from vasseg.rundir import RunDir

log = logging.getLogger(__name__)


DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")


def select_device(spec: str, option: str = "train.device") -> torch.device:
    """``auto`` picks CUDA when available; a malformed spec or a device this machine lacks is one
    ConfigError naming ``option`` (the setting the user gave: ``train.device``, ``--device``, ...)."""
    text = str(spec).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE.fullmatch(text) or text.startswith("cpu:"):
        raise ConfigError(f"{option}: {spec!r} is not a device; use {DEVICE_FORMS}")
    device = torch.device(text)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}: {spec!r} requested but this torch build sees no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{option}: {spec!r} requested but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}: {spec!r} requested but this machine has no MPS device; use {DEVICE_FORMS}")
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
    """The autocast dtype, or None for full precision.

    ``auto``: bf16 where the device computes it natively (a bf16-capable CUDA GPU, or a CPU with
    bf16 instructions: :func:`vasseg.inferer.precision.device_supports_bf16`), fp32 elsewhere. On
    CPUs this default rests on the paired check of benchmarks/RESULTS.md section 12 (bf16 training
    within the protocol's seed-to-seed shift in Dice, 1.4-1.6x faster on AVX512-BF16).
    """
    amp = exp.train.amp
    if amp == "auto":
        return torch.bfloat16 if device_supports_bf16(device) else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def describe_amp(exp: Experiment, device: torch.device) -> str:
    """One phrase for the log: the training precision and, for ``auto``, why (``bf16 (auto: CPU has ...)``)."""
    amp = exp.train.amp
    if amp == "auto":
        return describe_precision("auto", device)
    return f"{precision_name(autocast_dtype(exp, device))} (train.amp={amp})"


def use_channels_last(exp: Experiment, device: torch.device) -> bool:
    mode = exp.train.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def build_method(exp: Experiment) -> Method:
    return get_method(exp.method.name)(exp)


def run_dir_for(exp: Experiment) -> Path:
    return RunDir.of(exp).path


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run folder holds a checkpoint to resume (``latest``, else a step file)."""
    return RunDir(run_dir).has_checkpoint()


def check_checkpoints(run: RunDir, resume: bool) -> None:
    """A fresh training refuses a run folder that already has a checkpoint (``--resume`` continues it)."""
    if not resume and run.has_checkpoint():
        raise ConfigError(f"{run.path}: a run with this configuration already has checkpoints; "
                          f"resume it with --resume or choose another run.name / run.out_dir")


def prepare_run_dir(exp: Experiment, split: Split, resume: bool) -> Path:
    """Create the run folder and record the config, split and environment in it."""
    run = RunDir.of(exp)
    run_dir = run.path
    check_checkpoints(run, resume)
    if resume and run.config.is_file():
        check_resume(run_dir, exp, split)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{run_dir}: output folder is not writable ({exc.strerror or exc})") from None
    run.config.write_text(dump_yaml(exp))
    write_split(split, run.split)
    record_data_files(run_dir, exp, split)
    run.env.write_text(json.dumps(environment(), indent=2))
    get_format(exp).record_run(run_dir)
    return run_dir


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

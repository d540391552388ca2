"""Load a trained method from a run folder or a checkpoint file, safely, for inference."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vasseg.config import ConfigError, Experiment, load_config, to_dict
from vasseg.engine.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from vasseg.engine.setup import build_method
from vasseg.methods.base import Method

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    exp: Experiment
    method: Method
    checkpoint: Path
    run_dir: Path
    step: int


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """``last`` (the ``latest`` pointer), ``best`` (validation split) or an explicit file."""
    ckpt_dir = run_dir / "checkpoints"
    if which == "last":
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise CheckpointError(f"{ckpt_dir}: no checkpoint yet (is the run trained?)")
        return path
    if which == "best":
        path = ckpt_dir / "best.pt"
        if not path.is_file():
            raise CheckpointError(f"{path}: no best checkpoint (the run had no validation split)")
        return path
    raise ConfigError(f"checkpoint: {which!r} is not last, best or a .pt file")


def locate(target: Path, which: str = "last") -> tuple[Path, Path]:
    """``(run_dir, checkpoint)`` for a run folder or a checkpoint inside ``<run>/checkpoints``."""
    target = target.expanduser()
    if target.is_dir():
        return target, find_checkpoint(target, which)
    if target.is_file():
        return target.parent.parent, target
    raise ConfigError(f"{target}: no such run folder or checkpoint file")


ARCH_KEYS = (("model",), ("data", "num_classes"), ("data", "patch_size"), ("method", "name"))


def check_architecture(saved: dict, current: dict, path: Path) -> None:
    """Refuse a checkpoint whose network or class count differs from the config's."""
    for keys in ARCH_KEYS:
        a, b = saved, current
        for k in keys:
            a, b = a.get(k), b.get(k)
        if keys == ("data", "patch_size"):
            continue  # informational only: inference may use another patch
        if a != b:
            raise CheckpointError(
                f"{path}: checkpoint {'.'.join(keys)} = {a!r} does not match the config's {b!r}"
            )


def load_run(target: str | Path, which: str = "last", device: str | torch.device = "cpu",
             overrides: tuple[str, ...] = ()) -> LoadedRun:
    """Build the run's method from its ``config.yaml`` and load the checkpoint weights.

    An exported model file (:mod:`vasseg.export`) is loaded from its own description instead."""
    from vasseg.export import is_model_file, load_model_file

    if is_model_file(Path(target).expanduser()):
        return load_model_file(Path(target), device, overrides, which)[0]
    run_dir, ckpt = locate(Path(target), which)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{config}: missing; cannot rebuild the network of {ckpt}")
    exp = load_config(config, overrides)
    state = load_checkpoint(ckpt, map_location="cpu")
    check_architecture(state["config"], to_dict(exp), ckpt)  # load_checkpoint validated the whole state
    method = build_method(exp)
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{ckpt}: weights do not fit the network ({first})") from None
    method.to(torch.device(device)).eval()
    return LoadedRun(exp=exp, method=method, checkpoint=ckpt, run_dir=run_dir, step=int(state["step"]))

"""Open a trained network for inference: a run folder, a checkpoint file or an exported model file.

:func:`open_model` is the one place that tells the three apart (``vasseg evaluate``, ``vasseg
predict``, ``vasseg export``, the report and :func:`vasseg.load_model` all open through it):

- a model file (``.safetensors``, :mod:`vasseg.modelfile`): the network and its description, no
  run folder needed;
- a run folder: its ``config.yaml`` rebuilds the network, ``--checkpoint last|best`` picks the
  weights (:class:`~vasseg.rundir.RunDir`);
- a checkpoint file inside ``<run>/checkpoints``: those weights, the run folder's config.

Checkpoints are read with ``weights_only`` (:func:`vasseg.engine.checkpoint.load_checkpoint`):
nothing in them is executed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vasseg.config import ConfigError, Experiment, load_config, to_dict
from vasseg.engine.checkpoint import CheckpointError, load_checkpoint
from vasseg.engine.setup import build_method
from vasseg.methods.base import Method
from vasseg.modelfile import ModelFile, is_model_file, load_weights, read_model_file
from vasseg.rundir import locate

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A trained method in eval mode and where it came from.

    For a model file ``checkpoint`` is the file and ``run_dir`` its folder (``evaluate`` writes
    ``<folder>/eval/<split>_<file stem>``); ``model_file`` holds its description.
    """

    exp: Experiment
    method: Method
    checkpoint: Path
    run_dir: Path
    step: int
    model_file: ModelFile | None = None

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing record (:mod:`vasseg.inference.preprocess`) the network was trained with."""
        from vasseg.inference.preprocess import preprocessing_for_run

        if self.model_file is not None:
            return self.model_file.preprocessing
        return preprocessing_for_run(self.exp, self.run_dir)


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


def open_model(target: str | Path, which: str = "last", device: str | torch.device = "cpu",
               overrides: Sequence[str] = ()) -> LoadedRun:
    """The trained method of a run folder, checkpoint file or model file, in eval mode on ``device``.

    ``which``: a run folder's ``last`` (default) or ``best`` checkpoint; a model file holds one set
    of weights, so anything but ``last`` is refused for it. ``overrides`` (``data.root=...``)
    apply to the config.
    """
    path = Path(target).expanduser()
    if is_model_file(path):
        return open_model_file(path, device, overrides, which)
    return open_checkpoint(path, which, device, overrides)


def open_checkpoint(target: Path, which: str, device: str | torch.device, overrides: Sequence[str]) -> LoadedRun:
    """Build the run's method from its ``config.yaml`` and load the checkpoint weights."""
    run, ckpt = locate(target, which)
    if not run.config.is_file():
        raise ConfigError(f"{run.config}: missing; cannot rebuild the network of {ckpt}")
    exp = load_config(run.config, tuple(overrides))
    state = load_checkpoint(ckpt, map_location="cpu")
    check_architecture(state["config"], to_dict(exp), ckpt)  # load_checkpoint validated the whole state
    method = build_method(exp)
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{ckpt}: weights do not fit the network ({first})") from None
    method.to(torch.device(device)).eval()
    return LoadedRun(exp=exp, method=method, checkpoint=ckpt, run_dir=run.path, step=int(state["step"]))


def open_model_file(path: Path, device: str | torch.device = "cpu", overrides: Sequence[str] = (),
                    which: str = "last") -> LoadedRun:
    """The method of a model file with its weights (``which`` other than ``last`` is refused)."""
    if which != "last":
        raise ConfigError(f"--checkpoint {which}: {path} is a model file with one set of weights; "
                          f"--checkpoint chooses among a run folder's checkpoints")
    model_file = read_model_file(path, overrides)
    method = build_method(model_file.exp)
    load_weights(method.inference_network(), model_file.weights, model_file.path)
    method.to(torch.device(device)).eval()
    return LoadedRun(exp=model_file.exp, method=method, checkpoint=model_file.path, run_dir=model_file.path.parent,
                     step=model_file.step, model_file=model_file)

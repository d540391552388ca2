"""``train.init_from``: start a training's student from the weights of another run or model file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vasseg.engine.checkpoint import load_checkpoint
from vasseg.errors import CheckpointError, ConfigError
from vasseg.methods.base import Method
from vasseg.modelfile import is_model_file, load_weights, read_model_file
from vasseg.rundir import locate

log = logging.getLogger(__name__)

STUDENT = "student."  # the student network's prefix in a checkpoint's method state


def student_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The student network's weights in a model file, checkpoint or run folder, and what they are."""
    if is_model_file(path):
        model_file = read_model_file(path)
        return model_file.weights, f"model file (step {model_file.step}, {model_file.info.get('method')})"
    _, ckpt = locate(path)
    state = load_checkpoint(ckpt)
    weights = {k[len(STUDENT):]: v for k, v in state["method"].items() if k.startswith(STUDENT)}
    if not weights:
        raise CheckpointError(f"{ckpt}: the checkpoint holds no student weights")
    return weights, f"checkpoint {ckpt} (step {state.get('step', '?')})"


def init_student(method: Method, source: str | Path) -> None:
    """The student (and its EMA teachers) start from ``source``'s weights.

    Only network weights are taken: optimizers, schedules, the sampler, discriminators and heads
    start fresh, and the step starts at 0.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"train.init_from: {path} not found (a model file, checkpoint or run folder)")
    weights, what = student_weights(path)
    student = method.inference_network()
    load_weights(student, weights, path)
    for teacher, followed in method.ema_pairs():
        if followed is student:  # a mean teacher starts where its student starts
            teacher.load_state_dict(student.state_dict())
    log.info("train.init_from: student weights from %s (%s); optimizer, schedule and other networks start "
             "fresh at step 0", path, what)

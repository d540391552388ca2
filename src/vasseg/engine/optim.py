"""Optimizers, learning-rate policies and the EMA update used by the engine."""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch
from torch import nn

from vasseg.config import TrainConfig
from vasseg.methods.base import OptimizerSpec
from vasseg.methods.phases import Phase
from vasseg.errors import ConfigError


def make_optimizer(params: Iterable[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    params = list(params)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    raise ConfigError(f"unknown optimizer {spec.name!r}; choose sgd or adam")


def main_spec(train: TrainConfig) -> OptimizerSpec:
    return OptimizerSpec(
        name=train.optimizer,
        lr=train.lr,
        betas=train.betas,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
    )


def lr_factor(train: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate for 0-based ``step``.

    ``step``: ``gamma ** (step // lr_step)`` (the lineage divides by 10 every 2500 iterations);
    ``poly``: ``(1 - step / iterations) ** power``; ``constant``: 1.
    """
    if train.lr_policy == "step":
        return train.lr_gamma ** (step // train.lr_step)
    if train.lr_policy == "poly":
        return max(1.0 - step / train.iterations, 0.0) ** train.poly_power
    return 1.0


def phase_lr_factor(train: TrainConfig, phase: Phase, local_step: int) -> float:
    """:func:`lr_factor` of a training phase: its policy, over its own steps and its own length."""
    policy = phase.lr_policy or train.lr_policy
    return lr_factor(dataclasses.replace(train, iterations=phase.iterations, lr_policy=policy), local_step)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def ema_decay(step: int, decay: float) -> float:
    """The lineage's warm-up: ``min(1 - 1 / (step + 1), decay)`` (step 0 copies the student)."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, buffers: bool = False) -> None:
    """``theta_t <- decay theta_t + (1 - decay) theta_s`` on parameters, as the lineage does.

    Buffers (BatchNorm running statistics) are left to the teacher's own forward passes, as in
    the lineage, whose teacher runs in training mode; ``buffers=True`` averages the floating
    ones too (AD-MT's update, and VAS's ``teacher_mode: eval``, whose teacher never updates its
    own statistics; integer counters stay the teacher's).
    """
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("EMA teacher and student have different parameter lists")
    if buffers:
        pairs = [(t, s) for t, s in zip(teacher.buffers(), student.buffers()) if t.is_floating_point()]
        t_params += [t for t, _ in pairs]
        s_params += [s for _, s in pairs]
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)

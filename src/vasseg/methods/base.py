"""The method contract: a method owns its networks and its losses, nothing else.

The engine (:mod:`vasseg.engine.trainer`) does backward passes, optimizer steps, AMP, EMA,
clipping, checkpoints and logging. A method:

* builds its modules in ``__init__`` (``self.student`` always; a teacher made with
  :func:`make_teacher`; heads; a discriminator);
* returns named losses from :meth:`Method.training_step` (the key ``loss`` is what the main
  optimizer minimises; other keys are logged);
* declares a second player, if any, through :meth:`discriminator_parameters` /
  :meth:`discriminator_optimizer` and returns ``loss_d`` from :meth:`discriminator_step`,
  which the engine calls after the generator step, with the discriminator frozen during the
  generator step;
* declares its EMA pairs through :meth:`ema_pairs`; the engine updates them after each step
  (a method that schedules its teachers itself overrides :meth:`ema_updates`);
* may declare training phases (:meth:`phases`, see :mod:`vasseg.methods.phases`); the engine
  calls :meth:`on_phase_start` at each phase's first step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from vasseg.config import Experiment
from vasseg.data.batcher import Batch
from vasseg.methods.phases import Phase, PhaseAt, locate
from vasseg.models.vnet import VNet


@dataclass(frozen=True)
class OptimizerSpec:
    """A second optimizer a method asks the engine for (constant learning rate)."""

    name: str  # "adam" | "sgd"
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass(frozen=True)
class NoParams:
    """Methods without hyper-parameters register this."""


class Method(nn.Module):
    """Base class of every registered method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uses_unlabeled: ClassVar[bool] = True  # False: the engine draws labeled batches only
    output_kind: ClassVar[str] = "softmax"  # how predict() turns logits into probabilities
    ema_buffers: ClassVar[bool] = False  # the engine's EMA also averages floating buffers (BN statistics)

    def __init__(self, exp: Experiment) -> None:
        super().__init__()
        self.exp = exp
        self.params = exp.method.params
        self.num_classes = exp.data.num_classes
        self.student: nn.Module = self.build_student()

    # -- building -----------------------------------------------------------------------------

    def build_student(self) -> nn.Module:
        """The segmentation network; methods with other heads override this."""
        return build_vnet(self.exp, self.num_classes)

    # -- training -----------------------------------------------------------------------------

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Named losses for one step; ``loss`` is minimised by the main optimizer."""
        raise NotImplementedError

    def discriminator_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """The second player's losses (``loss_d``), on features cached (detached) by the step."""
        raise NotImplementedError(f"method {self.name!r} has no discriminator")

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return []

    def discriminator_optimizer(self) -> OptimizerSpec | None:
        return None

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(teacher, student)`` module pairs the engine updates by EMA after every step."""
        return []

    def ema_updates(self, step: int, decay: float) -> list[tuple[nn.Module, nn.Module, float]]:
        """``(teacher, student, decay)`` the engine averages after ``step``; ``decay`` is the engine's."""
        return [(teacher, student, decay) for teacher, student in self.ema_pairs()]

    def after_step(self, step: int) -> None:
        """Post-optimizer work after the EMA (state it changes must be in ``state_dict``)."""

    # -- phases -------------------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        """The training stages in order; their iterations sum to ``train.iterations``."""
        return [Phase("train", self.exp.train.iterations)]

    def phase_at(self, step: int) -> PhaseAt:
        """The phase global ``step`` belongs to (a pure function of the step)."""
        return locate(self.phases(), step)

    def on_phase_start(self, phase: Phase) -> None:
        """Hand-over work at ``phase``'s first step, before its first :meth:`training_step`."""

    def main_parameters(self) -> list[nn.Parameter]:
        """Everything the main optimizer steps: trainable parameters minus the discriminator's."""
        excluded = {id(p) for p in self.discriminator_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in excluded]

    def forward(self, batch: Batch, step: int, phase: str = "main") -> dict[str, Tensor]:
        """Dispatch used by the engine (so that DDP sees every pass as a forward)."""
        if phase == "main":
            return self.training_step(batch, step)
        if phase == "disc":
            return self.discriminator_step(batch, step)
        raise ValueError(f"unknown phase {phase!r}")

    # -- inference ----------------------------------------------------------------------------

    def inference_network(self) -> nn.Module:
        """The network used at test time (the student VNet for every method here)."""
        return self.student

    def logits(self, x: Tensor) -> Tensor:
        """Segmentation logits ``(B, K, X, Y, Z)`` of the inference network."""
        return self.inference_network()(x).logits

    def predict(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, num_classes, X, Y, Z)`` for a batch of patches."""
        from vasseg.engine.inference import probs_from_logits

        return probs_from_logits(self.logits(x), self.output_kind)


def build_vnet(exp: Experiment, out_channels: int, up_mode: str = "deconv") -> VNet:
    m = exp.model
    return VNet(
        in_channels=m.in_channels,
        num_classes=out_channels,
        filters=m.filters,
        norm=m.norm,
        dropout=m.dropout,
        up_mode=up_mode,
    )


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` that never receives gradients (it moves only by EMA)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@contextmanager
def teacher_in_mode(teacher: nn.Module, mode: str) -> Iterator[None]:
    """Run ``teacher`` in ``mode`` ("train": the lineage's batch statistics and dropout;
    "eval": running statistics, no dropout) and restore its previous mode afterwards."""
    was_training = teacher.training
    teacher.train(mode == "train")
    try:
        yield
    finally:
        teacher.train(was_training)


def teacher_noise(x: Tensor, std: float = 0.1, clip: float = 0.2) -> Tensor:
    """The lineage's teacher input perturbation: ``x + clamp(N(0, std), -clip, clip)``."""
    if std <= 0:
        return x
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)

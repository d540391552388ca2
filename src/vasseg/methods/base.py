"""The method contract: a method owns its networks and its losses, nothing else.

The engine (:mod:`vasseg.engine.trainer`) does backward passes, optimizer steps, AMP, EMA,
clipping, checkpoints and logging. A method:

* builds its modules in ``__init__`` (``self.student`` always; ``ema_teacher = True`` gives it
  ``self.teacher``, a copy of the student averaged by EMA; other teachers are made with
  :func:`make_teacher`; heads; a discriminator);
* returns named losses from :meth:`Method.training_step` (the key ``loss`` is what the main
  optimizer minimises; other keys are logged, and the engine detaches them: a method returns
  its terms as computed);
* declares a second player, if any (:mod:`vasseg.methods.players`; :class:`Adversarial` gives
  the optimizer from :class:`DiscriminatorParams`), through :meth:`discriminator_parameters` and
  returns ``loss_d`` from :meth:`discriminator_step`, which the engine calls after the generator
  step (the discriminator frozen during it) with what ``training_step`` returned under ``handoff``;
* declares its EMA pairs through :meth:`ema_pairs`; the engine updates them after each step
  (a method that schedules its teachers itself overrides :meth:`ema_updates`);
* may declare training phases (:meth:`phases`, see :mod:`vasseg.methods.phases`); the engine
  calls :meth:`on_phase_start` at each phase's first step;
* declares what it needs of the experiment: ``needs_unlabeled`` (refuse ``data.unlabeled_bs=0``)
  and :meth:`check_config` (further checks), both run once when the experiment is built, so a
  bad combination fails at load with one line, not at step 0;
* ramps a weight with :meth:`ramp` (the lineage's Gaussian ramp over a fraction of training).

Option sets of the hyper-parameters are ``Literal[...]`` fields, checked at load by
:mod:`vasseg.typed`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods.losses import sigmoid_rampup
from vasseg.methods.phases import Phase, PhaseAt, locate
from vasseg.methods.players import DISC, MAIN, Player
from vasseg.models.outputs import ProbsKind, probs_from_logits
from vasseg.models.vnet import VNet
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment


TeacherMode = Literal["train", "eval"]  # see teacher_in_mode


@dataclass(frozen=True)
class OptimizerSpec:
    """A second optimizer a method asks the engine for.

    ``schedule``: ``constant`` keeps ``lr`` (DCGAN's recipe); ``main`` scales it by the main
    optimizer's policy factor at every step (poly / step decay, phase by phase).
    """

    name: Literal["adam", "sgd"]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["constant", "main"] = "constant"


@dataclass(frozen=True)
class NoParams:
    """Methods without hyper-parameters register this."""


class Method(nn.Module):
    """Base class of every registered method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uses_unlabeled: ClassVar[bool] = True  # False: the engine draws labeled batches only
    needs_unlabeled: ClassVar[bool] = False  # True: data.unlabeled_bs = 0 is refused at load
    ema_teacher: ClassVar[bool] = False  # True: self.teacher, the student's EMA copy (the one EMA pair)
    output_kind: ClassVar[ProbsKind] = "softmax"  # how predict() turns logits into probabilities
    ema_buffers: ClassVar[bool] = False  # the engine's EMA also averages floating buffers (BN statistics)

    def __init__(self, exp: Experiment) -> None:
        super().__init__()
        self.exp = exp
        self.params = exp.method.params
        self.num_classes = exp.data.num_classes
        self.student: nn.Module = self.build_student()
        if self.ema_teacher:
            self.teacher = make_teacher(self.student)

    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        """Checks of the whole experiment, run once when it is built (ConfigError, one line).

        Subclasses extend it (calling ``super().check_config(exp)`` first)."""
        if cls.needs_unlabeled and exp.data.unlabeled_bs < 1:
            raise ConfigError(f"data.unlabeled_bs: method {cls.name!r} needs unlabeled patches, so it "
                              f"must be >= 1 (got {exp.data.unlabeled_bs})")

    def ramp(self, w_max: float, rampup: float, step: int) -> float:
        """``w_max exp(-5 (1 - t)^2)``, ``t = step / (rampup * train.iterations)`` clipped to [0, 1]."""
        return w_max * sigmoid_rampup(step, rampup * self.exp.train.iterations)

    # -- building -----------------------------------------------------------------------------

    def build_student(self) -> nn.Module:
        """The segmentation network; methods with other heads override this."""
        return build_vnet(self.exp, self.num_classes)

    # -- training -----------------------------------------------------------------------------

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Named losses for one step; ``loss`` is minimised by the main optimizer."""
        raise NotImplementedError

    def discriminator_step(self, batch: Batch, step: int, handoff: Any = None) -> dict[str, Tensor]:
        """The second player's losses (``loss_d``); ``handoff``: what this step's :meth:`training_step`
        returned under ``"handoff"`` (detached), None when it returned nothing there."""
        raise NotImplementedError(f"method {self.name!r} has no discriminator")

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return []

    def discriminator_optimizer(self) -> OptimizerSpec | None:
        """The discriminator's optimizer (:class:`Adversarial` gives one from its Params)."""
        return None

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(teacher, student)`` module pairs the engine updates by EMA after every step."""
        return [(self.teacher, self.student)] if self.ema_teacher else []

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

    def forward(self, batch: Batch, step: int, player: Player = MAIN, handoff: Any = None) -> dict[str, Any]:
        """The pass of ``player`` (:mod:`vasseg.methods.players`), the engine's one entry, so that
        DDP sees every pass as a forward; ``handoff`` goes to :meth:`discriminator_step`."""
        if player == MAIN:
            return self.training_step(batch, step)
        if player == DISC:
            return self.discriminator_step(batch, step, handoff)
        raise ValueError(f"unknown player {player!r}")

    # -- inference ----------------------------------------------------------------------------

    def inference_network(self) -> nn.Module:
        """The network used at test time (the student VNet for every method here)."""
        return self.student

    def logits(self, x: Tensor) -> Tensor:
        """Segmentation logits ``(B, K, X, Y, Z)`` of the inference network."""
        return self.inference_network()(x).logits

    def predict(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, num_classes, X, Y, Z)`` for a batch of patches."""
        # float32 before the softmax: under bf16 autocast the logits are bf16 (~3 significant digits).
        return probs_from_logits(self.logits(x).float(), self.output_kind)


@dataclass(frozen=True)
class DiscriminatorParams:
    """Fields of the Params of a method with a discriminator (a mixin): its Adam optimizer."""

    disc_lr: float = 2e-4
    disc_betas: tuple[float, float] = (0.5, 0.999)


class Adversarial(Method):
    """A method with a discriminator: its optimizer is Adam at ``params.disc_lr`` / ``disc_betas``
    (Params derive from :class:`DiscriminatorParams`), on the schedule :meth:`discriminator_schedule`."""

    def discriminator_schedule(self) -> Literal["constant", "main"]:
        """The discriminator's learning rate: ``constant`` or following the main optimizer's policy."""
        return "constant"

    def discriminator_optimizer(self) -> OptimizerSpec | None:
        if not self.discriminator_parameters():
            return None
        return OptimizerSpec(name="adam", lr=self.params.disc_lr, betas=self.params.disc_betas,
                             schedule=self.discriminator_schedule())


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
def teacher_in_mode(teacher: nn.Module, mode: TeacherMode) -> Iterator[None]:
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

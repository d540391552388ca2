"""Test-only methods that exercise the engine's failure paths (registered per test, never globally).

``toy_gan`` has every kind of state exact resume must restore: an EMA teacher, a discriminator
with its own Adam optimizer (the second player of DESIGN.md's method contract), dropout and noise
from torch's generator, and draws from Python's and NumPy's global generators. Its parameters
inject faults at chosen steps: a NaN loss, a NaN gradient under a finite loss, or (through
``CRASH``) an exception that stands in for a kill.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg import methods
from vasseg.data.batcher import Batch
from vasseg.errors import ConfigError
from vasseg.methods.base import Method, OptimizerSpec, make_teacher, teacher_noise
from vasseg.methods.losses import supervised_loss
from vasseg.methods.players import HANDOFF

# Step at which training_step raises (None: never); module state so that the config, and with
# it the run folder, stays the same between the interrupted run and its resume.
CRASH: dict[str, int | None] = {"at": None}


@dataclass(frozen=True)
class ToyParams:
    nan_at: tuple[int, ...] = ()  # steps whose loss is NaN
    grad_nan_at: tuple[int, ...] = ()  # steps whose loss is finite but whose gradient is NaN


class ToyGan(Method):
    """Student + EMA teacher + voxel discriminator; see the module docstring."""

    name = "toy_gan"
    Params = ToyParams

    def __init__(self, exp) -> None:  # noqa: ANN001 - an Experiment
        super().__init__(exp)
        self.teacher = make_teacher(self.student)
        k = self.num_classes
        self.disc = nn.Sequential(nn.Conv3d(k, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv3d(4, 1, 1))

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher, self.student)]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.disc.parameters())

    def discriminator_optimizer(self) -> OptimizerSpec:
        return OptimizerSpec("adam", lr=1e-3, betas=(0.5, 0.999))

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        if CRASH["at"] == step:
            raise RuntimeError(f"simulated crash at step {step}")
        n_l = batch.labeled_bs
        logits = self.student(batch.image_all).logits
        probs = logits.softmax(1)
        sup = supervised_loss(logits[:n_l], batch.label_l)
        with torch.no_grad():
            target = self.teacher(teacher_noise(batch.image_u)).logits.softmax(1)
        cons = ((probs[n_l:] - target) ** 2).mean()
        adv = F.softplus(-self.disc(probs[n_l:])).mean()
        # Global Python/NumPy draws: resume must restore those generators too.
        jitter = 1.0 + 0.01 * (random.random() + float(np.random.rand()))
        loss = sup + 0.1 * cons + 0.01 * jitter * adv
        if step in self.params.nan_at:
            loss = loss * float("nan")
        if step in self.params.grad_nan_at:
            loss = loss + (logits.sum() * 0.0).sqrt()  # value 0, gradient inf * 0 = NaN
        return {"loss": loss, "loss_sup": sup.detach(), "loss_adv": adv.detach(),
                HANDOFF: (probs[:n_l].detach(), probs[n_l:].detach())}

    def discriminator_step(self, batch: Batch, step: int, handoff: tuple[Tensor, Tensor] | None = None
                           ) -> dict[str, Tensor]:
        assert handoff is not None
        real, fake = handoff
        loss_d = F.softplus(-self.disc(real)).mean() + F.softplus(self.disc(fake)).mean()
        return {"loss_d": loss_d}


class BrokenBuild(Method):
    """A method whose construction fails, i.e. a run that fails before its first step."""

    name = "broken_build"

    def __init__(self, exp) -> None:  # noqa: ANN001 - an Experiment
        # A user error (a ConfigError): since issue 29 a bare ValueError is a bug, shown with its traceback.
        raise ConfigError("broken_build: cannot build (a setup failure on purpose)")


@pytest.fixture
def toy_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the toy methods for one test only (other tests iterate over the registry)."""
    for cls in (ToyGan, BrokenBuild):
        monkeypatch.setitem(methods._REGISTRY, cls.name, cls)
    monkeypatch.setitem(CRASH, "at", None)

"""Training phases: a method's schedule as consecutive stages on the one engine.

Most methods train in one phase. A method whose public code trains in stages (BCP: a supervised
pre-train, then self-training that starts from the pre-trained student) declares them with
:meth:`vasseg.methods.base.Method.phases`; their lengths sum to ``train.iterations``. The engine
(:mod:`vasseg.engine.trainer`) runs them back to back in its single loop:

* at a phase's first step it calls the method's ``on_phase_start`` (re-initialise a teacher, ...)
  and, where the phase says so, starts its optimizers afresh;
* the learning-rate policy counts the phase's own steps (``poly`` runs over the phase's length);
* the EMA warm-up ``min(1 - 1/(k + 1), decay)`` counts the phase's steps ``k`` too, or is
  switched off (constant decay) by ``ema_warmup=False``.

Which phase a global step belongs to is a pure function of the step (:func:`locate`), so a
resumed run is in the right phase without any extra state; the checkpoint records the phase
only as a consistency check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from vasseg.typed import ConfigError

LR_POLICIES = ("step", "poly", "constant")


@dataclass(frozen=True)
class Phase:
    """One stage of training: ``iterations`` steps with its own optimiser settings."""

    name: str
    iterations: int
    lr_policy: str | None = None  # None: train.lr_policy (counted from the phase's first step)
    fresh_optimizer: bool = False  # new optimizer state (no momentum) at the phase's first step
    ema_warmup: bool = True  # EMA decay min(1 - 1/(k+1), train.ema_decay); False: the decay itself


@dataclass(frozen=True)
class PhaseAt:
    """Where a global step falls: its phase, that phase's index and first global step."""

    index: int
    phase: Phase
    start: int

    def local(self, step: int) -> int:
        """The phase's own step count (0 at its first step)."""
        return step - self.start


def locate(phases: Sequence[Phase], step: int) -> PhaseAt:
    """The phase that global ``step`` (0-based) belongs to; empty phases are never current.

    Steps past the end stay in the last non-empty phase (a trainer asked for one more step).
    """
    start = 0
    found: PhaseAt | None = None
    for index, phase in enumerate(phases):
        if phase.iterations > 0:
            found = PhaseAt(index, phase, start)
            if step < start + phase.iterations:
                return found
        start += phase.iterations
    if found is None:
        raise ValueError("no phase has any iterations")
    return found


def check_phases(phases: Sequence[Phase], iterations: int, method: str) -> None:
    """Refuse phases that do not tile ``train.iterations`` or name an unknown lr policy."""
    if not phases:
        raise ConfigError(f"method {method!r} declares no training phase")
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ConfigError(f"method {method!r}: phase names repeat ({', '.join(names)})")
    for p in phases:
        if p.iterations < 0:
            raise ConfigError(f"method {method!r}: phase {p.name!r} has {p.iterations} iterations")
        if p.lr_policy is not None and p.lr_policy not in LR_POLICIES:
            raise ConfigError(f"method {method!r}: phase {p.name!r} lr_policy {p.lr_policy!r} is not one of "
                              f"{', '.join(LR_POLICIES)}")
    total = sum(p.iterations for p in phases)
    if total != iterations:
        spelled = " + ".join(f"{p.name} {p.iterations}" for p in phases)
        raise ConfigError(f"train.iterations: {iterations}, but method {method!r} phases sum to {total} ({spelled})")

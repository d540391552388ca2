"""The two players of a training step: the names the engine and every method share.

A step is the student's pass (:data:`MAIN`: :meth:`~vasseg.methods.base.Method.training_step`,
whose :data:`LOSS` the main optimizer minimises) and, for a method with a discriminator, the
discriminator's pass (:data:`DISC`: ``discriminator_step``, whose :data:`LOSS_D` its own optimizer
minimises). The engine selects the pass with ``method(batch, step, player)`` and hands what
``training_step`` returned under :data:`HANDOFF` (detached tensors, never logged) to
``discriminator_step`` as its argument.

Training *phases* (:mod:`vasseg.methods.phases`) are another thing: consecutive stages of the
schedule. The player names key the optimizers in checkpoints, so they never change.
"""

from __future__ import annotations

from typing import Literal

Player = Literal["main", "disc"]
MAIN: Player = "main"
DISC: Player = "disc"
LOSS = "loss"
LOSS_D = "loss_d"
HANDOFF = "handoff"

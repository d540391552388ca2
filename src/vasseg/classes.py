"""Class names of an experiment, for tables, figures and exported models.

``data.class_names`` when the config gives them; otherwise the names its dataset format is known
to have (the LA benchmark: background and left atrium); otherwise ``class k``. Runs trained before
a config named its classes get the same names as new ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vasseg import registry

if TYPE_CHECKING:
    from vasseg.config import Experiment


def class_names(exp: Experiment) -> tuple[str, ...]:
    """One name per class, background (class 0) included: ``num_classes`` names."""
    n = exp.data.num_classes
    if exp.data.class_names:
        return tuple(exp.data.class_names)
    known = registry.get(registry.FORMAT, exp.data.dataset).class_names
    if len(known) == n:
        return tuple(known)
    return ("background", *(f"class {c}" for c in range(1, n)))

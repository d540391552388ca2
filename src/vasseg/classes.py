"""Class names of an experiment, for tables, figures and exported models.

``data.class_names`` when the config gives them; otherwise the names a dataset kind is known to
have (the LA benchmark: background and left atrium); otherwise ``class k``. Runs trained before a
config named its classes get the same names as new ones.
"""

from __future__ import annotations

from vasseg.config import Experiment

KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "la": ("background", "left atrium"),
}


def class_names(exp: Experiment) -> tuple[str, ...]:
    """One name per class, background (class 0) included: ``num_classes`` names."""
    n = exp.data.num_classes
    if exp.data.class_names:
        return tuple(exp.data.class_names)
    known = KNOWN_CLASS_NAMES.get(exp.data.dataset, ())
    if len(known) == n:
        return known
    return ("background", *(f"class {c}" for c in range(1, n)))

"""What makes two configurations the same run: one rule for the run folder's name and ``--resume``.

A run's identity is its configuration minus the settings that do not change the result: where it
runs and how it reports (``train.device``, ``train.progress``, ``train.log_every``), where its
outputs go (the whole ``run`` section) and where its data lie (``data.root``: a *location*; on
resume the data's content is compared instead, :mod:`vasseg.engine.resume`). The run folder's
hash (:func:`identity_hash`) and the resume check (:func:`changed_settings`) both use
:func:`result_settings`, so a run resumes under any spelling of its paths or device.

The locations are stored resolved and absolute (:func:`absolute_paths`); the rest works on the
plain mapping of :func:`vasseg.config.to_dict`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

Exp = TypeVar("Exp")  # vasseg.config.Experiment (this foundation module imports nothing of vasseg)

# Section -> keys that do not change the result (None: the whole section).
NEUTRAL: dict[str, tuple[str, ...] | None] = {
    "run": None,
    "train": ("device", "progress", "log_every"),
    "data": ("root",),
}


def result_settings(plain: dict[str, Any]) -> dict[str, Any]:
    """``plain`` without the settings of :data:`NEUTRAL` (a new mapping; ``plain`` is unchanged)."""
    out = {name: dict(value) if isinstance(value, dict) else value for name, value in plain.items()}
    for section, keys in NEUTRAL.items():
        if keys is None:
            out.pop(section, None)
            continue
        for key in keys:
            if isinstance(out.get(section), dict):
                out[section].pop(key, None)
    train = out.get("train")
    if isinstance(train, dict) and not train.get("init_from", True):
        del train["init_from"]  # configs written before the option compare equal to ones without it
    return out


def identity_hash(plain: dict[str, Any]) -> str:
    """Eight hex digits of the SHA-256 of :func:`result_settings` (the run folder's name suffix)."""
    blob = json.dumps(result_settings(plain), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys (``train.lr``) whose values differ between two configurations, neutral ones aside."""
    a, b = result_settings(old), result_settings(new)
    changed = []
    for section in sorted(set(a) | set(b)):
        x, y = a.get(section), b.get(section)
        if isinstance(x, dict) and isinstance(y, dict):
            changed += [f"{section}.{k}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        elif x != y:
            changed.append(section)
    return changed


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else path


def absolute_paths(exp: Exp) -> Exp:
    """``data.root``, ``train.init_from`` and ``run.out_dir`` as resolved absolute paths (relative
    ones against the working folder): the run's ``config.yaml`` then means the same from anywhere,
    and ``ph``, ``./ph/`` and ``/abs/ph`` are one spelling."""
    return dataclasses.replace(
        exp, data=dataclasses.replace(exp.data, root=_absolute(exp.data.root)),
        train=dataclasses.replace(exp.train, init_from=_absolute(exp.train.init_from)),
        run=dataclasses.replace(exp.run, out_dir=_absolute(exp.run.out_dir)))

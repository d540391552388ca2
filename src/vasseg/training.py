"""Training from Python: :func:`train` runs an experiment with the step-end hooks its config asks for.

The trainer keeps no global hook list: whoever builds it passes its hooks
(:func:`vasseg.engine.run.train_experiment` ``hooks=``). :func:`default_hooks` builds them from the
config, and ``vasseg train``, ``vasseg demo`` and :func:`train` use it, so a config key works the
same from the command line and from Python::

    import vasseg
    from vasseg.config import load_config

    run_dir = vasseg.train(load_config("configs/phantoms/demo.yaml", ["run.feature_snapshots=[50,150]"]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vasseg.config import Experiment
from vasseg.engine.run import train_experiment
from vasseg.engine.trainer import StepEndHook


def default_hooks(exp: Experiment) -> list[StepEndHook]:
    """The step-end hooks ``exp`` asks for: feature snapshots at the steps of ``run.feature_snapshots``."""
    if not exp.run.feature_snapshots:
        return []
    from vasseg.report.features import snapshot_hook  # the report's module: imported only when asked for

    return [snapshot_hook]


def train(exp: Experiment, resume: bool = False, evaluate_val: bool = True,
          hooks: Sequence[StepEndHook] | None = None) -> Path:
    """Train ``exp`` (resuming its latest checkpoint when asked); returns the run folder.

    ``hooks``: called after every step with the trainer; None: :func:`default_hooks` of ``exp``.
    ``evaluate_val``: score the last weights on the validation split into ``eval/val_last``.
    """
    return train_experiment(exp, resume, evaluate_val, default_hooks(exp) if hooks is None else hooks)

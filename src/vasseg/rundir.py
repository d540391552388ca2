"""The run folder as one object: its name, its identity rule and every file in it.

A training writes one folder, ``<run.out_dir>/<name>``, named by :func:`vasseg.config.run_name`
(dataset, method, labeled count, seed and the hash of :mod:`vasseg.identity`: the one rule for
"same run", also used by ``--resume``). :class:`RunDir` knows its layout::

    config.yaml          the resolved experiment            split.yaml     the case split
    env.json             versions and hardware              data_files.json  the cases' file sizes
    train.log            the run's log                      scalars.jsonl  one row per logged step
    tb/                  TensorBoard events                 (scalars.jsonl.gz: a committed run's)
    checkpoints/         step_<N>.pt, best.pt, latest (a pointer to the newest checkpoint)
    eval/<split>_<checkpoint>/   evaluation results (cases.csv, summary.json, summary.md)
    features/            feature snapshots (run.feature_snapshots)
    model.safetensors    the exported network (``vasseg sweep`` writes it)

and beside it the lock file ``.<name>.lock`` (:mod:`vasseg.engine.lock`). Training, resume,
evaluate, export, predict, the sweep and the report all find these files here, and nowhere
else spells their names. A dataset format may add its own record (a prepared dataset copies its
``prepared.json``, :mod:`vasseg.data.prepared`).

Low in the layers (it imports only the config and the errors): the engine, the inference package
and the report all use it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vasseg.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment

log = logging.getLogger(__name__)

CONFIG, SPLIT, ENV, DATA_FILES = "config.yaml", "split.yaml", "env.json", "data_files.json"
TRAIN_LOG, SCALARS, TENSORBOARD = "train.log", "scalars.jsonl", "tb"
CHECKPOINTS, LATEST, BEST = "checkpoints", "latest", "best.pt"
EVAL, FEATURES, MODEL_FILE = "eval", "features", "model.safetensors"
VAL_LAST = "val_last"  # eval/ folder of the validation split scored after training
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_file(step: int) -> str:
    """``step_000123.pt``: the checkpoint file of ``step``."""
    return f"step_{step:06d}.pt"


def latest_checkpoint(folder: Path) -> Path | None:
    """The file the ``latest`` pointer of the checkpoint ``folder`` names, or None when there is none yet.

    Without the pointer (deleted by hand) the newest step file is taken, with a warning: step
    files are written atomically, so the newest one is complete.
    """
    pointer = folder / LATEST
    if not pointer.exists():
        steps = sorted((int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := STEP_FILE.match(p.name)))
        if steps:
            log.warning("%s is missing; using the newest step checkpoint, %s", pointer, steps[-1][1].name)
            return steps[-1][1]
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{pointer}: unreadable latest pointer ({exc})") from None
    # The pointer only ever holds a file name written by save_checkpoint; anything else
    # (a path, an empty file) was not written by us and must not steer loading elsewhere.
    if not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(f"{pointer}: latest pointer holds {name!r}, not a checkpoint file name")
    target = folder / name
    if not target.is_file():
        raise CheckpointError(f"{pointer}: names {target.name}, which does not exist")
    return target


@dataclass(frozen=True)
class RunDir:
    """One run folder (it need not exist yet). ``path`` is the folder itself."""

    path: Path

    @classmethod
    def of(cls, exp: Experiment) -> RunDir:
        """The run folder of ``exp``: ``<run.out_dir>/<run_name(exp)>``."""
        from vasseg.config import run_name

        return cls(Path(exp.run.out_dir).expanduser() / run_name(exp))

    @property
    def name(self) -> str:
        return self.path.name

    # -- files -----------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def split(self) -> Path:
        return self.path / SPLIT

    @property
    def env(self) -> Path:
        return self.path / ENV

    @property
    def data_files(self) -> Path:
        return self.path / DATA_FILES

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def scalars(self) -> Path:
        return self.path / SCALARS

    @property
    def packed_scalars(self) -> Path:
        """``scalars.jsonl.gz``: how committed run folders keep their scalars."""
        return self.path / f"{SCALARS}.gz"

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def features(self) -> Path:
        return self.path / FEATURES

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def lock(self) -> Path:
        """``<out_dir>/.<name>.lock``: beside the folder, so it can be taken before the folder exists."""
        return self.path.parent / f".{self.name}.lock"

    def eval_dir(self, name: str) -> Path:
        """``eval/<name>``, e.g. ``eval/val_last``."""
        return self.path / EVAL / name

    def eval_dirs(self, pattern: str = "*") -> list[Path]:
        return sorted((self.path / EVAL).glob(pattern))

    # -- state -----------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether the folder holds a run (its ``config.yaml`` and ``split.yaml``)."""
        return self.config.is_file() and self.split.is_file()

    def has_checkpoint(self) -> bool:
        """Whether the folder holds a checkpoint to resume (``latest``, else a step file)."""
        return self.checkpoints.is_dir() and latest_checkpoint(self.checkpoints) is not None

    def has_logged_steps(self) -> bool:
        """Whether training reached its first step (``scalars.jsonl`` exists)."""
        return self.scalars.exists()

    def checkpoint(self, which: str = "last") -> Path:
        """``last`` (the ``latest`` pointer) or ``best`` (validation split); a one-line error when absent."""
        if which == "last":
            path = latest_checkpoint(self.checkpoints)
            if path is None:
                raise CheckpointError(f"{self.checkpoints}: no checkpoint yet (is the run trained?)")
            return path
        if which == "best":
            path = self.checkpoints / BEST
            if not path.is_file():
                raise CheckpointError(f"{path}: no best checkpoint (the run had no validation split)")
            return path
        raise ConfigError(f"checkpoint: {which!r} is not last, best or a .pt file")

    def named_checkpoint(self, stem: str) -> Path:
        """``checkpoints/<stem>.pt`` (e.g. ``step_006000``), whether or not it exists."""
        return self.checkpoints / f"{stem}.pt"


def locate(target: Path, which: str = "last") -> tuple[RunDir, Path]:
    """``(run folder, checkpoint)`` for a run folder or a checkpoint file inside ``<run>/checkpoints``."""
    target = target.expanduser()
    if target.is_dir():
        run = RunDir(target)
        return run, run.checkpoint(which)
    if target.is_file():
        return RunDir(target.parent.parent), target
    raise ConfigError(f"{target}: no such run folder or checkpoint file")

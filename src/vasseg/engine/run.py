"""The training workflow behind ``vasseg train``: train an experiment in its run folder.

Failure behaviour (see the README's "Failure behaviour"): everything a run can check cheaply is
checked before the first step (output folder writable, every case readable and usable for
training); one training at a time holds a run folder (a second is refused); a run folder created
by a run that fails before its first step is removed again, so nothing half-made is left behind;
the validation results appear as a complete folder or not at all. (Evaluating a trained run is
:mod:`vasseg.inference.evaluate`.)
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from pathlib import Path
from typing import Sequence

import torch

from vasseg.config import Experiment, absolute_paths
from vasseg.data.setup import DataBundle, build_data
from vasseg.data.volumes import check_training_cases
from vasseg.engine.evaluate import EVAL_OUTPUT, evaluate_cases, summarize_rows, write_results
from vasseg.engine.init_from import init_student
from vasseg.engine.resume import no_checkpoint_error
from vasseg.engine.setup import build_method, check_checkpoints, prepare_run_dir, seed_everything
from vasseg.engine import distributed
from vasseg.engine.distributed import DistInfo
from vasseg.engine.lock import run_lock
from vasseg.engine.trainer import StepEndHook, Trainer
from vasseg.atomic import check_output_dir
from vasseg.inferer.inferer import Inferer
from vasseg.outfolder import published_folder
from vasseg.methods import get_method
from vasseg.rundir import VAL_LAST, RunDir

log = logging.getLogger(__name__)


class RunLogHandler(logging.FileHandler):
    """``train.log``. A record that cannot be written (disk full) is dropped without logging's
    traceback on the console: the write that needs the space (a checkpoint) reports the full disk
    in one line, and a traceback per dropped record would bury that line."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def attach_file_log(run_dir: Path) -> logging.Handler:
    handler = RunLogHandler(RunDir(run_dir).train_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("vasseg").addHandler(handler)
    return handler


def check_training_data(exp: Experiment, data: DataBundle) -> None:
    """Refuse volumes too small for the patch and labeled cases without foreground."""
    d = exp.data
    check_training_cases(data.labeled, d.patch_size, d.augment, labeled=True)
    if data.unlabeled is not None:
        check_training_cases(data.unlabeled, d.patch_size, d.augment, labeled=False)


def start_trainer(exp: Experiment, data: DataBundle, run_dir: Path, device: torch.device,
                  resume: bool, info: DistInfo = DistInfo(), hooks: Sequence[StepEndHook] = ()) -> Trainer:
    """Seed, build the method and the trainer (with ``hooks``), restore the latest checkpoint when asked."""
    seed_everything(exp.train.seed, exp.train.deterministic)
    trainer = Trainer(exp, build_method(exp), data, run_dir, device, info.rank, info.world_size, hooks)
    if resume and trainer.resume():
        return trainer
    if resume:  # checked before the data were read; a checkpoint that vanished since ends up here
        raise no_checkpoint_error(exp, run_dir)
    if exp.train.init_from:
        init_student(trainer.method, exp.train.init_from)
    trainer.scalars.truncate_after(0)  # a fresh start: rows of an earlier failed attempt go
    return trainer


def train_experiment(exp: Experiment, resume: bool = False, evaluate_val: bool = True,
                     hooks: Sequence[StepEndHook] = ()) -> Path:
    """Train ``exp`` (resuming its latest checkpoint when asked) with the step-end ``hooks``
    (:func:`vasseg.training.default_hooks` builds the ones a config asks for); returns the run folder.

    Under ``torchrun`` every process calls this; rank 0 alone writes the run folder and holds
    its lock (:mod:`vasseg.engine.lock`) from before the folder is made until training ends.
    ``resume`` without a checkpoint of this configuration is an error naming the nearest runs.
    """
    exp = absolute_paths(exp)
    method_cls = get_method(exp.method.name)
    info, device = distributed.init_distributed(exp.train.device)
    try:
        check_output_dir(Path(exp.run.out_dir))
        data = build_data(exp, method_cls, progress=exp.train.progress and info.is_main)
        check_training_data(exp, data)
        with run_lock(RunDir.of(exp).path) if info.is_main else contextlib.nullcontext():
            return _train_in_run_dir(exp, data, resume, evaluate_val, info, device, hooks)
    finally:
        distributed.shutdown()


def _train_in_run_dir(exp: Experiment, data: DataBundle, resume: bool, evaluate_val: bool, info: DistInfo,
                      device: torch.device, hooks: Sequence[StepEndHook]) -> Path:
    run_dir = _open_run_dir(exp, data, resume, info)
    handler = attach_file_log(run_dir) if info.is_main else None
    try:
        trainer = _start_or_clean(exp, data, run_dir, device, resume, info, hooks)
        log.info("run folder: %s (device %s, rank %d of %d)", run_dir, device, info.rank, info.world_size)
        trainer.fit()
        if evaluate_val and data.val is not None and info.is_main:
            evaluate_val_split(exp, trainer, data, run_dir, device)
    finally:
        _detach(handler)
    return run_dir


def _open_run_dir(exp: Experiment, data: DataBundle, resume: bool, info: DistInfo) -> Path:
    """Rank 0 creates the run folder; the other ranks wait for it."""
    run = RunDir.of(exp)
    run_dir = run.path
    if resume and not run.has_checkpoint():  # under the lock: a training in progress is named first
        raise no_checkpoint_error(exp, run_dir)
    check_checkpoints(run, resume)  # on every rank, so that no rank waits at the barrier for a failed rank 0
    if info.is_main:
        fresh = not run_dir.exists()
        try:
            prepare_run_dir(exp, data.split, resume)
        except BaseException:
            if fresh:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    distributed.barrier()
    return run_dir


def _start_or_clean(exp: Experiment, data: DataBundle, run_dir: Path, device: torch.device,
                    resume: bool, info: DistInfo, hooks: Sequence[StepEndHook]) -> Trainer:
    """Build the trainer; a run folder that never reached its first step is removed on failure."""
    run = RunDir(run_dir)
    had_checkpoint = run.has_checkpoint()
    try:
        return start_trainer(exp, data, run_dir, device, resume, info, hooks)
    except BaseException:
        if info.is_main and not had_checkpoint and not run.has_logged_steps():
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before its first step
        raise


def evaluate_val_split(exp: Experiment, trainer: Trainer, data: DataBundle, run_dir: Path,
                       device: torch.device) -> None:
    """Score the last weights on the validation split into ``run_dir/eval/val_last``."""
    inferer = Inferer(exp, device)  # the paper protocol, as the trainer's validation
    rows = evaluate_cases(trainer.method, data.val, exp, device, progress=exp.train.progress, inferer=inferer)
    inference = inferer.describe()
    with published_folder(RunDir(run_dir).eval_dir(VAL_LAST), EVAL_OUTPUT, "the evaluation results") as tmp:
        table = write_results(rows, summarize_rows(rows), tmp, exp.method.name, str(exp.data.labeled),
                              "Validation split, last checkpoint.", exp.data.class_names, inference)
    log.info("validation split, last checkpoint:\n%s", table)


def _detach(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("vasseg").removeHandler(handler)
        handler.close()

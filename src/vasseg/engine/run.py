"""The two workflows behind the CLI: train an experiment, evaluate a trained run.

Failure behaviour (see the README's "Failure behaviour"): everything a run can check cheaply is
checked before the first step (output folder writable, every case readable and usable for
training); one training at a time holds a run folder (a second is refused); a run folder created
by a run that fails before its first step is removed again, so nothing half-made is left behind;
evaluation results appear as a complete folder or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from pathlib import Path

import torch

from vasseg.config import ConfigError, Experiment, absolute_paths
from vasseg.data.setup import DataBundle, build_data, data_root, iter_cases
from vasseg.data.splits import read_id_list, read_split
from vasseg.data.volumes import DataError, check_training_cases
from vasseg.engine.evaluate import EVAL_OUTPUT, evaluate_cases, summarize_rows, write_results
from vasseg.engine.loading import load_run
from vasseg.engine.resume import no_checkpoint_error
from vasseg.engine.setup import (
    build_method,
    has_checkpoint,
    prepare_run_dir,
    run_dir_for,
    seed_everything,
    select_device,
)
from vasseg.engine import distributed
from vasseg.engine.distributed import DistInfo
from vasseg.engine.lock import run_lock
from vasseg.engine.precision import resolve_precision
from vasseg.engine.windows import EVALUATE_DEFAULT, Windows, describe_inference
from vasseg.engine.trainer import Trainer
from vasseg.atomic import check_output_dir
from vasseg.outfolder import check_folder, published_folder
from vasseg.methods import get_method

log = logging.getLogger(__name__)


class RunLogHandler(logging.FileHandler):
    """``train.log``. A record that cannot be written (disk full) is dropped without logging's
    traceback on the console: the write that needs the space (a checkpoint) reports the full disk
    in one line, and a traceback per dropped record would bury that line."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def attach_file_log(run_dir: Path) -> logging.Handler:
    handler = RunLogHandler(run_dir / "train.log")
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
                  resume: bool, info: DistInfo = DistInfo()) -> Trainer:
    """Seed, build the method and the trainer, restore the latest checkpoint when asked."""
    seed_everything(exp.train.seed, exp.train.deterministic)
    trainer = Trainer(exp, build_method(exp), data, run_dir, device, info.rank, info.world_size)
    if resume and trainer.resume():
        return trainer
    if resume:  # checked before the data were read; a checkpoint that vanished since ends up here
        raise no_checkpoint_error(exp, run_dir)
    if exp.train.init_from:
        from vasseg.export import init_student

        init_student(trainer.method, exp.train.init_from)
    trainer.scalars.truncate_after(0)  # a fresh start: rows of an earlier failed attempt go
    return trainer


def train_experiment(exp: Experiment, resume: bool = False, evaluate_val: bool = True) -> Path:
    """Train ``exp`` (resuming its latest checkpoint when asked); returns the run folder.

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
        with run_lock(run_dir_for(exp)) if info.is_main else contextlib.nullcontext():
            return _train_in_run_dir(exp, data, resume, evaluate_val, info, device)
    finally:
        distributed.shutdown()


def _train_in_run_dir(exp: Experiment, data: DataBundle, resume: bool, evaluate_val: bool, info: DistInfo,
                      device: torch.device) -> Path:
    run_dir = _open_run_dir(exp, data, resume, info)
    handler = attach_file_log(run_dir) if info.is_main else None
    try:
        trainer = _start_or_clean(exp, data, run_dir, device, resume, info)
        log.info("run folder: %s (device %s, rank %d of %d)", run_dir, device, info.rank, info.world_size)
        trainer.fit()
        if evaluate_val and data.val is not None and info.is_main:
            evaluate_val_split(exp, trainer, data, run_dir, device)
    finally:
        _detach(handler)
    return run_dir


def _open_run_dir(exp: Experiment, data: DataBundle, resume: bool, info: DistInfo) -> Path:
    """Rank 0 creates the run folder; the other ranks wait for it."""
    run_dir = run_dir_for(exp)
    if resume and not has_checkpoint(run_dir):  # under the lock: a training in progress is named first
        raise no_checkpoint_error(exp, run_dir)
    if not resume and has_checkpoint(run_dir):
        # Checked on every rank, so that no rank waits at the barrier for a rank 0 that failed.
        raise ConfigError(f"{run_dir}: a run with this configuration already has checkpoints; "
                          f"resume it with --resume or choose another run.name / run.out_dir")
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
                    resume: bool, info: DistInfo) -> Trainer:
    """Build the trainer; a run folder that never reached its first step is removed on failure."""
    had_checkpoint = has_checkpoint(run_dir)
    try:
        return start_trainer(exp, data, run_dir, device, resume, info)
    except BaseException:
        if info.is_main and not had_checkpoint and not (run_dir / "scalars.jsonl").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before its first step
        raise


def evaluate_val_split(exp: Experiment, trainer: Trainer, data: DataBundle, run_dir: Path,
                       device: torch.device) -> None:
    """Score the last weights on the validation split into ``run_dir/eval/val_last``."""
    rows = evaluate_cases(trainer.method, data.val, exp, device, progress=exp.train.progress)
    inference = describe_inference(EVALUATE_DEFAULT, exp.eval.stride, "fp32", device)
    with published_folder(run_dir / "eval" / "val_last", EVAL_OUTPUT, "the evaluation results") as tmp:
        table = write_results(rows, summarize_rows(rows), tmp, exp.method.name, str(exp.data.labeled),
                              "Validation split, last checkpoint.", exp.data.class_names, inference)
    log.info("validation split, last checkpoint:\n%s", table)


def _detach(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("vasseg").removeHandler(handler)
        handler.close()


def split_ids(exp: Experiment, run_dir: Path, split: str) -> tuple[list[str], str]:
    """Case ids of a named split and the file they come from (for messages): val/labeled/unlabeled
    from the run's split file, test from test.list, or an id-list file."""
    if split == "test":
        path = data_root(exp) / exp.data.test_list
        return read_id_list(path), str(path)
    if split in ("val", "labeled", "unlabeled"):
        recorded = read_split(run_dir / "split.yaml")
        ids = list(getattr(recorded, split))
        if not ids:
            raise DataError(f"{run_dir / 'split.yaml'}: the run has no {split} cases")
        return ids, f"{run_dir / 'split.yaml'} ({split})"
    path = Path(split)
    if path.is_file():
        return read_id_list(path), str(path)
    if path.suffix or len(path.parts) > 1:
        raise DataError(f"{path}: id-list file not found")
    raise ConfigError(f"split {split!r}: choose val, test, labeled, unlabeled or an id-list file")


def evaluate_run(target: str | Path, split: str = "val", checkpoint: str = "last",
                 data_root: str | None = None, device: str = "auto", out: str | None = None,
                 progress: bool = True, overwrite: bool = False, precision: str = "fp32",
                 windows: Windows = EVALUATE_DEFAULT) -> tuple[Path, str]:
    """Evaluate a run (or checkpoint) on a split; returns the output folder and the table.

    Cases are read one at a time (memory does not grow with their number); the output folder
    appears complete or not at all. ``out`` holding files evaluate did not write is refused unless
    ``overwrite``, and even then they stay (:mod:`vasseg.outfolder`). By default the paper
    protocol: ``eval.stride`` windows in fp32 (``precision``: auto | fp32 | bf16; ``windows``: see
    :mod:`vasseg.engine.windows`).
    """
    overrides = (f"data.root={data_root}",) if data_root else ()
    dev = select_device(device, "--device")
    dtype = resolve_precision(precision, dev)
    loaded = load_run(target, checkpoint, dev, overrides)
    exp = loaded.exp
    ids, source = split_ids(exp, loaded.run_dir, split)
    name = Path(split).stem if Path(split).is_file() else split
    out_dir = Path(out).expanduser() if out else loaded.run_dir / "eval" / f"{name}_{loaded.checkpoint.stem}"
    check_folder(out_dir, EVAL_OUTPUT, overwrite)
    cases = iter_cases(exp, ids, source)
    inference = describe_inference(windows, exp.eval.stride, precision, dev)
    log.info("evaluate %s: %s", loaded.checkpoint, inference)
    rows = evaluate_cases(loaded.method, cases, exp, dev, progress=progress, total=len(ids), windows=windows,
                          dtype=dtype)
    note = f"Split '{name}' ({len(ids)} cases), checkpoint {loaded.checkpoint.name} (step {loaded.step})."
    with published_folder(out_dir, EVAL_OUTPUT, "the evaluation results") as tmp:
        table = write_results(rows, summarize_rows(rows), tmp, exp.method.name, str(exp.data.labeled), note,
                              exp.data.class_names, inference)
    return out_dir, table

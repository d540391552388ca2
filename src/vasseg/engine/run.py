"""The two workflows behind the CLI: train an experiment, evaluate a trained run."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from vasseg.config import Experiment
from vasseg.engine.evaluate import evaluate_cases, summarize_rows, write_results
from vasseg.engine.loading import load_run
from vasseg.engine.setup import (
    build_data,
    build_method,
    load_cases,
    prepare_run_dir,
    seed_everything,
    select_device,
)
from vasseg.engine.trainer import Trainer
from vasseg.methods import get_method

log = logging.getLogger(__name__)


def absolute_out_dir(exp: Experiment) -> Experiment:
    """Record the output folder as an absolute path so the run can be resumed from anywhere."""
    out = str(Path(exp.run.out_dir).expanduser().resolve())
    return dataclasses.replace(exp, run=dataclasses.replace(exp.run, out_dir=out))


def attach_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("vasseg").addHandler(handler)
    return handler


def train_experiment(exp: Experiment, resume: bool = False, evaluate_val: bool = True) -> Path:
    """Train ``exp`` (resuming its latest checkpoint when asked); returns the run folder."""
    exp = absolute_out_dir(exp)
    method_cls = get_method(exp.method.name)
    device = select_device(exp.train.device)
    data = build_data(exp, method_cls, progress=exp.train.progress)
    run_dir = prepare_run_dir(exp, data.split, resume)
    handler = attach_file_log(run_dir)
    try:
        seed_everything(exp.train.seed, exp.train.deterministic)
        method = build_method(exp)
        trainer = Trainer(exp, method, data, run_dir, device)
        if resume and not trainer.resume():
            log.info("no checkpoint to resume in %s: starting from step 0", run_dir)
        log.info("run folder: %s (device %s)", run_dir, device)
        trainer.fit()
        if evaluate_val and data.val is not None:
            rows = evaluate_cases(method, data.val, exp, device, progress=exp.train.progress)
            table = write_results(rows, summarize_rows(rows), run_dir / "eval" / "val_last",
                                  exp.method.name, str(exp.data.labeled), "Validation split, last checkpoint.",
                                  exp.data.class_names)
            log.info("validation split, last checkpoint:\n%s", table)
    finally:
        logging.getLogger("vasseg").removeHandler(handler)
        handler.close()
    return run_dir


def split_ids(exp: Experiment, run_dir: Path, split: str) -> list[str]:
    """Case ids of a named split: val/labeled/unlabeled from the run's split file, test from test.list."""
    from vasseg.data.la import read_id_list
    from vasseg.data.splits import read_split
    from vasseg.engine.setup import data_root

    if split == "test":
        return read_id_list(data_root(exp) / exp.data.test_list)
    recorded = read_split(run_dir / "split.yaml")
    if split in ("val", "labeled", "unlabeled"):
        ids = list(getattr(recorded, split))
        if not ids:
            raise ValueError(f"{run_dir / 'split.yaml'}: the run has no {split} cases")
        return ids
    path = Path(split)
    if path.is_file():
        return read_id_list(path)
    raise ValueError(f"split {split!r}: choose val, test, labeled, unlabeled or an id-list file")


def evaluate_run(target: str | Path, split: str = "val", checkpoint: str = "last",
                 data_root: str | None = None, device: str = "auto", out: str | None = None,
                 progress: bool = True) -> tuple[Path, str]:
    """Evaluate a run (or checkpoint) on a split; returns the output folder and the table."""
    overrides = (f"data.root={data_root}",) if data_root else ()
    dev = select_device(device)
    loaded = load_run(target, checkpoint, dev, overrides)
    exp = loaded.exp
    ids = split_ids(exp, loaded.run_dir, split)
    cases = load_cases(exp, ids, progress=progress)
    rows = evaluate_cases(loaded.method, cases, exp, dev, progress=progress)
    name = Path(split).stem if Path(split).is_file() else split
    out_dir = Path(out) if out else loaded.run_dir / "eval" / f"{name}_{loaded.checkpoint.stem}"
    note = f"Split '{name}' ({len(ids)} cases), checkpoint {loaded.checkpoint.name} (step {loaded.step})."
    table = write_results(rows, summarize_rows(rows), out_dir, exp.method.name, str(exp.data.labeled), note,
                          exp.data.class_names)
    return out_dir, table

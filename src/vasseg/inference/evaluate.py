"""``vasseg evaluate``: score a trained run (or checkpoint, or model file) on a split.

The scoring itself (per-case rows, summaries, the files) is :mod:`vasseg.engine.evaluate`, which
the trainer's validation uses too; the probabilities come from the
:class:`~vasseg.inferer.inferer.Inferer`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vasseg.config import Experiment
from vasseg.data.setup import data_root, iter_cases
from vasseg.data.splits import read_id_list, read_split
from vasseg.engine.evaluate import EVAL_OUTPUT, evaluate_cases, summarize_rows, write_results
from vasseg.engine.setup import select_device
from vasseg.errors import ConfigError, DataError
from vasseg.inference.open import open_model
from vasseg.inferer.inferer import Inferer
from vasseg.inferer.precision import resolve_precision
from vasseg.inferer.windows import EVALUATE_DEFAULT, Windows
from vasseg.outfolder import check_folder, published_folder
from vasseg.rundir import RunDir

log = logging.getLogger(__name__)


def split_ids(exp: Experiment, run_dir: Path, split: str) -> tuple[list[str], str]:
    """Case ids of a named split and the file they come from (for messages): val/labeled/unlabeled
    from the run's split file, test from test.list, or an id-list file."""
    if split == "test":
        path = data_root(exp) / exp.data.test_list
        return read_id_list(path), str(path)
    if split in ("val", "labeled", "unlabeled"):
        recorded_path = RunDir(run_dir).split
        ids = list(getattr(read_split(recorded_path), split))
        if not ids:
            raise DataError(f"{recorded_path}: the run has no {split} cases")
        return ids, f"{recorded_path} ({split})"
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
    :mod:`vasseg.inferer.windows`).
    """
    overrides = (f"data.root={data_root}",) if data_root else ()
    dev = select_device(device, "--device")
    resolve_precision(precision, dev)  # an unknown name fails before the weights are read
    loaded = open_model(target, checkpoint, dev, overrides)
    exp = loaded.exp
    inferer = Inferer(exp, dev, windows, precision)
    ids, source = split_ids(exp, loaded.run_dir, split)
    name = Path(split).stem if Path(split).is_file() else split
    out_dir = Path(out).expanduser() if out else RunDir(loaded.run_dir).eval_dir(f"{name}_{loaded.checkpoint.stem}")
    check_folder(out_dir, EVAL_OUTPUT, overwrite)
    cases = iter_cases(exp, ids, source)
    log.info("evaluate %s: %s", loaded.checkpoint, inferer.describe())
    rows = evaluate_cases(loaded.method, cases, exp, dev, progress=progress, total=len(ids), inferer=inferer)
    note = f"Split '{name}' ({len(ids)} cases), checkpoint {loaded.checkpoint.name} (step {loaded.step})."
    with published_folder(out_dir, EVAL_OUTPUT, "the evaluation results") as tmp:
        table = write_results(rows, summarize_rows(rows), tmp, exp.method.name, str(exp.data.labeled), note,
                              exp.data.class_names, inferer.describe())
    return out_dir, table

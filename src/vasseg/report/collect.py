"""Read run folders for the report: config, split, per-case evaluation CSV and scalar logs.

A run folder (written by :func:`vasseg.engine.run.train_experiment`) holds ``config.yaml``,
``split.yaml``, ``scalars.jsonl`` and ``eval/<split>_<checkpoint>/cases.csv``. Runs are grouped
by (dataset, method, labeled count); runs of one group that differ in method hyper-parameters
(ablations) become separate groups labelled by the differing keys. The runs of a group are its
seeds.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vasseg.config import Experiment, load_config, to_dict
from vasseg.data.splits import Split, read_split
from vasseg.metrics.table import CaseRow, metric_columns
from vasseg.rundir import CONFIG, RunDir
from vasseg.errors import ConfigError, DataError, PathNotFound

log = logging.getLogger(__name__)

_STEP_EVAL = re.compile(r"^(?P<split>.+)_(?P<ckpt>step_(?P<step>\d+))$")


@dataclass
class RunRecord:
    """One run folder and what the report reads from it."""

    run_dir: Path
    exp: Experiment
    split: Split
    eval_dir: Path | None = None
    rows: list[CaseRow] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.exp.method.name

    @property
    def seed(self) -> int:
        return self.exp.train.seed

    @property
    def labeled(self) -> int:
        return self.exp.data.labeled

    @property
    def unlabeled_used(self) -> int:
        """Unlabeled cases the method trained on (0 for a supervised-only method)."""
        from vasseg.methods import get_method

        uses = get_method(self.method).uses_unlabeled and self.exp.data.unlabeled_bs > 0
        return len(self.split.unlabeled) if uses else 0

    @property
    def dataset(self) -> str:
        """The dataset kind and its folder name, e.g. ``la/LA``."""
        root = Path(self.exp.data.root).name if self.exp.data.root else ""
        return f"{self.exp.data.dataset}/{root}" if root else self.exp.data.dataset

    def class_name(self, cls: int) -> str:
        """The config's name of class ``cls``, else the dataset's known one (LA: left atrium)."""
        from vasseg.classes import class_names

        names = class_names(self.exp)
        return names[cls] if cls < len(names) else f"class {cls}"


@dataclass
class Group:
    """Runs of one configuration that differ only by seed (and, under cross-validation, by fold)."""

    dataset: str
    method: str
    labeled: int
    variant: str
    runs: list[RunRecord]

    @property
    def label(self) -> str:
        """Display name: the method, plus the differing hyper-parameters of an ablation."""
        return f"{self.method} ({self.variant})" if self.variant else self.method

    @property
    def unlabeled(self) -> int:
        return self.runs[0].unlabeled_used

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def replicates(self) -> list[list[RunRecord]]:
        """The units a table's ± std runs over: each run alone; under cross-validation (runs on two
        or more folds) one run per fold, the i-th seed of every fold (seeds sorted), so a replicate's
        mean covers the cases of every fold and its spread is the seeds', not the folds'. A seed not
        trained on every fold yet makes no replicate (its mean would cover part of the cases)."""
        folds = sorted({r.exp.data.fold for r in self.runs})
        if len(folds) < 2 or not all(r.exp.data.folds for r in self.runs):
            return [[r] for r in self.runs]
        by_fold = [sorted((r for r in self.runs if r.exp.data.fold == f), key=lambda r: r.seed) for f in folds]
        return [[runs[i] for runs in by_fold] for i in range(min(len(runs) for runs in by_fold))]

    @property
    def representative(self) -> RunRecord:
        """The seed shown in figures: the (upper) median of the seeds' mean Dice."""
        scored = [r for r in self.runs if r.rows] or self.runs
        scored = sorted(scored, key=lambda r: _mean_dice(r))
        return scored[len(scored) // 2]

    @property
    def classes(self) -> list[int]:
        return sorted({row.cls for r in self.runs for row in r.rows})

    def class_name(self, cls: int) -> str:
        return self.runs[0].class_name(cls)


# --------------------------------------------------------------------------- finding runs


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders named directly or found (recursively) under the given folders, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise PathNotFound(f"{path}: no such run folder")
        if _is_run(path):
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob(CONFIG) if _is_run(p.parent))
        if not below:
            raise PathNotFound(f"{path}: no run folder (config.yaml + split.yaml) in or under it")
        found += below
    return sorted(dict.fromkeys(found))


def _is_run(path: Path) -> bool:
    return RunDir(path).is_run()


def parse_eval_name(name: str) -> tuple[str, str]:
    """``val_last`` -> (``val``, ``last``); ``test_step_006000`` -> (``test``, ``step_006000``)."""
    match = _STEP_EVAL.match(name)
    if match:
        return match["split"], match["ckpt"]
    split, _, ckpt = name.rpartition("_")
    if not split:
        raise ConfigError(f"--eval {name!r}: expected <split>_<checkpoint>, e.g. val_last or test_step_006000")
    return split, ckpt


def resolve_eval_dir(run_dir: Path, name: str) -> Path | None:
    """``eval/<name>``; ``<split>_last`` also finds ``<split>_step_N`` (highest N).

    ``vasseg evaluate --checkpoint last`` names its folder after the checkpoint file the ``latest``
    pointer resolved to, so "last" on disk is a step folder.
    """
    exact = RunDir(run_dir).eval_dir(name)
    if (exact / "cases.csv").is_file():
        return exact
    split, ckpt = parse_eval_name(name)
    if ckpt != "last":
        return None
    steps = []
    for folder in RunDir(run_dir).eval_dirs(f"{split}_step_*"):
        match = _STEP_EVAL.match(folder.name)
        if match and match["split"] == split and (folder / "cases.csv").is_file():
            steps.append((int(match["step"]), folder))
    return max(steps)[1] if steps else None


# --------------------------------------------------------------------------- reading


def read_cases_csv(path: Path) -> list[CaseRow]:
    """Rows of an evaluation ``cases.csv`` (``nan`` stays NaN): every column of the metric table."""
    columns = metric_columns()
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        required = ("case", "cls", "status", *columns)  # "grid": files written before it are read too
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing columns {', '.join(missing)}")
        try:
            return [CaseRow(case=r["case"], cls=int(r["cls"]), status=r["status"], grid=r.get("grid") or "",
                            values={m: _float(r[m]) for m in columns}) for r in reader]
        except (ValueError, TypeError) as exc:  # a cut or edited file: a number that is not one
            raise DataError(f"{path}: line {reader.line_num}: {exc}") from None


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def read_scalars(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``scalars.jsonl``, or of ``scalars.jsonl.gz`` (how committed run folders keep
    it: benchmarks/compress_scalars.py), empty when the run logged none."""
    run = RunDir(run_dir)
    if run.scalars.is_file():
        text = run.scalars.read_text()
    elif (packed := run.packed_scalars).is_file():
        try:
            text = gzip.decompress(packed.read_bytes()).decode()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{packed}: unreadable ({exc})") from None
    else:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cases_file(eval_dir: Path, grid: str = "") -> Path:
    """``cases.csv`` (the primary grid) or, for another scoring grid, ``cases_<grid>.csv``."""
    if grid:
        other = eval_dir / f"cases_{grid}.csv"
        if other.is_file():
            return other
    return eval_dir / "cases.csv"


def load_record(run_dir: Path, eval_name: str, grid: str = "") -> RunRecord:
    """Config, split and (when present) the evaluation rows of one run folder."""
    run = RunDir(run_dir)
    record = RunRecord(run_dir=run_dir, exp=load_config(run.config), split=read_split(run.split))
    record.eval_dir = resolve_eval_dir(run_dir, eval_name)
    if record.eval_dir is not None:
        record.rows = read_cases_csv(cases_file(record.eval_dir, grid))
        found = {row.grid for row in record.rows} - {""}
        if grid and found and found != {grid}:
            raise DataError(f"{record.eval_dir}: no rows scored on the {grid} grid (have {', '.join(sorted(found))})")
    return record


def load_records(paths: list[str | Path], eval_name: str, grid: str = "") -> list[RunRecord]:
    """Every run under ``paths``; runs without the evaluation folder are kept (curves) and logged."""
    records = [load_record(p, eval_name, grid) for p in find_run_dirs(paths)]
    for r in records:
        if r.eval_dir is None:
            log.warning("%s: no eval/%s/cases.csv (run `vasseg evaluate` first); left out of the tables",
                        r.run_dir, eval_name)
    return records


# --------------------------------------------------------------------------- grouping


def group_runs(records: list[RunRecord]) -> list[Group]:
    """Groups by (dataset, method, labeled), split further by differing method parameters."""
    buckets: dict[tuple[str, str, int], list[RunRecord]] = {}
    for r in records:
        buckets.setdefault((r.dataset, r.method, r.labeled), []).append(r)
    groups: list[Group] = []
    for (dataset, method, labeled), runs in buckets.items():
        for variant, members in _variants(runs).items():
            groups.append(Group(dataset, method, labeled, variant, sorted(members, key=lambda r: r.seed)))
    return sorted(groups, key=lambda g: (g.dataset, g.labeled, g.method, g.variant))


# Settings outside ``method:`` that make runs different experiments, not seeds of one: a supervised
# run with 2 labeled patches per step is the like-for-like control of the one with 4, not a replicate.
VARIANT_SETTINGS = ("data.intensity", "data.labeled_bs", "data.unlabeled_bs", "train.iterations")


def _variants(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs keyed by the ``k=v`` text of the method parameters (and of ``VARIANT_SETTINGS``) that
    differ between them."""
    params = [{**to_dict(r.exp)["method"], **_settings(r)} for r in runs]
    differing = sorted(k for k in params[0] if len({json.dumps(p.get(k)) for p in params}) > 1)
    out: dict[str, list[RunRecord]] = {}
    for run, p in zip(runs, params):
        out.setdefault(", ".join(f"{k}={p.get(k)}" for k in differing), []).append(run)
    return out


def _settings(run: RunRecord) -> dict[str, object]:
    """``VARIANT_SETTINGS`` of a run, keyed by their dotted names."""
    out = {}
    for key in VARIANT_SETTINGS:
        section, name = key.split(".")
        out[key] = getattr(getattr(run.exp, section), name)
    return out


# --------------------------------------------------------------------------- per-case values


def case_values(run: RunRecord, metric: str, cls: int | None = None) -> dict[str, float]:
    """Per-case value of ``metric``: of class ``cls``, or (``None``) the mean over classes.

    The mean over classes skips undefined (NaN) values, as ``vasseg evaluate``'s summary does; a
    case whose classes are all undefined stays NaN.
    """
    per_case: dict[str, list[float]] = {}
    for row in run.rows:
        if cls is None or row.cls == cls:
            per_case.setdefault(row.case, []).append(row.values[metric])
    return {case: _nanmean(vals) for case, vals in per_case.items()}


def seed_averaged(group: Group, metric: str, cls: int | None = None) -> dict[str, float]:
    """Per-case values averaged over the seeds of a group (the pairing unit of the tests)."""
    per_case: dict[str, list[float]] = {}
    for run in group.runs:
        for case, value in case_values(run, metric, cls).items():
            per_case.setdefault(case, []).append(value)
    return {case: _nanmean(vals) for case, vals in per_case.items()}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def with_results(groups: list[Group]) -> list[Group]:
    """The groups restricted to their runs that have evaluation rows (empty groups dropped)."""
    out = []
    for g in groups:
        runs = [r for r in g.runs if r.rows]
        if runs:
            out.append(Group(g.dataset, g.method, g.labeled, g.variant, runs))
    return out


def run_checkpoint(run: RunRecord) -> str:
    """The checkpoint the run's evaluation used (``last``, ``best`` or ``step_N``); ``last`` if none."""
    return parse_eval_name(run.eval_dir.name)[1] if run.eval_dir is not None else "last"


def _mean_dice(run: RunRecord) -> float:
    """Mean over cases of the per-case Dice (-1 when undefined, so it sorts first)."""
    value = _nanmean(list(case_values(run, "dice").values()))
    return -1.0 if math.isnan(value) else value

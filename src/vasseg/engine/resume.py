"""What ``--resume`` checks before it continues a run (README, "Failure behaviour").

* There is a checkpoint for this configuration: otherwise the command stops naming the nearest
  run folders of the same method and seed (a resume never silently starts again from step 0).
* The configuration is the same run (:mod:`vasseg.identity`: devices, paths and logging aside).
* The data are the same: the case split is the run's ``split.yaml``; a moved ``data.root`` is
  accepted when the cases' files have the sizes recorded in the run's ``data_files.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from vasseg.config import ConfigError, Experiment, load_config, to_dict
from vasseg.data.format import get_format
from vasseg.data.splits import Split, read_split
from vasseg.identity import changed_settings
from vasseg.rundir import RunDir

log = logging.getLogger(__name__)

NEAREST = 3  # run folders named when --resume finds nothing


def check_resume(run_dir: Path, exp: Experiment, split: Split) -> None:
    """Refuse to resume ``run_dir`` with other settings or other data (module docstring)."""
    saved = load_config(RunDir(run_dir).config)
    changed = changed_settings(to_dict(saved), to_dict(exp))
    if changed:
        raise ConfigError(f"{run_dir}: cannot resume with changed settings ({', '.join(changed[:5])}); "
                          f"use another run.name or run.out_dir")
    check_same_data(run_dir, exp, split, saved.data.root)


def no_checkpoint_error(exp: Experiment, run_dir: Path) -> ConfigError:
    """``--resume`` without a checkpoint of this configuration: name the nearest existing runs."""
    method, seed = exp.method.name, exp.train.seed
    near = nearest_runs(exp, run_dir.parent)
    if not near:
        return ConfigError(f"{run_dir}: --resume found no checkpoint for this configuration, and "
                           f"{run_dir.parent} holds no run of {method} with seed {seed}; train without --resume "
                           f"to start one")
    named = "; ".join(f"{path.name} (differs in {', '.join(diff[:3]) or 'nothing'})" for path, diff in near)
    return ConfigError(f"{run_dir}: --resume found no checkpoint for this configuration; nearest runs of "
                       f"{method} with seed {seed} in {run_dir.parent}: {named}; resume one with its own "
                       f"settings (or run.name=<its folder>), or train without --resume to start this one")


def nearest_runs(exp: Experiment, out_dir: Path) -> list[tuple[Path, list[str]]]:
    """Run folders under ``out_dir`` with ``exp``'s method and seed, fewest changed settings first."""
    mine = to_dict(exp)
    found = []
    for folder in sorted(out_dir.iterdir()) if out_dir.is_dir() else ():
        other = _saved_config(folder)
        if other is None or other.get("method", {}).get("name") != exp.method.name:
            continue
        if other.get("train", {}).get("seed") != exp.train.seed:
            continue
        found.append((folder, changed_settings(other, mine)))
    return sorted(found, key=lambda item: (len(item[1]), item[0].name))[:NEAREST]


def _saved_config(folder: Path) -> dict[str, Any] | None:
    try:
        raw = yaml.safe_load(RunDir(folder).config.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    ok = isinstance(raw, dict) and all(isinstance(raw.get(s), dict) for s in ("method", "train"))
    return raw if ok else None


def case_sizes(exp: Experiment, split: Split) -> dict[str, int]:
    """Bytes of each case's file (labeled, unlabeled, validation), for formats that name one."""
    fmt = get_format(exp)
    sizes = {}
    for case_id in [*split.labeled, *split.unlabeled, *split.val]:
        path = fmt.case_file(case_id)
        if path is not None:
            sizes[case_id] = path.stat().st_size
    return sizes


def record_data_files(run_dir: Path, exp: Experiment, split: Split) -> None:
    """``data_files.json``: the data root and each case's file size (compared when it moves)."""
    body = {"root": exp.data.root, "sizes": case_sizes(exp, split)}
    RunDir(run_dir).data_files.write_text(json.dumps(body, indent=1))


def check_same_data(run_dir: Path, exp: Experiment, split: Split, old_root: str) -> None:
    """Refuse a resume whose cases differ from the run's; a moved ``data.root`` is logged."""
    run = RunDir(run_dir)
    if run.split.is_file() and read_split(run.split) != split:
        raise ConfigError(f"{run_dir}: cannot resume: the case split of {exp.data.root} differs from the run's "
                          f"split.yaml (was {exp.data.train_list} changed?)")
    if old_root == exp.data.root:
        return
    try:
        recorded = json.loads(run.data_files.read_text())["sizes"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("data.root moved from %s to %s; the case ids match the run's split, file sizes were not "
                    "recorded (a run made before vasseg did); resuming", old_root, exp.data.root)
        return
    sizes = case_sizes(exp, split)
    differ = [i for i in sizes if sizes[i] != recorded.get(i)]
    if differ:
        i = differ[0]
        raise ConfigError(f"{run_dir}: cannot resume: data.root moved from {old_root} to {exp.data.root} and case "
                          f"{i}'s file differs ({sizes[i]} bytes, the run's had {recorded.get(i)})")
    log.warning("data.root moved from %s to %s: the %d cases' ids and file sizes match the run's; resuming",
                old_root, exp.data.root, len(sizes))

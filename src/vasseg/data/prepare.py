"""``vasseg prepare``: NIfTI scans (CT or MR, labeled and unlabeled) -> the prepared dataset of
:mod:`vasseg.data.prepared` and a planned experiment, ``OUT/config.yaml``.

::

    vasseg prepare SOURCE [SOURCE ...] --out ROOT [--unlabeled DIR_OR_GLOB ...] [--modality auto|ct|mr]
        [--label-map MAP] [--shape X Y Z | --spacing X Y Z] [--window -200 250] [--normalize minmax]
        [--test-fraction F | --test-ids FILE] [--num-val N] [--seed 0] [--workers N] [--skip-bad]
        [--overwrite] [--ignore-label-affine]
    vasseg prepare --images IMAGES --labels LABELS --out ROOT [...]

Layouts (:mod:`vasseg.data.nifti`, :mod:`vasseg.data.nnunet`, :mod:`vasseg.data.pairs`): an nnU-Net
v2 raw dataset (``dataset.json`` + ``imagesTr``/``labelsTr``, optional ``imagesTs``/``labelsTs``;
its images without a label are unlabeled cases), BTCV-style ``img*/label*`` pairs, an MSD folder,
or ``--images``/``--labels``; with several SOURCEs, case ids get the folder name as a prefix.
``--unlabeled`` (repeatable: a folder, a quoted glob or a file) adds images without labels.

Route defaults (each can be given explicitly):

============  =================  ===================  =================  ==========
route         label map          grid                 test split         intensities
============  =================  ===================  =================  ==========
nnU-Net v2    dataset.json       median spacing       imagesTs           auto
--images      the label values   median spacing       none               auto
BTCV, MSD     btcv               128x128x64 (paper)   20/90 of labeled   auto
============  =================  ===================  =================  ==========

``--modality auto`` is dataset.json's channel name ("CT" -> ct, anything else -> mr), else ct for
integer data below -500 (:mod:`vasseg.data.preprocess`, which also holds both intensity schemes).

Per case (:mod:`vasseg.data.prepare_case`, one case in memory at a time, a process pool for 16 or
more cases): the label's values go through the label map; image and label are brought to canonical
RAS+ axis order (flips/transposes only); the image is normalised and resampled trilinearly to the
target grid, the label by nearest neighbour; the original geometry is stored with it. Every header
(shape, affine) is checked before any voxel is read. A bad file is an error naming it unless
``--skip-bad`` (skipped files are logged and listed in ``prepared.json``).

Output is built in a temporary folder next to ROOT and published whole at the end (:func:`publish`,
the one place that replaces ROOT): a failure leaves nothing behind. The split (:mod:`vasseg.data.plan`)
is deterministic in ``--seed``: ``train.list`` = labeled ids, then the unlabeled ones, then the
validation ids, so the planned ``data.labeled`` / ``data.num_val`` read it; ``split.yaml`` lists
labeled, unlabeled, val and test.

This module imports only the standard library at load time (:mod:`vasseg.data.prepare_cli`
imports it to build the parser); numpy, nibabel, h5py and torch are imported where the work happens.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vasseg.outfolder import Owner, check_folder
from vasseg.outfolder import publish as publish_folder

if TYPE_CHECKING:
    from vasseg.data.labelmap import LabelMap
    from vasseg.data.nifti import Discovery, Pair
    from vasseg.data.plan import SplitPlan
    from vasseg.data.prepare_case import Header

from vasseg.data.prepare_labels import resolve_label_map, warn_on_label_names  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PAPER_SHAPE = (128, 128, 64)
PAPER_WINDOW = (-200.0, 250.0)
PAPER_TEST_FRACTION = 20 / 90  # the paper's 70 train / 20 test of 90 CTs
OWN_SCAN_LAYOUTS = ("nnunet", "pairs")  # routes whose defaults are nnU-Net's (table above)
# What prepare writes into --out (vasseg.outfolder: the overwrite rule); a rerun replaces its own
# earlier dataset only with --overwrite.
PREPARE_OUTPUT = Owner("prepare", ("cases", "train.list", "test.list", "prepared.json", "split.yaml",
                                   "config.yaml"), replaces_own=False)


@dataclass(frozen=True)
class PrepareOptions:
    """How ``prepare_dataset`` finds, maps, normalises, resamples and splits (None: the route's default)."""

    label_map: str | None = None  # shipped map name or YAML path
    shape: tuple[int, int, int] | None = None  # fixed target voxels (X, Y, Z), canonical order
    spacing: tuple[float, float, float] | None = None  # target voxel size, mm (variable shapes)
    modality: str = "auto"  # ct | mr | auto
    window: tuple[float, float] = PAPER_WINDOW  # HU (ct)
    normalize: str = "minmax"  # ct: minmax: [0, 1] | zscore: then zero mean, unit variance
    test_fraction: float | None = None
    test_ids: tuple[str, ...] | None = None  # explicit test ids (overrides test_fraction)
    num_val: int | None = None  # validation cases (default: 20 % of the labeled when >= 5)
    unlabeled: tuple[str, ...] = ()  # --unlabeled folders / globs / files
    seed: int = 0
    workers: int = 0  # 0: automatic (see prepare_case.pool_size)
    skip_bad: bool = False
    overwrite: bool = False
    ignore_label_affine: bool = False  # same shape suffices; affine differences are warnings
    affine_tolerance: float = 1e-3  # max |difference| of image and label affines (mm)


@dataclass
class Screened:
    """The cases that passed the header checks, with their headers, by role."""

    labeled: list[tuple[Pair, Header]]
    unlabeled: list[tuple[Pair, Header]]
    test: list[tuple[Pair, Header]]
    skipped: list[dict[str, str]]


# --------------------------------------------------------------------------- library


def prepare_dataset(sources: Sequence[str | Path], out: str | Path, options: PrepareOptions = PrepareOptions(),
                    progress: bool = True, plain: tuple[str | Path, str | Path] | None = None) -> Path:
    """Prepare the NIfTI dataset(s) ``sources`` into the folder ``out``; returns ``out``.

    ``plain=(IMAGES, LABELS)`` prepares plain pairs matched by file name instead (``sources``
    empty). Raises DataError (one line, naming the file) for a bad option, an existing ``out``
    without ``overwrite``, or a bad/mismatched file without ``skip_bad``.
    """
    from vasseg.data.nnunet import add_unlabeled

    out = Path(out).expanduser()
    if bool(sources) == bool(plain):
        raise _error("prepare: give SOURCE folders or --images and --labels (one of the two)")
    check_options(options, out)
    discovery = add_unlabeled(discover(sources, plain), options.unlabeled)
    screened = screen(discovery, options)
    label_map = resolve_label_map(options.label_map, discovery)
    warn_on_label_names(discovery.label_names, label_map)
    recipe = plan_recipe(options, discovery, screened)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        records = write_cases(screened, tmp, label_map, recipe, options, progress)
        split = split_cases(records, discovery, options)
        write_outputs(tmp, discovery, label_map, recipe, options, records, screened.skipped, split)
        publish(tmp, out, options.overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %d cases into %s: %d labeled, %d unlabeled, %d val, %d test; %d skipped", len(records), out,
             len(split.labeled), len(split.unlabeled), len(split.val), len(split.test), len(screened.skipped))
    return out


def _error(message: str) -> Exception:
    from vasseg.data.volumes import DataError

    return DataError(message)


def check_options(options: PrepareOptions, out: Path) -> None:
    """Refuse bad options and an existing output folder before any work."""
    if options.shape is not None and (len(options.shape) != 3 or any(int(s) < 1 for s in options.shape)):
        raise _error(f"--shape: need three positive sizes, got {options.shape}")
    if options.spacing is not None and (len(options.spacing) != 3 or not all(float(s) > 0 for s in options.spacing)):
        raise _error(f"--spacing: need three positive sizes in mm, got {options.spacing}")
    if options.shape is not None and options.spacing is not None:
        raise _error("--shape and --spacing: give one of them (a fixed grid or a voxel size)")
    if options.modality not in ("auto", "ct", "mr"):
        raise _error(f"--modality: {options.modality!r} is not auto, ct or mr")
    if not options.window[0] < options.window[1]:
        raise _error(f"--window: low must be below high, got {options.window}")
    if options.normalize not in ("minmax", "zscore"):
        raise _error(f"--normalize: {options.normalize!r} is not minmax or zscore")
    if options.test_fraction is not None and not 0.0 <= options.test_fraction < 1.0:
        raise _error(f"--test-fraction: must be in [0, 1), got {options.test_fraction}")
    if (options.num_val is not None and options.num_val < 0) or options.workers < 0:
        raise _error("--num-val and --workers: must not be negative")
    if not out.parent.is_dir():
        raise _error(f"{out}: parent folder {out.parent} does not exist")
    check_folder(out, PREPARE_OUTPUT, options.overwrite)


def discover(sources: Sequence[str | Path], plain: tuple[str | Path, str | Path] | None) -> Discovery:
    """The cases of the SOURCE folders or of ``--images``/``--labels``."""
    from vasseg.data.nifti import discover_sources
    from vasseg.data.pairs import discover_pairs

    return discover_pairs(*plain) if plain else discover_sources([Path(s) for s in sources])


def handle_problems(problems: list[str], skip_bad: bool) -> list[dict[str, str]]:
    """Log every problem; raise unless ``skip_bad``; return the skip records."""
    level = logging.WARNING if skip_bad else logging.ERROR
    for line in problems:
        log.log(level, "%s%s", "skipped: " if skip_bad else "", line)
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more, logged above)" if len(problems) > 1 else ""
        raise _error(f"{problems[0]}{more}; fix the files or pass --skip-bad to skip them")
    return [dict(zip(("file", "problem"), line.split(": ", 1))) for line in problems]


def screen(discovery: Discovery, options: PrepareOptions) -> Screened:
    """Discovery problems + header checks of every case: fail, or skip them when asked."""
    from vasseg.data.prepare_case import check_pair

    problems = list(discovery.problems)
    groups: list[list[tuple[Pair, Header]]] = []
    for pairs in (discovery.pairs, discovery.unlabeled, discovery.test):
        kept = []
        for pair in pairs:
            header = check_pair(pair, options.affine_tolerance, options.ignore_label_affine)
            if isinstance(header, str):
                problems.append(header)
            else:
                kept.append((pair, header))
        groups.append(kept)
    skipped = handle_problems(problems, options.skip_bad)
    if not groups[0]:
        where = ", ".join(str(r) for r in discovery.roots)
        raise _error(f"{where}: no labeled case (an image with its label) to train on")
    return Screened(groups[0], groups[1], groups[2], skipped)


def plan_recipe(options: PrepareOptions, discovery: Discovery, screened: Screened) -> dict[str, Any]:
    """How every scan is normalised and resampled (the manifest's and model files' record)."""
    from vasseg.data.plan import median_spacing
    from vasseg.data.preprocess import MR_PERCENTILES, detect_modality

    modality = detect_modality(options.modality, discovery.meta, screened.labeled[0][0].image)
    if modality == "ct":
        recipe: dict[str, Any] = {"modality": "ct", "window": list(options.window), "normalize": options.normalize,
                                  "percentiles": None}
    else:
        recipe = {"modality": "mr", "window": None, "normalize": "zscore", "percentiles": list(MR_PERCENTILES)}
    spacing = options.spacing
    if options.shape is None and spacing is None and discovery.layout in OWN_SCAN_LAYOUTS:
        spacing = median_spacing([h.canonical_spacing for _, h in screened.labeled])
        log.info("target spacing %s mm: the median of the %d labeled cases (--spacing sets another)",
                 list(spacing), len(screened.labeled))
    if spacing is not None:
        return recipe | {"shape": None, "target_spacing": [float(s) for s in spacing]}
    return recipe | {"shape": list(options.shape or PAPER_SHAPE), "target_spacing": None}


def write_cases(screened: Screened, tmp: Path, label_map: LabelMap, recipe: dict[str, Any],
                options: PrepareOptions, progress: bool) -> dict[str, dict[str, Any]]:
    """Prepare and write every case (streamed); returns the manifest record of each written case."""
    import contextlib

    from vasseg.data.prepare_case import CaseJob, run_jobs

    (tmp / "cases").mkdir()
    roles = (("labeled", screened.labeled), ("unlabeled", screened.unlabeled), ("test", screened.test))
    jobs = [CaseJob(pair, role, tmp / "cases" / f"{pair.id}.h5", label_map, recipe)
            for role, group in roles for pair, _ in group]
    records: dict[str, dict[str, Any]] = {}
    with contextlib.closing(run_jobs(jobs, options.workers, progress)) as results:
        for case_id, record, problem in results:
            if problem is not None:
                screened.skipped += handle_problems([problem], options.skip_bad)
            else:
                records[case_id] = record
    if not any(r["role"] == "labeled" for r in records.values()):
        raise _error(f"{tmp.parent}: no labeled case could be prepared ({len(screened.skipped)} files skipped)")
    return records


def split_cases(records: dict[str, dict[str, Any]], discovery: Discovery, options: PrepareOptions) -> SplitPlan:
    """Labeled / unlabeled / val / test ids of the written cases; test cases carved from the
    labeled ones get the role ``test`` in their records."""
    from vasseg.data.plan import VAL_MIN_LABELED, plan_split

    def role(name: str) -> list[str]:
        return sorted(i for i, r in records.items() if r["role"] == name)

    own = discovery.layout in OWN_SCAN_LAYOUTS
    fraction = options.test_fraction if options.test_fraction is not None else 0.0 if own else PAPER_TEST_FRACTION
    if role("test") and (options.test_ids or options.test_fraction):
        log.warning("imagesTs/ is the test split; --test-ids / --test-fraction are not used")
    split = plan_split(role("labeled"), role("unlabeled"), role("test"), options.seed, fraction, options.test_ids,
                       options.num_val)
    for case_id in split.test:
        records[case_id]["role"] = "test"
    for case_id in split.val:
        records[case_id]["role"] = "val"
    if split.val or options.num_val is not None:
        log.info("validation split: %d of the %d labeled training cases", len(split.val),
                 len(split.val) + len(split.labeled))
    else:
        log.info("validation split: none (%d labeled training cases; the default needs >= %d)",
                 len(split.labeled), VAL_MIN_LABELED)
    return split


def describe(recipe: dict[str, Any], options: PrepareOptions) -> tuple[str, str]:
    """How the grid and the intensities were chosen, for config.yaml's comments."""
    if recipe["target_spacing"]:
        rule = "--spacing" if options.spacing else "the median of the labeled cases"
        geometry = f"{recipe['target_spacing']} mm voxels ({rule}), each case its own extent"
    else:
        geometry = f"{recipe['shape']} voxels for every case ({'--shape' if options.shape else 'the paper'})"
    if recipe["modality"] == "ct":
        intensity = f"CT, clipped to {recipe['window']} HU and rescaled to [0, 1] ({recipe['normalize']})"
    else:
        intensity = ("MR, clipped to the 0.5-99.5 percentiles of its non-zero voxels and z-scored per volume "
                     "(nnU-Net's non-CT scheme)")
    return geometry, intensity


def write_outputs(tmp: Path, discovery: Discovery, label_map: LabelMap, recipe: dict[str, Any],
                  options: PrepareOptions, records: dict[str, dict[str, Any]], skipped: list[dict[str, str]],
                  split: SplitPlan) -> None:
    """``train.list``, ``test.list``, ``split.yaml``, ``prepared.json`` and ``config.yaml`` in the
    temporary folder."""
    import yaml

    from vasseg import __version__
    from vasseg.data.plan import ConfigFacts, write_config
    from vasseg.data.prepared import FORMAT, MANIFEST, VERSION

    (tmp / "train.list").write_text("".join(f"{i}\n" for i in split.train_list))
    (tmp / "test.list").write_text("".join(f"{i}\n" for i in split.test))
    (tmp / "split.yaml").write_text(yaml.safe_dump(split.as_dict(), sort_keys=False, default_flow_style=None,
                                                   width=100))
    sources = [str(r.resolve()) for r in discovery.roots] + [os.path.abspath(os.path.expanduser(u))
                                                             for u in options.unlabeled]
    manifest = {
        "format": FORMAT, "version": VERSION, "created_by": f"vasseg {__version__}",
        "sources": sources, "layout": discovery.layout, **recipe,
        "orientation": "closest canonical RAS+ (flips and transposes of the file's axes only)",
        "resampling": {"image": "trilinear, align_corners=False", "label": "nearest (voxel centres)"},
        "label_map": label_map.to_dict(), "class_names": list(label_map.classes),
        "num_classes": label_map.num_classes,
        "split": {"seed": options.seed, "explicit_test_ids": options.test_ids is not None,
                  **{k: len(v) for k, v in split.as_dict().items()}},
        "cases": records, "skipped": skipped,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shapes = {i: r["shape"] for i, r in records.items()}
    labeled = split.labeled + split.val
    geometry, intensity = describe(recipe, options)
    class_source = {"nnunet": "dataset.json's labels", "pairs": "the label values"}.get(discovery.layout)
    spacing = recipe["target_spacing"] or [float(v) for v in
                                           _median([records[i]["spacing"] for i in labeled])]
    write_config(tmp, ConfigFacts(
        sources=sources, class_names=list(label_map.classes),
        class_source=class_source if options.label_map is None and class_source else f"label map '{label_map.name}'",
        split=split, labeled_shapes=[shapes[i] for i in labeled],
        train_shapes=[shapes[i] for i in split.train_list], spacing=tuple(round(s, 4) for s in spacing),
        geometry=geometry, intensity=intensity))


def _median(rows: list[list[float]]) -> list[float]:
    import numpy as np

    return np.median(np.asarray(rows, dtype=np.float64), axis=0).tolist()

def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temporary folder to ``out``; an existing ``out`` keeps every entry that
    is not an earlier prepare's (:mod:`vasseg.outfolder`)."""
    check_folder(out, PREPARE_OUTPUT, overwrite)  # again: ``out`` may have changed while preparing
    publish_folder(tmp, out, PREPARE_OUTPUT)

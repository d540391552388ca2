"""``vasseg prepare``: a NIfTI CT dataset -> the prepared dataset of :mod:`vasseg.data.prepared`.

::

    vasseg prepare SOURCE [SOURCE ...] --out ROOT [--label-map btcv] [--shape 128 128 64]
        [--window -200 250] [--normalize minmax] [--test-fraction 0.2222 | --test-ids FILE]
        [--seed 0] [--skip-bad] [--overwrite] [--ignore-label-affine]
    vasseg prepare --images IMAGES --labels LABELS --out ROOT [...]

SOURCE is a folder of BTCV-style ``img*/label*`` pairs or an MSD folder with ``dataset.json``
(:mod:`vasseg.data.nifti`); with several SOURCEs, case ids get the folder name as a prefix.
Instead of SOURCEs, ``--images`` and ``--labels`` give plain pairs matched by file name: two
folders, or one image file and its label file (:mod:`vasseg.data.pairs`). Per
case: the label's source ids go through the label map to project classes; image and label are
brought to canonical RAS+ axis order (flips/transposes only); the image is clipped to the HU
window, rescaled to [0, 1] and resampled trilinearly to the target shape, the label by nearest
neighbour; the original shape, affine, spacing and the resampling factor are stored with it.

Every pair's header (shape, affine) is checked before any voxel is read. A bad or mismatched
pair is an error naming its file unless ``--skip-bad`` is given; skipped files are logged and
listed in ``prepared.json``. Output is written into a temporary folder next to ROOT and renamed at
the end: a failure leaves nothing behind. The split is deterministic: the ids are shuffled with
``--seed``; the first ``round(n * test_fraction)`` form ``test.list`` (sorted), the rest form
``train.list`` in shuffled order (its first N ids are the labeled ones of ``data.labeled``).

This module imports only the standard library at load time (:mod:`vasseg.data.prepare_cli`
imports it to build the parser); numpy, nibabel, h5py and torch are imported where the work happens.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vasseg.outfolder import Owner, check_folder
from vasseg.outfolder import publish as publish_folder

if TYPE_CHECKING:
    import numpy as np

    from vasseg.data.nifti import Discovery, Pair
    from vasseg.data.labelmap import LabelMap

log = logging.getLogger(__name__)

PAPER_SHAPE = (128, 128, 64)
PAPER_WINDOW = (-200.0, 250.0)
PAPER_TEST_FRACTION = 20 / 90  # the paper's 70 train / 20 test of 90 CTs
# What prepare writes into --out (vasseg.outfolder: the overwrite rule); a rerun replaces its own
# earlier dataset only with --overwrite.
PREPARE_OUTPUT = Owner("prepare", ("cases", "train.list", "test.list", "prepared.json"), replaces_own=False)


@dataclass(frozen=True)
class PrepareOptions:
    """How ``prepare_dataset`` maps, windows, resamples and splits (defaults: the paper's MO)."""

    label_map: str = "btcv"  # shipped map name or YAML path
    shape: tuple[int, int, int] = PAPER_SHAPE  # target voxels (X, Y, Z), canonical order
    window: tuple[float, float] = PAPER_WINDOW  # HU
    normalize: str = "minmax"  # minmax: [0, 1] | zscore: then zero mean, unit variance
    test_fraction: float = PAPER_TEST_FRACTION
    test_ids: tuple[str, ...] | None = None  # explicit test ids (overrides test_fraction)
    seed: int = 0
    skip_bad: bool = False
    overwrite: bool = False
    ignore_label_affine: bool = False  # same shape suffices; affine differences are warnings
    affine_tolerance: float = 1e-3  # max |difference| of image and label affines (mm)


@dataclass
class PreparedCase:
    """Arrays and attributes of one case, ready to be written (see :mod:`vasseg.data.prepared`)."""

    image: np.ndarray
    label: np.ndarray
    native_label: np.ndarray
    attrs: dict[str, Any]


# --------------------------------------------------------------------------- library


def prepare_dataset(sources: Sequence[str | Path], out: str | Path, options: PrepareOptions = PrepareOptions(),
                    progress: bool = True, plain: tuple[str | Path, str | Path] | None = None) -> Path:
    """Prepare the NIfTI dataset(s) ``sources`` into the folder ``out``; returns ``out``.

    ``plain=(IMAGES, LABELS)`` prepares plain pairs matched by file name instead (``sources``
    empty). Raises DataError (one line, naming the file) for a bad option, an existing ``out``
    without ``overwrite``, or a bad/mismatched pair without ``skip_bad``.
    """
    from vasseg.data.nifti import discover_sources
    from vasseg.data.pairs import discover_pairs
    from vasseg.data.labelmap import load_label_map

    out = Path(out).expanduser()
    if bool(sources) == bool(plain):
        raise _error("prepare: give SOURCE folders or --images and --labels (one of the two)")
    check_options(options, out)
    label_map = load_label_map(options.label_map)
    discovery = discover_pairs(*plain) if plain else discover_sources([Path(s) for s in sources])
    warn_on_label_names(discovery.label_names, label_map)
    pairs, skipped = screen_pairs(discovery, options)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        records = write_cases(pairs, tmp, label_map, options, skipped, progress)
        train, test = split_ids(sorted(records), options)
        write_lists_and_manifest(tmp, discovery, label_map, options, records, skipped, train, test)
        publish(tmp, out, options.overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %d cases (%d train, %d test, %d skipped) into %s", len(records), len(train),
             len(test), len(skipped), out)
    return out


def _error(message: str) -> Exception:
    from vasseg.data.volumes import DataError

    return DataError(message)


def check_options(options: PrepareOptions, out: Path) -> None:
    """Refuse bad options and an existing output folder before any work."""
    if len(options.shape) != 3 or any(int(s) < 1 for s in options.shape):
        raise _error(f"--shape: need three positive sizes, got {options.shape}")
    if not options.window[0] < options.window[1]:
        raise _error(f"--window: low must be below high, got {options.window}")
    if options.normalize not in ("minmax", "zscore"):
        raise _error(f"--normalize: {options.normalize!r} is not minmax or zscore")
    if not 0.0 <= options.test_fraction < 1.0:
        raise _error(f"--test-fraction: must be in [0, 1), got {options.test_fraction}")
    if not out.parent.is_dir():
        raise _error(f"{out}: parent folder {out.parent} does not exist")
    check_folder(out, PREPARE_OUTPUT, options.overwrite)


def _words(name: str) -> frozenset[str]:
    return frozenset(w for w in "".join(c if c.isalnum() else " " for c in name.lower()).split())


def warn_on_label_names(names: dict[str, str], label_map: LabelMap) -> list[str]:
    """Warn where the dataset's own label names (MSD dataset.json) disagree with the label map's.

    Names are compared as word sets ("kidney_left" == "Left Kidney"); a disagreement usually
    means the wrong ``--label-map``. Returns the warnings.
    """
    warnings = []
    for key, name in sorted(names.items(), key=lambda kv: kv[0]):
        if not key.isdigit() or int(key) not in label_map.source_names:
            continue
        expected = label_map.source_names[int(key)]
        if _words(name) != _words(expected):
            warnings.append(f"dataset.json calls label {key} {name!r}, label map '{label_map.name}' calls it "
                            f"{expected!r}; is --label-map right?")
    for line in warnings:
        log.warning("%s", line)
    return warnings


def screen_pairs(discovery: Discovery, options: PrepareOptions) -> tuple[list[Pair], list[dict[str, str]]]:
    """Discovery problems + header checks of every pair: fail, or skip them when asked."""
    problems = list(discovery.problems)
    pairs = []
    for pair in discovery.pairs:
        problem = check_pair_header(pair, options)
        if problem:
            problems.append(problem)
        else:
            pairs.append(pair)
    return pairs, handle_problems(problems, options.skip_bad)


def handle_problems(problems: list[str], skip_bad: bool) -> list[dict[str, str]]:
    """Log every problem; raise unless ``skip_bad``; return the skip records."""
    level = logging.WARNING if skip_bad else logging.ERROR
    for line in problems:
        log.log(level, "%s%s", "skipped: " if skip_bad else "", line)
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more, logged above)" if len(problems) > 1 else ""
        raise _error(f"{problems[0]}{more}; fix the files or pass --skip-bad to skip them")
    return [dict(zip(("file", "problem"), line.split(": ", 1))) for line in problems]


def check_pair_header(pair: Pair, options: PrepareOptions) -> str | None:
    """One problem line if the image and label headers do not form a pair, else None."""
    import nibabel as nib
    import numpy as np

    headers = []
    for path in (pair.image, pair.label):
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types on truncated or foreign files
            return f"{path}: cannot read NIfTI header ({type(exc).__name__}: {' '.join(str(exc).split())})"
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            return f"{path}: expected a 3-D volume, got shape {shape}"
        headers.append((shape, np.asarray(img.affine, dtype=np.float64)))
    (shape_i, aff_i), (shape_l, aff_l) = headers
    if shape_i != shape_l:
        return f"{pair.label}: shape {shape_l} differs from image {pair.image.name} {shape_i}"
    diff = float(np.abs(aff_i - aff_l).max())
    if diff > options.affine_tolerance:
        if not options.ignore_label_affine:
            return (f"{pair.label}: affine differs from image {pair.image.name}'s by up to {diff:.4g} mm "
                    f"(--ignore-label-affine accepts it)")
        log.warning("%s: affine differs from %s's by up to %.4g mm; using the image's", pair.label,
                    pair.image.name, diff)
    return None


def read_label(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A label volume's integer-valued array in file order (scaling applied, 4-D singleton dropped)."""
    import nibabel as nib
    import numpy as np

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel/gzip/zlib errors on truncated files
        raise _error(f"{path}: cannot read NIfTI ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != tuple(shape):
        raise _error(f"{path}: label shape {data.shape} differs from the image's {tuple(shape)}")
    return data


def prepare_case(pair: Pair, label_map: LabelMap, options: PrepareOptions) -> PreparedCase:
    """Read, map, reorient, window and resample one pair (see the module docstring)."""
    import numpy as np

    from vasseg.data.nifti import axcodes, canonical_ornt, canonical_spacing, to_canonical
    from vasseg.data.prepared import preprocess_image, resample_label
    from vasseg.io import read_volume

    volume = read_volume(pair.image)
    classes = label_map.apply(read_label(pair.label, volume.image.shape), str(pair.label))
    ornt = canonical_ornt(volume.affine)
    hu, native = to_canonical(volume.image, ornt), to_canonical(classes, ornt)
    spacing = np.asarray(canonical_spacing(volume.spacing, ornt))
    shape = tuple(int(s) for s in options.shape)
    factor = np.asarray(shape, dtype=np.float64) / np.asarray(native.shape)
    attrs = {
        "original_shape": list(volume.image.shape), "original_affine": volume.affine.tolist(),
        "original_spacing": list(volume.spacing), "orientation": axcodes(volume.affine),
        "canonical_shape": list(native.shape), "canonical_spacing": spacing.tolist(),
        "spacing": (spacing / factor).tolist(), "factor": factor.tolist(),
        "source_image": str(pair.image), "source_label": str(pair.label),
    }
    return PreparedCase(preprocess_image(hu, options.window, options.normalize, shape),
                        resample_label(native, shape), native, attrs)


def write_case(path: Path, case: PreparedCase) -> None:
    """One ``cases/<ID>.h5`` (gzip-compressed labels; it lives in the temporary folder)."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=case.image, compression="gzip", compression_opts=1)
        f.create_dataset("label", data=case.label, compression="gzip", compression_opts=4)
        f.create_dataset("native_label", data=case.native_label, compression="gzip", compression_opts=4)
        for key, value in case.attrs.items():
            f.attrs[key] = value if isinstance(value, str) else np.asarray(value)


def class_counts(label: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Voxels per class name (background included)."""
    import numpy as np

    counts = np.bincount(label.ravel(), minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def write_cases(pairs: list[Pair], tmp: Path, label_map: LabelMap, options: PrepareOptions,
                skipped: list[dict[str, str]], progress: bool) -> dict[str, dict[str, Any]]:
    """Prepare and write every pair; returns the manifest record of each written case."""
    from tqdm import tqdm

    from vasseg.data.volumes import DataError
    from vasseg.io import ImageIOError

    (tmp / "cases").mkdir()
    records: dict[str, dict[str, Any]] = {}
    for pair in tqdm(pairs, desc="prepare", unit="case", disable=not progress, dynamic_ncols=True):
        try:
            case = prepare_case(pair, label_map, options)
        except (DataError, ImageIOError) as exc:
            skipped += handle_problems([str(exc)], options.skip_bad)
            continue
        write_case(tmp / "cases" / f"{pair.id}.h5", case)
        keep = ("original_shape", "original_spacing", "orientation", "factor", "source_image", "source_label")
        records[pair.id] = {k: case.attrs[k] for k in keep} | {
            "voxels": class_counts(case.label, label_map.classes),
            "native_voxels": class_counts(case.native_label, label_map.classes)}
    if not records:
        raise _error(f"{tmp.parent}: no case could be prepared (all {len(skipped)} files skipped)")
    return records


def split_ids(ids: list[str], options: PrepareOptions) -> tuple[list[str], list[str]]:
    """Deterministic (train, test): explicit test ids, or a seeded shuffle and a test fraction."""
    import numpy as np

    order = [ids[i] for i in np.random.default_rng(options.seed).permutation(len(ids))]
    if options.test_ids is not None:
        unknown = sorted(set(options.test_ids) - set(ids))
        if unknown:
            raise _error(f"--test-ids: {len(unknown)} ids are not among the prepared cases: {', '.join(unknown)}")
        test = set(options.test_ids)
    else:
        test = set(order[: int(round(len(ids) * options.test_fraction))])
    train = [i for i in order if i not in test]
    if not train:
        raise _error(f"split: no training case left of {len(ids)} (test fraction {options.test_fraction})")
    return train, sorted(test)


def write_lists_and_manifest(tmp: Path, discovery: Discovery, label_map: LabelMap, options: PrepareOptions,
                             records: dict[str, dict[str, Any]], skipped: list[dict[str, str]],
                             train: list[str], test: list[str]) -> None:
    """``train.list``, ``test.list`` and ``prepared.json`` in the temporary folder."""
    from vasseg import __version__
    from vasseg.data.prepared import FORMAT, MANIFEST, VERSION

    (tmp / "train.list").write_text("".join(f"{i}\n" for i in train))
    (tmp / "test.list").write_text("".join(f"{i}\n" for i in test))
    manifest = {
        "format": FORMAT, "version": VERSION, "created_by": f"vasseg {__version__}",
        "sources": [str(r.resolve()) for r in discovery.roots], "layout": discovery.layout,
        "shape": list(options.shape), "window": list(options.window), "normalize": options.normalize,
        "orientation": "closest canonical RAS+ (flips and transposes of the file's axes only)",
        "resampling": {"image": "trilinear, align_corners=False", "label": "nearest (voxel centres)"},
        "label_map": label_map.to_dict(), "class_names": list(label_map.classes),
        "num_classes": label_map.num_classes,
        "split": {"seed": options.seed, "test_fraction": None if options.test_ids else options.test_fraction,
                  "explicit_test_ids": options.test_ids is not None, "train": len(train), "test": len(test)},
        "cases": records, "skipped": skipped,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temporary folder to ``out``; an existing ``out`` keeps every entry that
    is not an earlier prepare's (:mod:`vasseg.outfolder`)."""
    check_folder(out, PREPARE_OUTPUT, overwrite)  # again: ``out`` may have changed while preparing
    publish_folder(tmp, out, PREPARE_OUTPUT)

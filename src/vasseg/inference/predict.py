"""``vasseg predict MODEL INPUT OUTPUT``: many images, one model load, no case lost to another's failure.

INPUT is an image file (``.nii``, ``.nii.gz``, ``.h5``, ``.hdf5``), a folder (its image files, not
recursive) or a quoted glob pattern. OUTPUT is a ``.nii``/``.nii.gz`` file (one input) or a folder
(created if missing) receiving ``<case>.nii.gz`` per input, where ``<case>`` is the file name
without its extension (and without nnU-Net's channel suffix ``_0000`` when every input has one:
``imagesTs/la_003_0000.nii.gz`` gives ``la_003.nii.gz``), or the parent folder's name where several
inputs share a file name (the LA layout's ``<id>/mri_norm2.h5`` gives ``<id>.nii.gz``).

Rules checked before the model is loaded: an output that is one of the inputs, or that already
exists, is refused unless ``overwrite``. While case *i* runs on the device, case *i+1* is read and
preprocessed and case *i-1* written, each on its own thread. A case that fails (unreadable file,
bad geometry, out of memory) is logged and skipped; the others are written, and the command ends
with a one-line list of the failures. With one input its error is raised as is.

``--save-probabilities`` writes ``<case>.npz`` beside the label map, nnU-Net's convention:
``probabilities`` float16 ``(K, X, Y, Z)`` on the label map's grid (array order of the input file),
``class_names`` and ``label_ids`` (the label map's value for each channel).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from vasseg.atomic import atomic_write_bytes
from vasseg.inferer.windows import Windows
from vasseg.errors import ConfigError, VassegError, is_user_error
from vasseg.io import (
    HDF5_SUFFIXES,
    NIFTI_SUFFIXES,
    ImageIOError,
    Volume,
    check_label_output,
    check_parent_folder,
    write_label_nifti,
)
from vasseg.inference.geometry import Geometry, state_geometry
from vasseg.outfolder import Owner, add_to_marker, check_folder

if TYPE_CHECKING:
    from vasseg.inference.model import Model, Prediction

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = NIFTI_SUFFIXES + HDF5_SUFFIXES
# Extensions that make an output name a file, not a folder (a typo'd label map would become one).
FILE_SUFFIXES = frozenset({".txt", ".gz", ".h5", ".hdf5", ".npz", ".npy", ".nrrd", ".mha", ".mhd", ".mgz", ".png",
                           ".jpg", ".csv", ".json", ".yaml", ".yml", ".zip", ".pt", ".safetensors", ".dcm"})
# An output folder: its label maps and probabilities (vasseg.outfolder: the overwrite rule). A folder
# of NIfTI files without predict's marker is never taken for predict's output: it may hold scans.
PREDICT_OUTPUT = Owner("predict", ("*.nii.gz", "*.nii", "*.npz"), legacy=False)


class PredictionFailed(VassegError, ValueError):
    """Some cases could not be segmented (the others were written); one line listing them."""


@dataclass(frozen=True)
class PredictOptions:
    """How ``predict_paths`` runs (the flags of ``vasseg predict``)."""

    checkpoint: str = "last"  # run folders: last | best
    device: str = "auto"
    save_probabilities: bool = False
    tta: bool = False  # average over the 4 flips of the x-y plane (4x the compute)
    reference: str | None = None  # NIfTI (or folder of <case>.nii[.gz]) giving .h5 inputs their geometry
    spacing: tuple[float, float, float] | None = None  # mm, for .h5 inputs without --reference
    overwrite: bool = False
    progress: bool = True
    precision: str | None = None  # auto | fp32 | bf16 (None: the model's, auto for a loaded one)
    windows: Windows | None = None  # None: the model's (eval.stride windows for a loaded one)


@dataclass(frozen=True)
class Job:
    """One input and the files it becomes."""

    source: Path
    name: str
    labels: Path
    probs: Path | None
    folder: Path | None = None  # the output folder (its marker lists what was written), or None


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, BaseException]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many failed and why, each naming its file."""
        total = len(self.written) + len(self.failed)
        reasons = [_reason(src, exc) for src, exc in self.failed]
        return f"{len(self.failed)} of {total} cases failed: " + "; ".join(reasons)


def _reason(source: Path, exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if str(source) in text else f"{source}: {text}"


# --------------------------------------------------------------------------- planning


def is_image_name(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_inputs(spec: str | Path) -> list[Path]:
    """The image files INPUT names: the file itself, a folder's images, or a glob's matches (sorted)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        # A broken or looping link is kept: reading it fails, so it is named in the failure list.
        files = sorted(p for p in path.iterdir()
                       if _file_or_link(p) and is_image_name(p) and not p.name.startswith("."))
        if not files:
            raise ImageIOError(f"{path}: no {', '.join(IMAGE_SUFFIXES)} files in this folder (for files in "
                               f"subfolders give a quoted glob, e.g. '{path}/*/mri_norm2.h5')")
        return files
    if path.exists() or not any(c in text for c in "*?["):
        return [path]  # one file: reading it reports a missing file or an unknown extension
    matches = (Path(p) for p in glob.glob(os.path.expanduser(text)))
    files = sorted(p for p in matches if is_image_name(p) and _file_or_link(p))
    if not files:
        raise ImageIOError(f"{text}: no image file matches this pattern")
    return files


def _file_or_link(path: Path) -> bool:
    return path.is_file() or path.is_symlink()


def case_names(inputs: list[Path]) -> list[str]:
    """File names without extension (and without nnU-Net's channel suffix ``_0000`` when every input
    has it, as nnU-Net names its predictions); the parent folder's name where several inputs share one."""
    stems = [strip_image_suffix(p.name) for p in inputs]
    if all(s.endswith("_0000") and len(s) > 5 for s in stems):
        stems = [s[: -len("_0000")] for s in stems]
    names = [p.parent.name if stems.count(s) > 1 else s for p, s in zip(inputs, stems)]
    for name, path in zip(names, inputs):
        if names.count(name) > 1:
            others = [str(p) for n, p in zip(names, inputs) if n == name and p != path]
            raise ImageIOError(f"{path}: its output name {name}.nii.gz is shared with {others[0]}; "
                               f"predict them into separate folders")
    return names


def is_label_file(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def plan_jobs(inputs: list[Path], output: Path, save_probabilities: bool) -> list[Job]:
    """Where each input's label map (and probabilities) go."""
    output = output.expanduser()
    if is_label_file(output):
        if len(inputs) > 1:
            raise ImageIOError(f"{output}: {len(inputs)} inputs need an output folder, not a file")
        check_label_output(output)
        return [Job(inputs[0], strip_image_suffix(output.name), output,
                    _npz(output) if save_probabilities else None)]
    if output.exists() and not output.is_dir():
        raise ImageIOError(f"{output}: not a folder (a label map must end in .nii or .nii.gz)")
    if not output.exists() and output.suffix.lower() in FILE_SUFFIXES:
        raise ImageIOError(f"{output}: a file name, but a label map must end in .nii or .nii.gz (an output "
                           f"folder's name needs no extension)")
    if not output.is_dir():
        check_parent_folder(output)
    elif not os.access(output, os.W_OK | os.X_OK):
        raise ImageIOError(f"{output}: output directory {output} is not writable")
    jobs = []
    for source, name in zip(inputs, case_names(inputs)):
        labels = output / f"{name}.nii.gz"
        jobs.append(Job(source, name, labels, _npz(labels) if save_probabilities else None, output))
    return jobs


def _npz(label_path: Path) -> Path:
    return label_path.with_name(strip_image_suffix(label_path.name) + ".npz")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def check_jobs(jobs: list[Job], overwrite: bool) -> None:
    """Refuse to replace an input or an existing file unless ``overwrite`` (README, "Failure behaviour")."""
    if overwrite:
        return
    inputs = [job.source for job in jobs]
    for job in jobs:
        for out in filter(None, (job.labels, job.probs)):
            hit = next((src for src in inputs if _same_file(out, src)), None)
            if hit is not None:
                raise ImageIOError(f"{out}: is the input image {hit}; refusing to replace a scan with its "
                                   f"label map (pass --overwrite to do so)")
    existing = [out for job in jobs for out in filter(None, (job.labels, job.probs)) if out.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ImageIOError(f"{existing[0]}: already exists{more}; pass --overwrite to replace")


# --------------------------------------------------------------------------- geometry


def make_geometry(options: PredictOptions, jobs: list[Job]) -> Geometry:
    """Validate ``--reference`` / ``--spacing`` (before the model is loaded)."""
    if options.reference and options.spacing:
        raise ConfigError("--reference and --spacing: give one of them")
    reference = Path(options.reference).expanduser() if options.reference else None
    if reference is not None and not reference.exists():
        raise ImageIOError(f"{reference}: reference image not found")
    if reference is not None and not reference.is_dir() and len(jobs) > 1:
        raise ImageIOError(f"{reference}: with several inputs, --reference must be a folder of <case>.nii.gz")
    return Geometry(reference, options.spacing)


# --------------------------------------------------------------------------- running


def predict_paths(model: str | Path | Model, input_spec: str | Path, output: str | Path,
                  options: PredictOptions = PredictOptions()) -> PredictResult:
    """Segment every image INPUT names into OUTPUT with one model load (see the module docstring)."""
    from vasseg.inference.model import Model, load_model
    from vasseg.engine.setup import select_device

    device = select_device(options.device, "--device")  # before any work: a bad spec is one line
    jobs = plan_jobs(find_inputs(input_spec), Path(output), options.save_probabilities)
    check_jobs(jobs, options.overwrite)
    if jobs[0].folder is not None:
        names = [out.name for job in jobs for out in filter(None, (job.labels, job.probs))]
        check_folder(jobs[0].folder, PREDICT_OUTPUT, options.overwrite, names)
    geometry = make_geometry(options, jobs)
    if not isinstance(model, Model):
        model = load_model(model, options.checkpoint, device, **_inference_options(options))
    elif options.precision or options.windows:
        model = dataclasses.replace(model, **_inference_options(options))
        log.info("%s", model.describe_inference())
    state_geometry(geometry, [job.source for job in jobs], model.exp.data.spacing)
    folder = None if is_label_file(Path(output)) else Path(output).expanduser()
    created = folder is not None and not folder.exists()
    if created:
        folder.mkdir()
    try:
        result = run_jobs(model, jobs, geometry, options)
    finally:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # nothing was written: leave nothing behind
    if result.failed and len(jobs) == 1:
        raise result.failed[0][1]
    return result


def _inference_options(options: PredictOptions) -> dict[str, object]:
    """The ``precision`` / ``windows`` keywords the options set."""
    given = {"precision": options.precision, "windows": options.windows}
    return {key: value for key, value in given.items() if value is not None}


def run_jobs(model: Model, jobs: list[Job], geometry: Geometry, options: PredictOptions) -> PredictResult:
    """Read ahead one case and write behind one case while the current one runs on the device."""
    result = PredictResult()
    writes: list[tuple[Job, Future[None]]] = []

    def load(job: Job) -> tuple[Volume, torch.Tensor]:
        volume = geometry.apply(model.volume(job.source, options.spacing), job.name)
        return volume, model.preprocess(volume)

    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        upcoming = reader.submit(load, jobs[0])
        bar = tqdm(jobs, desc="predict", unit="case", disable=not options.progress or len(jobs) == 1,
                   dynamic_ncols=True)
        for i, job in enumerate(bar):
            current = upcoming
            if i + 1 < len(jobs):
                upcoming = reader.submit(load, jobs[i + 1])
            try:
                volume, image = current.result()
                pred = model.predict_volume(volume, options.save_probabilities, options.tta, image)
                del image
                writes.append((job, writer.submit(write_job, job, volume, pred, model)))
            except Exception as exc:  # noqa: BLE001 - a bug is re-raised by _failed
                _failed(result, job, exc, len(jobs))
        for job, future in writes:
            try:
                future.result()
                result.written.append(job.labels)
            except Exception as exc:  # noqa: BLE001 - a bug is re-raised by _failed
                _failed(result, job, exc, len(jobs))
    return result


def is_case_error(exc: BaseException) -> bool:
    """A case's own failure (bad file or geometry, a write error, a volume too large for the device):
    the case is skipped. Anything else is a bug in vasseg and stops the command."""
    return is_user_error(exc) or isinstance(exc, torch.OutOfMemoryError)


def _failed(result: PredictResult, job: Job, exc: Exception, total: int) -> None:
    if not is_case_error(exc):
        raise exc
    if total > 1:
        log.error("%s", _reason(job.source, exc))
    result.failed.append((job.source, exc))


def write_job(job: Job, volume: Volume, pred: Prediction, model: Model) -> None:
    """Probabilities first, then the label map; a failed label map takes its probabilities with it."""
    if job.probs is not None and pred.probs is not None:
        write_probabilities(job.probs, pred.probs, model.class_names, model.label_ids)
    try:
        write_label_nifti(job.labels, pred.labels, volume.affine, volume.header)
    except BaseException:
        if job.probs is not None:
            job.probs.unlink(missing_ok=True)
        raise
    if job.folder is not None:
        add_to_marker(job.folder, PREDICT_OUTPUT, [p.name for p in (job.labels, job.probs) if p is not None])
    log.info("%s -> %s (%d voxels labelled foreground)", job.source, job.labels, int((pred.labels > 0).sum()))


def write_probabilities(path: Path, probs: np.ndarray, class_names: tuple[str, ...],
                        label_ids: tuple[int, ...]) -> Path:
    """``path.npz``: ``probabilities`` float16 ``(K, X, Y, Z)``, ``class_names``, ``label_ids`` (atomic)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=probs.astype(np.float16), class_names=np.array(class_names),
                        label_ids=np.array(label_ids, dtype=np.int64))
    try:
        atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot write probabilities ({exc.strerror or exc})") from None
    return path


def predict_file(target: str | Path, input_path: str | Path, output_path: str | Path,
                 checkpoint: str = "last", device: str = "auto", progress: bool = True) -> Path:
    """Segment one image (NIfTI or LA h5) with a run, checkpoint or model file; write ``output_path``."""
    options = PredictOptions(checkpoint=checkpoint, device=device, progress=progress)
    result = predict_paths(target, input_path, output_path, options)
    return result.written[0]

"""Voxel features of one network layer, sampled per class from labeled and unlabeled volumes.

A layer is ``encoder:0..4`` (strides 1..16) or ``decoder:0..3`` (strides 8..1; ``decoder:3`` is
the last map before the output convolution, the default). Its features are read at sampled
voxels of a patch around each volume's foreground, trilinearly up-sampled to the label grid (the
same numbers ``F.interpolate(..., align_corners=False)`` of the whole map would give, computed at
the sampled voxels only). Voxels are sampled per class, balanced and bounded.

A voxel's class is its ground truth when the volume has a label (every LA training case does, so
"unlabeled" volumes are coloured by truths the method never saw) and the network's prediction
otherwise (``from_prediction``). :func:`save_snapshot` stores a sample as ``step_NNNNNN.npz`` so the
report can show the alignment over training; :func:`snapshot_hook`, a step-end hook of the trainer
(:func:`vasseg.training.default_hooks` passes it), calls it at the steps ``run.feature_snapshots`` lists.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg.engine.trainer import Trainer
from vasseg.rundir import RunDir
from vasseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_LAYER = "decoder:3"
LAYER_COUNTS = {"encoder": 5, "decoder": 4}
PER_CLASS = 128  # voxels per class per volume
MAX_CASES = 4  # volumes per stream (labeled, unlabeled)
MAX_POINTS = 2400  # voxels per sample in all (more classes: fewer per class), bounds t-SNE time


def parse_layer(spec: str) -> tuple[str, int]:
    """``"decoder:3"`` -> ``("decoder", 3)``; ValueError naming the valid choices."""
    match = re.fullmatch(r"(encoder|decoder):(\d)", spec.strip())
    if not match or int(match[2]) >= LAYER_COUNTS[match[1]]:
        raise ConfigError(f"--layer {spec!r}: choose encoder:0..4 or decoder:0..3")
    return match[1], int(match[2])


@dataclass
class FeatureSample:
    """Sampled voxel features with their class, stream and case."""

    features: np.ndarray  # (N, C) float32
    cls: np.ndarray  # (N,) int
    labeled: np.ndarray  # (N,) bool: from a labeled (True) or unlabeled (False) volume
    case: np.ndarray  # (N,) str
    from_prediction: np.ndarray  # (N,) bool: class from the network (the volume had no label)
    layer: str = DEFAULT_LAYER

    def save(self, path: Path, **meta: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")  # atomic: a reader never sees half a file
        np.savez_compressed(tmp, features=self.features, cls=self.cls, labeled=self.labeled,
                            case=self.case, from_prediction=self.from_prediction, layer=self.layer,
                            **{k: np.asarray(v) for k, v in meta.items()})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> FeatureSample:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["features"], z["cls"], z["labeled"], z["case"], z["from_prediction"], str(z["layer"]))


# --------------------------------------------------------------------------- sampling


def crop_around_foreground(image: Tensor, label: Tensor | None, patch: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """A ``patch``-sized crop centred on the label's foreground box (zero-padded if needed)."""
    from vasseg.inferer.sliding import pad_amounts, pad_volume

    pads = pad_amounts(tuple(image.shape[1:]), patch)
    image = pad_volume(image, pads)
    if label is not None:
        label = pad_volume(label[None].float(), pads)[0].to(torch.uint8)
    shape = image.shape[1:]
    fg = torch.nonzero(label > 0) if label is not None else torch.empty(0, 3)
    centre = ((fg.min(0).values + fg.max(0).values) // 2).tolist() if len(fg) else [s // 2 for s in shape]
    starts = [int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, patch, shape)]
    index = tuple(slice(a, a + p) for a, p in zip(starts, patch))
    return image[(slice(None), *index)], (label[index] if label is not None else None)


def sample_positions(label: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 4)`` rows ``(x, y, z, class)``: up to ``per_class`` voxels of every present class."""
    rows = []
    for cls in np.unique(label):
        idx = np.argwhere(label == cls)
        take = rng.choice(len(idx), size=min(per_class, len(idx)), replace=False)
        rows.append(np.column_stack([idx[take], np.full(len(take), cls)]))
    return np.concatenate(rows).astype(np.int64)


def features_at(fmap: Tensor, positions: np.ndarray, grid: tuple[int, ...]) -> Tensor:
    """Features ``(n, C)`` of ``fmap`` ``(1, C, a, b, c)`` up-sampled to ``grid`` at voxel ``positions``.

    ``grid_sample`` with ``align_corners=False`` and border clamping reads the same trilinear
    values as ``F.interpolate(fmap, grid, mode="trilinear", align_corners=False)`` would hold at
    those voxels, without building the full-resolution map (256 channels x a whole patch is GBs).
    """
    pos = torch.as_tensor(positions[:, :3], dtype=torch.float32, device=fmap.device)
    size = torch.tensor(grid, dtype=torch.float32, device=fmap.device)
    norm = (2 * pos + 1) / size - 1  # voxel centres in [-1, 1]
    coords = norm.flip(-1).view(1, -1, 1, 1, 3)  # grid_sample wants (z, y, x) order: last axis first
    out = F.grid_sample(fmap.float(), coords, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(fmap.shape[1], -1).T


@torch.no_grad()
def case_features(network: nn.Module, image: Tensor, label: Tensor | None, layer: tuple[str, int],
                  per_class: int, rng: np.random.Generator, device: torch.device) -> tuple[np.ndarray, np.ndarray, bool]:
    """Sampled features and classes of one cropped volume; ``True`` when classes are predicted."""
    out = network(image[None].to(device=device, dtype=torch.float32))
    from_prediction = label is None
    ref = out.logits.argmax(1)[0] if from_prediction else label
    positions = sample_positions(ref.cpu().numpy(), per_class, rng)
    fmap = getattr(out, layer[0])[layer[1]]
    feats = features_at(fmap, positions, tuple(image.shape[1:]))
    return feats.cpu().numpy().astype(np.float32), positions[:, 3], from_prediction


def collect_features(network: nn.Module, labeled: list[Any], unlabeled: list[Any], patch: tuple[int, ...],
                     layer: str = DEFAULT_LAYER, per_class: int = PER_CLASS, max_cases: int = MAX_CASES,
                     device: torch.device | str = "cpu", seed: int = 0,
                     max_points: int = MAX_POINTS) -> FeatureSample:
    """Features of up to ``max_cases`` labeled and unlabeled cases (``vasseg`` ``Case`` objects)."""
    part = parse_layer(layer)
    rng = np.random.default_rng(seed)
    device = torch.device(device)
    chunks: list[tuple[np.ndarray, np.ndarray, bool, str, bool]] = []
    for stream, cases in ((True, labeled), (False, unlabeled)):
        for case in cases[:max_cases]:
            image, label = crop_around_foreground(case.image.cpu(), _cpu(case.label), patch)
            feats, cls, predicted = case_features(network, image, label, part, per_class, rng, device)
            chunks.append((feats, cls, stream, case.id, predicted))
    if not chunks:
        raise DataError("no volumes to sample features from")
    sample = FeatureSample(
        features=np.concatenate([c[0] for c in chunks]),
        cls=np.concatenate([c[1] for c in chunks]),
        labeled=np.concatenate([np.full(len(c[1]), c[2]) for c in chunks]),
        case=np.concatenate([np.full(len(c[1]), c[3]) for c in chunks]).astype(str),
        from_prediction=np.concatenate([np.full(len(c[1]), c[4]) for c in chunks]),
        layer=layer,
    )
    return subsample(sample, max_points, seed)


def subsample(sample: FeatureSample, max_points: int, seed: int = 0) -> FeatureSample:
    """At most ``max_points`` voxels, the same fraction of every (class, stream) stratum."""
    n = len(sample.cls)
    if n <= max_points:
        return sample
    rng = np.random.default_rng(seed)
    keep = []
    for key in sorted(set(zip(sample.cls.tolist(), sample.labeled.tolist()))):
        idx = np.nonzero((sample.cls == key[0]) & (sample.labeled == key[1]))[0]
        keep.append(rng.choice(idx, size=max(1, round(len(idx) * max_points / n)), replace=False))
    sel = np.sort(np.concatenate(keep))
    return FeatureSample(sample.features[sel], sample.cls[sel], sample.labeled[sel], sample.case[sel],
                         sample.from_prediction[sel], sample.layer)


def _cpu(label: Tensor | None) -> Tensor | None:
    return label.cpu() if label is not None else None


def network_of(method: nn.Module) -> nn.Module:
    """The network whose features are sampled: the method's inference network (the student)."""
    net = method.inference_network() if hasattr(method, "inference_network") else method
    return net


# --------------------------------------------------------------------------- the training hook


def snapshot_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"step_{step:06d}.npz"


def save_snapshot(method: nn.Module, data: Any, exp: Any, step: int, out_dir: Path,
                  device: torch.device | str, layer: str = DEFAULT_LAYER) -> Path:
    """Store sampled student features of the training volumes at ``step`` (training hook).

    ``data`` is the trainer's ``DataBundle``; labeled cases come from ``data.labeled`` and
    unlabeled ones from ``data.unlabeled``, or, for a supervised-only run (which loads none), the
    first unlabeled ids of its split are read here so that baselines show both streams too. The
    method is left in eval mode; the trainer switches it back.
    """
    method.eval()
    unlabeled = list(data.unlabeled) if data.unlabeled is not None else _unlabeled_cases(exp, data.split)
    # Module constants read at call time (not as defaults) so that tests can make snapshots small.
    sample = collect_features(network_of(method), list(data.labeled), unlabeled, tuple(exp.data.patch_size),
                              layer, PER_CLASS, MAX_CASES, device=device, seed=step)
    path = sample.save(snapshot_path(out_dir, step), step=step, method=exp.method.name)
    log.info("step %d: feature snapshot (%d voxels, %s) -> %s", step, len(sample.cls), layer, path)
    return path


def snapshot_hook(trainer: Trainer) -> None:
    """The trainer's step-end hook: a snapshot of the student at every step of ``run.feature_snapshots``."""
    if trainer.is_main and trainer.step in trainer.exp.run.feature_snapshots:
        save_snapshot(trainer.method, trainer.data, trainer.exp, trainer.step, RunDir(trainer.run_dir).features,
                      trainer.device)
        trainer.method.train()


def _unlabeled_cases(exp: Any, split: Any) -> list[Any]:
    from vasseg.data.setup import load_cases

    ids = list(split.unlabeled)[:MAX_CASES]
    return list(load_cases(exp, ids, progress=False)) if ids else []


def load_snapshots(run_dir: Path) -> list[tuple[int, FeatureSample]]:
    """``(step, sample)`` of every snapshot a run saved, by step."""
    out = []
    for path in sorted(RunDir(run_dir).features.glob("step_*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        out.append((int(path.stem.split("_")[1]), FeatureSample.load(path)))
    return out

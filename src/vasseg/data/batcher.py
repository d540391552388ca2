"""Two-stream batches (labeled first, then unlabeled) built where the volumes live.

Sampling follows the lineage's ``TwoStreamBatchSampler``: labeled indices are reshuffled at every
pass (a fresh permutation per epoch, batches taken through it, an incomplete tail dropped);
unlabeled indices come from an endless chain of fresh permutations (a batch may straddle two).
One difference: the lineage restarts the unlabeled chain at every labeled epoch (a new DataLoader
iterator); here the chain simply continues, which gives the same uniform coverage.

Every random number (permutations and augmentation parameters) comes from ONE
``numpy.random.Generator`` (PCG64) owned by the batcher and drawn on the host, so building a batch
never synchronises with the device. `TwoStreamBatcher.state_dict` holds only plain Python types
and restores the exact batch sequence.

Distributed data parallel: pass ``rank`` and ``world_size``. Every rank uses the same seed and so
draws the same permutations and the same augmentation parameters for the whole GLOBAL batch of
``world_size * bs`` samples per stream; rank r keeps samples ``[r*bs, (r+1)*bs)`` of it. Ranks thus
see distinct cases within a step, their generators stay in lock-step (one saved state serves all
ranks), and the union over ranks equals the batch of a single process with ``world_size * bs``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vasseg.data.transforms import AugParams, crop_rot_flip, sample_params
from vasseg.data.volumes import DataError, VolumeSet

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class Batch:
    """One training batch.

    image_l: float32 ``(Bl, C, Px, Py, Pz)`` labeled images.
    label_l: int64 ``(Bl, Px, Py, Pz)`` class ids.
    image_u: float32 ``(Bu, C, Px, Py, Pz)`` unlabeled images, or None.
    ids_l / ids_u: case ids of the samples, for logs and debugging.
    """

    image_l: Tensor
    label_l: Tensor
    image_u: Tensor | None = None
    ids_l: list[str] = field(default_factory=list)
    ids_u: list[str] = field(default_factory=list)

    @property
    def image_all(self) -> Tensor:
        """``(Bl + Bu, C, Px, Py, Pz)``: labeled samples first, then unlabeled (lineage order)."""
        if self.image_u is None:
            return self.image_l
        return torch.cat([self.image_l, self.image_u], dim=0)

    @property
    def labeled_bs(self) -> int:
        return int(self.image_l.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move the tensors to ``device`` in place; returns self."""
        self.image_l = self.image_l.to(device, non_blocking=non_blocking)
        self.label_l = self.label_l.to(device, non_blocking=non_blocking)
        if self.image_u is not None:
            self.image_u = self.image_u.to(device, non_blocking=non_blocking)
        return self

    def to_memory_format(self, memory_format: torch.memory_format) -> Batch:
        """Convert the images to ``memory_format`` (e.g. channels-last 3-D) in place; returns self."""
        self.image_l = self.image_l.contiguous(memory_format=memory_format)
        if self.image_u is not None:
            self.image_u = self.image_u.contiguous(memory_format=memory_format)
        return self


class _IndexStream:
    """Indices into ``n`` items from successive random permutations.

    ``chained=False``: epoch-wise; a take that does not fit in the rest of the permutation starts
    a new one (the tail is dropped, like the lineage's ``grouper``).
    ``chained=True``: an endless chain; a take may span two permutations.
    """

    def __init__(self, n: int, chained: bool) -> None:
        self.n = n
        self.chained = chained
        self.perm: list[int] = []
        self.pos = 0
        self.epoch = 0  # number of permutations drawn

    def _new_perm(self, rng: np.random.Generator) -> None:
        self.perm = [int(i) for i in rng.permutation(self.n)]
        self.pos = 0
        self.epoch += 1

    def take(self, rng: np.random.Generator, count: int) -> list[int]:
        if not self.chained:
            if self.pos + count > len(self.perm):
                self._new_perm(rng)
            out = self.perm[self.pos:self.pos + count]
            self.pos += count
            return out
        out: list[int] = []
        while len(out) < count:
            if self.pos >= len(self.perm):
                self._new_perm(rng)
            grab = self.perm[self.pos:self.pos + count - len(out)]
            out.extend(grab)
            self.pos += len(grab)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"perm": list(self.perm), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        perm = [int(i) for i in state["perm"]]
        if sorted(perm) != (list(range(self.n)) if perm else []):
            raise DataError(f"batcher state: permutation is not one of {self.n} indices")
        self.perm, self.pos, self.epoch = perm, int(state["pos"]), int(state["epoch"])


class TwoStreamBatcher:
    """Endless labeled + unlabeled batches of augmented patches (see the module docstring).

    Args:
        labeled: cases with labels; images ``(C, X, Y, Z)``, labels ``(X, Y, Z)``.
        unlabeled: cases whose labels are ignored, or None.
        labeled_bs, unlabeled_bs: per-rank samples per stream (lineage: 2 and 2).
        patch: crop size ``(Px, Py, Pz)`` in voxels (lineage: 112, 112, 80).
        augment: rotate/flip as the lineage does; False crops only.
        seed: seed of the batcher's PCG64 generator (lineage: 1337).
        rank, world_size: DDP sharding of each global batch.

    Batches are built on the device of the volumes (move the VolumeSets to the GPU first for
    on-device augmentation).
    """

    def __init__(
        self,
        labeled: VolumeSet,
        unlabeled: VolumeSet | None = None,
        labeled_bs: int = 2,
        unlabeled_bs: int = 2,
        patch: Sequence[int] = (112, 112, 80),
        augment: bool = True,
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(patch) != 3 or any(int(p) < 1 for p in patch):
            raise DataError(f"batcher: patch must be 3 positive sizes, got {tuple(patch)}")
        if not 0 <= rank < world_size:
            raise DataError(f"batcher: rank {rank} outside 0..{world_size - 1}")
        if labeled_bs < 1 or unlabeled_bs < 0:
            raise DataError(f"batcher: need labeled_bs >= 1 and unlabeled_bs >= 0, got "
                            f"{labeled_bs}, {unlabeled_bs}")
        if len(labeled) < labeled_bs * world_size:
            raise DataError(f"batcher: {len(labeled)} labeled cases < global labeled batch "
                            f"{labeled_bs * world_size}")
        if missing := [c.id for c in labeled if c.label is None]:
            raise DataError(f"batcher: labeled cases without a label: {', '.join(missing)}")
        if unlabeled is None or len(unlabeled) == 0:
            unlabeled_bs = 0
        self.labeled = labeled
        self.unlabeled = unlabeled if unlabeled_bs else None
        self.labeled_bs, self.unlabeled_bs = int(labeled_bs), int(unlabeled_bs)
        self.patch = (int(patch[0]), int(patch[1]), int(patch[2]))
        self.augment, self.seed = bool(augment), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._lab = _IndexStream(len(labeled), chained=False)
        self._unl = _IndexStream(len(unlabeled) if self.unlabeled is not None else 0, chained=True)
        self.step = 0
        # Shapes are host metadata: sampling parameters never touches device memory.
        self._shapes_l = [c.shape for c in labeled]
        self._shapes_u = [c.shape for c in self.unlabeled] if self.unlabeled is not None else []

    @property
    def steps_per_epoch(self) -> int:
        """Batches per pass over the labeled cases."""
        return len(self.labeled) // (self.labeled_bs * self.world_size)

    @property
    def epoch(self) -> int:
        """Labeled passes started so far."""
        return self._lab.epoch

    def _params(self, shapes: list[tuple[int, int, int]], idx: list[int]) -> list[AugParams]:
        return [sample_params(shapes[i], self.patch, self.rng, self.augment) for i in idx]

    def _my_slice(self, items: list[Any], bs: int) -> list[Any]:
        return items[self.rank * bs:(self.rank + 1) * bs]

    def _crops(self, volumes: VolumeSet, idx: list[int], params: list[AugParams],
               with_label: bool) -> tuple[Tensor, Tensor | None]:
        images, labels = [], []
        for i, p in zip(idx, params):
            case = volumes[i]
            img, lab = crop_rot_flip(case.image, case.label if with_label else None,
                                     self.patch, *p)
            images.append(img)
            labels.append(lab)
        image = torch.stack(images)
        label = torch.stack(labels).long() if with_label else None
        return image, label

    def next(self) -> Batch:
        """The next batch; draws permutations as needed, then every sample's parameters."""
        g_l, g_u = self.labeled_bs * self.world_size, self.unlabeled_bs * self.world_size
        idx_l = self._lab.take(self.rng, g_l)
        idx_u = self._unl.take(self.rng, g_u) if g_u else []
        # Parameters for the whole global batch keep all ranks' generators in lock-step.
        par_l, par_u = self._params(self._shapes_l, idx_l), self._params(self._shapes_u, idx_u)
        idx_l, par_l = self._my_slice(idx_l, self.labeled_bs), self._my_slice(par_l, self.labeled_bs)
        image_l, label_l = self._crops(self.labeled, idx_l, par_l, with_label=True)
        image_u, ids_u = None, []
        if self.unlabeled is not None:
            idx_u = self._my_slice(idx_u, self.unlabeled_bs)
            par_u = self._my_slice(par_u, self.unlabeled_bs)
            image_u, _ = self._crops(self.unlabeled, idx_u, par_u, with_label=False)
            ids_u = [self.unlabeled[i].id for i in idx_u]
        self.step += 1
        assert label_l is not None
        return Batch(image_l, label_l, image_u, [self.labeled[i].id for i in idx_l], ids_u)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next()

    def _config(self) -> dict[str, Any]:
        return {
            "n_labeled": len(self.labeled),
            "n_unlabeled": len(self.unlabeled) if self.unlabeled is not None else 0,
            "labeled_bs": self.labeled_bs,
            "unlabeled_bs": self.unlabeled_bs,
            "world_size": self.world_size,
            "patch": list(self.patch),
            "augment": self.augment,
        }

    def state_dict(self) -> dict[str, Any]:
        """Generator state, permutation positions and step as plain Python types.

        Survives ``torch.save`` + ``torch.load(weights_only=True)``. Identical on all ranks.
        """
        return {
            "version": STATE_VERSION,
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "labeled": self._lab.state_dict(),
            "unlabeled": self._unl.state_dict(),
            "step": self.step,
            "config": self._config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`; the next batch is the one the saved batcher would have made."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"batcher state: version {state.get('version')} != {STATE_VERSION}")
        config = self._config()
        if diff := sorted(k for k in config if state["config"].get(k) != config[k]):
            raise DataError(f"batcher state: saved with different {', '.join(diff)} "
                            f"(saved {[state['config'].get(k) for k in diff]}, "
                            f"now {[config[k] for k in diff]})")
        rng_state = copy.deepcopy(state["rng"])
        if rng_state.get("bit_generator") != "PCG64":
            raise DataError(f"batcher state: generator {rng_state.get('bit_generator')} != PCG64")
        self.rng.bit_generator.state = rng_state
        self._lab.load_state_dict(state["labeled"])
        self._unl.load_state_dict(state["unlabeled"])
        self.step = int(state["step"])

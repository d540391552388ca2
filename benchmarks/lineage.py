"""The lineage's way, re-implemented faithfully for timing comparisons (not used by vasseg itself).

* Data: UA-MT's ``LAHeart`` dataset + ``RandomRotFlip`` + ``RandomCrop`` + ``ToTensor`` applied per
  sample in NumPy inside a ``DataLoader`` (4 workers, pinned memory), batches drawn by the
  two-stream sampler; the batch is copied to the device every step.
* Test: ``test_single_case``: one window at a time, NumPy accumulation of the softmax on the host.
* Metrics: medpy ``binary.dc/jc/hd95/asd`` on the full arrays.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vasseg.data.batcher import Batch
from vasseg.data.transforms import lineage_random_crop, lineage_rot_flip
from vasseg.data.volumes import VolumeSet


class LineageDataset(Dataset):
    """Per-sample NumPy augmentation (rotate/flip, pad + random crop), as the lineage's loader."""

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, int, int]) -> None:
        self.volumes, self.patch = volumes, patch

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng()  # the lineage uses the global NumPy RNG of each worker
        image, label = self.volumes[i]
        image, label = lineage_rot_flip(image, label, rng)
        image, label = lineage_random_crop(image, label, self.patch, rng)
        return torch.from_numpy(np.ascontiguousarray(image)[None].astype(np.float32)), \
            torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))


class TwoStreamBatchSampler(Sampler):
    """Labeled indices reshuffled every pass; unlabeled from an endless chain of permutations."""

    def __init__(self, n_labeled: int, n_unlabeled: int, labeled_bs: int, unlabeled_bs: int) -> None:
        self.n_l, self.n_u, self.bs_l, self.bs_u = n_labeled, n_unlabeled, labeled_bs, unlabeled_bs

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            primary = np.random.permutation(self.n_l)
            secondary = itertools.chain.from_iterable(np.random.permutation(self.n_u) for _ in itertools.count())
            for i in range(0, self.n_l - self.bs_l + 1, self.bs_l):
                first = list(primary[i:i + self.bs_l])
                second = [self.n_l + int(next(secondary)) for _ in range(self.bs_u)]
                yield first + second

    def __len__(self) -> int:
        return 10**9


class LineageBatcher:
    """Drop-in for :class:`TwoStreamBatcher` that feeds batches the lineage's way."""

    def __init__(self, labeled: VolumeSet, unlabeled: VolumeSet | None, labeled_bs: int, unlabeled_bs: int,
                 patch: tuple[int, int, int], workers: int = 4) -> None:
        def arrays(vs: VolumeSet) -> list[tuple[np.ndarray, np.ndarray]]:
            out = []
            for c in vs:
                label = c.label.cpu().numpy() if c.label is not None else np.zeros(c.shape, np.uint8)
                out.append((c.image[0].cpu().numpy(), label))
            return out

        vols = arrays(labeled) + (arrays(unlabeled) if unlabeled is not None else [])
        n_u = len(unlabeled) if unlabeled is not None else 0
        self.labeled_bs = labeled_bs
        sampler = TwoStreamBatchSampler(len(labeled), n_u, labeled_bs, unlabeled_bs if n_u else 0)
        self.loader = iter(DataLoader(LineageDataset(vols, patch), batch_sampler=sampler,
                                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                                      persistent_workers=workers > 0))

    def next(self) -> Batch:
        image, label = next(self.loader)
        n = self.labeled_bs
        return Batch(image_l=image[:n], label_l=label[:n], image_u=image[n:] if image.shape[0] > n else None)

    def state_dict(self) -> dict:
        return {}


def lineage_sliding_window(net: torch.nn.Module, image: np.ndarray, patch: tuple[int, int, int],
                           stride: tuple[int, int, int], num_classes: int, device: torch.device) -> np.ndarray:
    """UA-MT's ``test_single_case``: one window per forward, host-side NumPy accumulation."""
    w, h, d = image.shape
    pads = [max(p - s, 0) for p, s in zip(patch, image.shape)]
    if any(pads):
        image = np.pad(image, [(p // 2, p - p // 2) for p in pads], mode="constant")
    ww, hh, dd = image.shape
    counts = [math.ceil((s - p) / st) + 1 for s, p, st in zip(image.shape, patch, stride)]
    score = np.zeros((num_classes, ww, hh, dd), np.float32)
    cnt = np.zeros((ww, hh, dd), np.float32)
    for x in range(counts[0]):
        xs = min(stride[0] * x, ww - patch[0])
        for y in range(counts[1]):
            ys = min(stride[1] * y, hh - patch[1])
            for z in range(counts[2]):
                zs = min(stride[2] * z, dd - patch[2])
                crop = image[xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]]
                with torch.no_grad():
                    t = torch.from_numpy(np.ascontiguousarray(crop)[None, None]).float().to(device)
                    y_ = torch.softmax(net(t).logits, dim=1).cpu().numpy()[0]
                score[:, xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += y_
                cnt[xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += 1
    score = score / cnt[None]
    label = np.argmax(score, axis=0)
    if any(pads):
        sl = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, (w, h, d)))
        label = label[sl]
    return label

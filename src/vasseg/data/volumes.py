"""In-memory volumes: one `Case` per scan, a `VolumeSet` of cases, and resampling helpers.

Conventions (shared by every reader in `vasseg.data`):
- spatial axes keep the array order of the file (LA h5: x, y, z);
- image: float32 tensor ``(C, X, Y, Z)`` with C = 1, intensities z-scored per volume;
- label: uint8 tensor ``(X, Y, Z)`` with class ids ``0 .. num_classes - 1``;
- spacing: voxel size in mm, one value per spatial axis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vasseg.errors import DataError  # noqa: F401 - any data failure; imported from here by callers

log = logging.getLogger(__name__)

Shape3 = tuple[int, int, int]
Spacing = tuple[float, float, float]


@dataclass
class Case:
    """One scan held in memory.

    Attributes:
        id: case identifier (the LA folder name, "phantom_000", ...).
        image: float32 ``(C, X, Y, Z)``.
        label: uint8 ``(X, Y, Z)`` or None for an unlabeled / test-only case.
        spacing: voxel size in mm along (x, y, z) of ``image``.
        source: the file the case was read from ("" when generated in memory).
        native_label: uint8 ``(X0, Y0, Z0)``, the label at the file's resolution when ``image``
            was resampled (so evaluation can run at native resolution); None otherwise.
        native_shape: spatial shape ``(X0, Y0, Z0)`` in the file; equals the image's spatial
            shape when nothing was resampled.
        native_spacing: voxel size in mm at native resolution.
    """

    id: str
    image: Tensor
    label: Tensor | None
    spacing: Spacing
    source: str = ""
    native_label: Tensor | None = None
    native_shape: Shape3 | None = None
    native_spacing: Spacing | None = None

    @property
    def shape(self) -> Shape3:
        """Spatial shape ``(X, Y, Z)`` of ``image`` in voxels."""
        x, y, z = self.image.shape[1:]
        return (int(x), int(y), int(z))

    @property
    def where(self) -> str:
        """The prefix of error messages: the source path if known, else the case id."""
        return self.source or f"case {self.id}"

    def eval_label(self) -> Tensor | None:
        """The reference label at native resolution: ``native_label`` if kept, else ``label``."""
        return self.native_label if self.native_label is not None else self.label

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Case:
        """Move every tensor of the case to ``device`` in place; returns self."""
        self.image = self.image.to(device, non_blocking=non_blocking)
        if self.label is not None:
            self.label = self.label.to(device, non_blocking=non_blocking)
        if self.native_label is not None:
            self.native_label = self.native_label.to(device, non_blocking=non_blocking)
        return self


class VolumeSet:
    """An ordered list of `Case`s that live on one device."""

    def __init__(self, cases: Sequence[Case] = ()) -> None:
        self.cases: list[Case] = list(cases)
        ids = self.ids
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(f"VolumeSet: duplicate case ids: {', '.join(dup)}")

    @property
    def ids(self) -> list[str]:
        """Case ids in order."""
        return [c.id for c in self.cases]

    @property
    def device(self) -> torch.device | None:
        """Device of the first case's image (None for an empty set)."""
        return self.cases[0].image.device if self.cases else None

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Case:
        return self.cases[index]

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __repr__(self) -> str:
        return f"VolumeSet({len(self)} cases, device={self.device})"

    def by_id(self, case_id: str) -> Case:
        """The case named ``case_id``; DataError if absent."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise DataError(f"VolumeSet: no case with id {case_id!r}")

    def subset(self, ids: Sequence[str]) -> VolumeSet:
        """A new set holding the named cases (shared tensors), in the order of ``ids``."""
        return VolumeSet([self.by_id(i) for i in ids])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VolumeSet:
        """Move every case to ``device`` in place; returns self."""
        for case in self.cases:
            case.to(device, non_blocking=non_blocking)
        return self

    def nbytes(self) -> int:
        """Bytes held by all tensors of the set."""
        total = 0
        for c in self.cases:
            for t in (c.image, c.label, c.native_label):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def validate(self, num_classes: int) -> VolumeSet:
        """Check dtypes, shapes, finite intensities and label range of every case; returns self.

        Raises DataError naming the case and the problem. Runs once at load time, so the host
        synchronisation it costs on a GPU set is irrelevant.
        """
        for case in self.cases:
            validate_case(case, num_classes)
        return self


def validate_case(case: Case, num_classes: int) -> None:
    """Check one case (see `VolumeSet.validate`)."""
    img = case.image
    if img.ndim != 4 or img.dtype != torch.float32:
        raise DataError(f"{case.where}: image must be float32 (C, X, Y, Z), got {img.dtype} "
                        f"{tuple(img.shape)}")
    if not bool(torch.isfinite(img).all()):
        bad = int((~torch.isfinite(img)).sum())
        raise DataError(f"{case.where}: image of case {case.id} holds {bad} NaN/inf values")
    for name, lab in (("label", case.label), ("native_label", case.native_label)):
        if lab is not None:
            _validate_label(case, name, lab, num_classes)
    if case.label is not None and tuple(case.label.shape) != case.shape:
        raise DataError(f"{case.where}: label shape {tuple(case.label.shape)} != image shape "
                        f"{case.shape} in case {case.id}")


def _validate_label(case: Case, name: str, lab: Tensor, num_classes: int) -> None:
    if lab.ndim != 3 or lab.dtype != torch.uint8:
        raise DataError(f"{case.where}: {name} must be uint8 (X, Y, Z), got {lab.dtype} "
                        f"{tuple(lab.shape)}")
    bad = torch.unique(lab[lab >= num_classes])
    if bad.numel():
        values = ", ".join(str(int(v)) for v in bad[:10].tolist())
        raise DataError(f"{case.where}: {name} of case {case.id} holds values {values} outside "
                        f"0..{num_classes - 1}")


def min_training_extent(patch: Sequence[int]) -> Shape3:
    """The smallest volume extent per axis that training accepts for ``patch``: half the patch.

    Zero padding brings any smaller volume up to the patch, but below half the patch most of
    every crop along that axis is padding (all of it for an empty axis): the network would learn
    the padding, not the scan. That is the line drawn here; sliding-window inference pads any
    size and has no such limit.
    """
    x, y, z = ((int(p) + 1) // 2 for p in patch)
    return (x, y, z)


def check_training_cases(cases: VolumeSet, patch: Sequence[int], augment: bool,
                         labeled: bool) -> None:
    """Refuse cases that training cannot use; DataError naming the case, the file and the rule.

    Every case must be at least `min_training_extent` on every axis (in both x-y orientations
    when augmentation rotates by 90 degrees); a labeled case must hold some foreground (an
    all-background label map teaches nothing and is almost always a wrong or empty file).
    """
    need = min_training_extent(patch)
    for case in cases:
        shapes = [case.shape] + ([(case.shape[1], case.shape[0], case.shape[2])] if augment else [])
        if any(d < n for shape in shapes for d, n in zip(shape, need)):
            raise DataError(
                f"{case.where}: volume {case.shape} of case {case.id} is too small for "
                f"data.patch_size {tuple(patch)}: every axis needs at least half the patch "
                f"{need}{' (x and y either way round: augmentation rotates)' if augment else ''}; "
                f"use a smaller data.patch_size (or a larger data.scale) or drop the case"
            )
        if labeled and (case.label is None or not bool(case.label.any())):
            raise DataError(f"{case.where}: label of labeled case {case.id} has no foreground "
                            f"(every voxel is background)")


def scaled_shape(shape: Sequence[int], scale: float) -> Shape3:
    """``round(dim * scale)`` per axis, at least 1 voxel."""
    x, y, z = (max(1, int(round(d * scale))) for d in shape)
    return (x, y, z)


def resize_image(image: Tensor, size: Shape3) -> Tensor:
    """Trilinear resampling of a float image ``(C, X, Y, Z)`` to spatial ``size`` (voxels).

    ``align_corners=False``: voxel centres map as in a physical resampling that keeps the field
    of view, so the new spacing is ``spacing * old_dim / new_dim``.
    """
    out = F.interpolate(image[None].float(), size=size, mode="trilinear", align_corners=False)
    return out[0].contiguous()


def resize_label(label: Tensor, size: Shape3, num_classes: int) -> Tensor:
    """Resample a label map ``(X, Y, Z)`` uint8 to ``size`` by argmax of its interpolated one-hot.

    Nearest neighbour samples a corner of each output voxel and drops thin structures;
    interpolating each class's indicator trilinearly (at scale 1/2 the mean of each 2x2x2 block)
    and taking the argmax keeps a structure wherever it covers half of the footprint. Exact ties
    (frequent at scale 1/2: 4 of 8 voxels) go to the HIGHER class id, i.e. to the foreground, so a
    two-voxel-thick structure survives halving at any offset. Classes are processed one at a time
    (running max) so memory stays O(volume) for many classes.
    """
    best_score: Tensor | None = None
    best = torch.zeros(size, dtype=torch.uint8, device=label.device)
    for c in range(num_classes):
        onehot = (label == c).to(torch.float32)[None, None]
        score = F.interpolate(onehot, size=size, mode="trilinear", align_corners=False)[0, 0]
        if best_score is None:
            best_score = score
            continue
        better = score >= best_score  # ties to the foreground (see docstring)
        best[better] = c
        best_score = torch.maximum(best_score, score)
    return best


def resized_argmax(probs: Tensor, shape: Sequence[int]) -> Tensor:
    """Argmax of ``(K, X, Y, Z)`` probabilities trilinearly resized to ``shape``: uint8 labels.

    One class at a time with a running maximum, so memory stays O(voxels) for many classes on a
    full-resolution CT; equal to ``resize_probs(probs, shape).argmax(0)`` (ties: lowest class).
    """
    size = tuple(int(s) for s in shape)
    if tuple(probs.shape[1:]) == size:
        return probs.argmax(0).to(torch.uint8)
    best = torch.zeros(size, dtype=torch.uint8, device=probs.device)
    best_score: Tensor | None = None
    for cls in range(probs.shape[0]):
        score = F.interpolate(probs[cls][None, None].float(), size=size, mode="trilinear",
                              align_corners=False)[0, 0]
        if best_score is not None:
            best[score > best_score] = cls
            score = torch.maximum(best_score, score)
        best_score = score
    return best


def rescale_case(case: Case, scale: float, num_classes: int) -> Case:
    """Down- (or up-) sample a case by ``scale``; keeps the native label for evaluation.

    Spacing becomes ``spacing * old_dim / new_dim`` per axis (= spacing / scale up to the
    rounding of the new size), so physical extents and mm metrics stay right.
    """
    if scale == 1.0:
        return case
    native = case.shape
    size = scaled_shape(native, scale)
    spacing = tuple(s * n / m for s, n, m in zip(case.spacing, native, size))
    label = None if case.label is None else resize_label(case.label, size, num_classes)
    return Case(
        id=case.id,
        image=resize_image(case.image, size),
        label=label,
        spacing=(spacing[0], spacing[1], spacing[2]),
        source=case.source,
        native_label=case.label,
        native_shape=native,
        native_spacing=case.spacing,
    )

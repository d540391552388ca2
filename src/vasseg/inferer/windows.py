"""How a volume is covered by forward passes: the lineage's dense windows, nnU-Net's Gaussian-weighted
overlap, or the whole volume at once.

Modes (:class:`Windows`):

- ``stride``: the lineage's windows at an explicit stride (in the model's voxels), probabilities
  averaged (:func:`vasseg.inferer.sliding.sliding_window_probs`). ``vasseg evaluate`` and
  ``vasseg predict`` use it with ``eval.stride`` (the paper protocol) unless told otherwise.
- ``overlap``: nnU-Net's sliding window. Along each axis ``n = ceil((dim - patch) / (patch * (1 -
  overlap))) + 1`` windows spread evenly (``round(j * (dim - patch) / (n - 1))``, the last one flush
  with the border), every window's probabilities weighted by a Gaussian importance map centred on
  the patch with ``sigma = patch / 8`` per axis (nnU-Net's ``compute_gaussian``, maximum 1), then
  divided by the summed weights.
- ``whole``: one forward pass on the volume zero-padded (symmetrically, like the lineage's padding)
  to a multiple of 16 per axis, the VNet's four halvings. The VNet is fully convolutional, so
  this sees the whole case at once. When the estimated activation memory exceeds what the device
  has free (CPU: half of ``MemAvailable``; CUDA: 80 % of the free memory, or an out-of-memory
  error) it falls back to windows (``overlap``, or ``stride`` when one was given) and logs it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from vasseg.inferer.sliding import (
    Predictor,
    Triple,
    accumulate_windows,
    crop_volume,
    pad_amounts,
    pad_volume,
    sliding_window_probs,
)
from vasseg.inferer.precision import describe_precision, with_precision
from vasseg.errors import ConfigError

log = logging.getLogger(__name__)

WindowMode = Literal["stride", "overlap", "whole"]
MULTIPLE = 16  # the VNet halves every axis four times
SIGMA_SCALE = 1.0 / 8  # nnU-Net's Gaussian: sigma = patch / 8 per axis
# Peak host memory of one VNet forward without gradients, per voxel and per base filter: measured
# 22-24 B at filters 16 in fp32 (362-377 B/voxel; bf16 195-271 B), with a margin.
BYTES_PER_VOXEL_FILTER = 32


@dataclass(frozen=True)
class Windows:
    """How :func:`infer_probs` covers a volume (see the module docstring).

    Attributes:
        mode: ``stride``, ``overlap`` or ``whole``.
        stride: ``stride`` mode (and ``whole``'s fallback when set): voxels ``(sx, sy, sz)``;
            None takes the config's ``eval.stride``.
        overlap: ``overlap`` mode (and ``whole``'s fallback): fraction of the patch shared by
            neighbouring windows, in ``[0, 1)``.
    """

    mode: WindowMode = "whole"
    stride: tuple[int, int, int] | None = None
    overlap: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("stride", "overlap", "whole"):
            raise ConfigError(f"window mode {self.mode!r}: choose stride, overlap or whole")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"--overlap {self.overlap:g}: must lie in [0, 1)")
        if self.stride is not None and (len(self.stride) != 3 or any(int(s) < 1 for s in self.stride)):
            raise ConfigError(f"--stride {tuple(self.stride)}: must be three positive integers")

    def describe(self, default_stride: Triple) -> str:
        """One phrase for logs and reports, e.g. ``overlap 0.5, Gaussian weighting``."""
        if self.mode == "stride":
            return "stride " + "x".join(str(int(s)) for s in (self.stride or default_stride))
        if self.mode == "overlap":
            return f"overlap {self.overlap:g}, Gaussian weighting (sigma = patch/8)"
        fallback = Windows("stride" if self.stride else "overlap", self.stride, self.overlap)
        return f"whole volume (padded to a multiple of {MULTIPLE}; fallback: {fallback.describe(default_stride)})"


def describe_inference(windows: Windows, default_stride: Triple, precision: str, device: torch.device) -> str:
    """``windows: ...; precision: ...``, the line logs and evaluation summaries carry."""
    return f"windows: {windows.describe(default_stride)}; precision: {describe_precision(precision, device)}"


# Chosen from benchmarks/RESULTS.md §12: on two finished CPU-scale LA models (25 validation cases
# each) no faster mode kept the label maps within Dice 0.98 of the dense windows (overlap 0.5:
# 0.80-0.81, whole volume: 0.80-0.84, twice eval.stride: 0.93-0.95) and mean teacher lost Dice
# against the ground truth in every one (down to -20 pp on a case), so prediction keeps the dense
# windows too; its speed comes from bf16 (--precision auto). The fast modes are opt-in.
PREDICT_DEFAULT = Windows("stride")
EVALUATE_DEFAULT = Windows("stride")  # eval.stride: the paper protocol


def windows_from_options(window: str | None, stride: Triple | None, overlap: float | None,
                         default: Windows) -> Windows:
    """The windows of the CLI flags ``--window``, ``--stride``, ``--overlap`` (None: not given)."""
    if stride is not None and overlap is not None:
        raise ConfigError("--stride and --overlap: give one of them")
    stride_t = tuple(int(s) for s in stride) if stride is not None else None
    frac = 0.5 if overlap is None else float(overlap)
    if window == "whole":
        return Windows("whole", stride_t, frac)  # type: ignore[arg-type]
    if stride_t is not None:
        return Windows("stride", stride_t)  # type: ignore[arg-type]
    if overlap is not None:
        return Windows("overlap", overlap=frac)
    if window == "sliding":
        return default if default.mode != "whole" else Windows("overlap", overlap=frac)
    if window is not None:
        raise ConfigError(f"--window {window!r}: choose sliding or whole")
    return default


# ---------------------------------------------------------------------------------------------
# overlap mode
# ---------------------------------------------------------------------------------------------


def overlap_starts(dim: int, patch: int, overlap: float) -> list[int]:
    """nnU-Net's evenly spread window starts along one axis of (padded) size ``dim`` >= ``patch``."""
    if dim < patch:
        raise ValueError(f"axis of size {dim} is smaller than the patch {patch}; pad it first")
    target = max(patch * (1.0 - overlap), 1.0)
    count = math.ceil((dim - patch) / target) + 1
    if count == 1:
        return [0]
    step = (dim - patch) / (count - 1)
    return [int(round(step * j)) for j in range(count)]


def gaussian_1d(size: int, device: torch.device | str | None = None) -> Tensor:
    """``exp(-(i - size // 2)^2 / (2 sigma^2))`` with ``sigma = size / 8``, float32 ``(size,)``, maximum 1."""
    sigma = size * SIGMA_SCALE
    i = torch.arange(size, dtype=torch.float64, device=device)
    return torch.exp(-((i - size // 2) ** 2) / (2 * sigma**2)).to(torch.float32)


def gaussian_weight(patch: Triple, device: torch.device | str | None = None) -> Tensor:
    """nnU-Net's importance map ``(px, py, pz)``: the outer product of three :func:`gaussian_1d`
    (its smallest value, exp(-24) in a corner, stays a positive float32, so no voxel weighs 0)."""
    gx, gy, gz = (gaussian_1d(int(p), device) for p in patch)
    return gx[:, None, None] * gy[None, :, None] * gz[None, None, :]


def gaussian_probs(predict: Predictor, image: Tensor, patch: Triple, overlap: float = 0.5, num_classes: int = 2,
                   batch_size: int = 4, device: torch.device | str | None = None) -> Tensor:
    """Gaussian-weighted sliding window: ``(C, X, Y, Z)`` -> ``(num_classes, X, Y, Z)`` float32."""
    device = image.device if device is None else torch.device(device)
    shape = tuple(int(s) for s in image.shape[1:])
    pads = pad_amounts(shape, patch)
    volume = pad_volume(image.to(device=device, dtype=torch.float32), pads)
    padded = tuple(int(s) for s in volume.shape[1:])
    per_axis = [overlap_starts(d, int(p), overlap) for d, p in zip(padded, patch)]
    starts = [(x, y, z) for x in per_axis[0] for y in per_axis[1] for z in per_axis[2]]
    weight = gaussian_weight(patch, device)
    score = accumulate_windows(predict, volume, starts, patch, num_classes, batch_size, weight)
    # The weights are an outer product over a Cartesian grid: their sum is one too.
    sums = []
    for axis, (d, p) in enumerate(zip(padded, patch)):
        total = torch.zeros(d, dtype=torch.float32, device=device)
        g = gaussian_1d(int(p), device)
        for s in per_axis[axis]:
            total[s : s + int(p)] += g
        sums.append(total)
    score /= sums[0][:, None, None] * sums[1][None, :, None] * sums[2][None, None, :]
    return crop_volume(score, pads, shape).contiguous()


# ---------------------------------------------------------------------------------------------
# whole-volume mode
# ---------------------------------------------------------------------------------------------


def whole_pads(shape: Triple) -> tuple[tuple[int, int], ...]:
    """Symmetric zero padding bringing every axis up to a multiple of :data:`MULTIPLE`."""
    target = [-(-int(s) // MULTIPLE) * MULTIPLE for s in shape]
    return pad_amounts(shape, target)


def whole_volume_bytes(padded: Triple, filters: int) -> int:
    """Estimated peak memory of one forward pass on a ``padded`` volume (see BYTES_PER_VOXEL_FILTER)."""
    return math.prod(int(s) for s in padded) * filters * BYTES_PER_VOXEL_FILTER


def free_memory(device: torch.device) -> int:
    """Bytes a forward pass may use: 80 % of CUDA's free memory, half of the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.8)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 << 30  # no /proc (macOS, Windows): assume 4 GiB are free


def whole_probs(predict: Predictor, image: Tensor, num_classes: int, device: torch.device) -> Tensor:
    """One forward pass: ``(C, X, Y, Z)`` -> ``(num_classes, X, Y, Z)`` float32 on ``device``."""
    shape = tuple(int(s) for s in image.shape[1:])
    pads = whole_pads(shape)
    volume = pad_volume(image.to(device=device, dtype=torch.float32), pads)
    probs = predict(volume[None])
    expected = (1, num_classes, *volume.shape[1:])
    if tuple(probs.shape) != expected:
        raise ValueError(f"predict returned shape {tuple(probs.shape)}, expected {expected}")
    return crop_volume(probs[0].float(), pads, shape).contiguous()


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def infer_probs(predict: Predictor, image: Tensor, patch: Triple, windows: Windows, default_stride: Triple,
                num_classes: int = 2, batch_size: int = 4, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32, filters: int = 16, channels_last: bool = False) -> Tensor:
    """Class probabilities ``(num_classes, X, Y, Z)`` float32 of ``image`` ``(C, X, Y, Z)``.

    Args:
        predict: windows ``(B, C, *size)`` -> probabilities ``(B, num_classes, *size)``.
        patch: the window size in voxels (the ``stride``/``overlap`` modes).
        windows: how the volume is covered (:class:`Windows`).
        default_stride: the stride of ``stride`` mode when ``windows.stride`` is None.
        dtype: compute precision (float32, or bfloat16 under autocast); the result is float32.
        filters: the VNet's base filters (the whole-volume memory estimate).
        channels_last: hand ``predict`` channels-last 3-D inputs (oneDNN's and cuDNN's faster
            layout: a 2-core EPYC ran a whole LA volume in 0.65 s instead of 0.92-1.45 s in bf16).
    """
    device = image.device if device is None else torch.device(device)
    run = with_precision(_channels_last(predict) if channels_last else predict, device, dtype)
    if windows.mode == "whole":
        probs = _try_whole(run, image, num_classes, device, filters)
        if probs is not None:
            return probs
        windows = Windows("stride" if windows.stride else "overlap", windows.stride, windows.overlap)
    if windows.mode == "overlap":
        return gaussian_probs(run, image, patch, windows.overlap, num_classes, batch_size, device)
    stride = windows.stride or tuple(int(s) for s in default_stride)
    return sliding_window_probs(run, image, patch, stride, num_classes, batch_size, device, out_device=device)


def _channels_last(predict: Predictor) -> Predictor:
    def run(x: Tensor) -> Tensor:
        return predict(x.contiguous(memory_format=torch.channels_last_3d))

    return run


def _try_whole(run: Predictor, image: Tensor, num_classes: int, device: torch.device,
               filters: int) -> Tensor | None:
    shape = tuple(int(s) for s in image.shape[1:])
    padded = tuple(s + b + a for s, (b, a) in zip(shape, whole_pads(shape)))
    need, free = whole_volume_bytes(padded, filters), free_memory(device)
    if need > free:
        log.warning("whole-volume inference of %s would need ~%.1f GiB (%.1f GiB free): using windows",
                    "x".join(map(str, padded)), need / 2**30, free / 2**30)
        return None
    try:
        return whole_probs(run, image, num_classes, device)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("whole-volume inference of %s ran out of device memory: using windows", "x".join(map(str, padded)))
        return None

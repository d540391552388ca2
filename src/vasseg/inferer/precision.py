"""Inference and training precision: which devices compute bf16 natively, and autocast around a forward.

``auto`` means bf16 where the hardware has it and fp32 elsewhere:

- CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and later);
- CPU: bf16 when the processor's instruction set has bf16 arithmetic, read from the kernel's
  feature flags (x86: ``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``; arm64: ``bf16``;
  macOS: ``hw.optional.arm.FEAT_BF16``). Without them oneDNN still runs bf16, emulated and slower
  than fp32, so a CPU whose flags cannot be read counts as not capable. PyTorch's own
  ``torch.backends.cpu.get_cpu_capability()`` (``AVX2``, ``AVX512``, ...) names the vector width of
  its kernels, not bf16 support, so it is recorded in the log line but does not decide.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from vasseg.errors import ConfigError

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first processor in ``cpuinfo`` (x86 ``flags``, arm64 ``Features``)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_reason(cpuinfo: Path = CPUINFO) -> str | None:
    """Why this CPU computes bf16 natively (the flag found), or None when it does not (or cannot tell)."""
    flags = cpu_flags(cpuinfo)
    found = [f for f in X86_BF16_FLAGS if f in flags]
    if found:
        return "+".join(found)
    if "bf16" in flags and platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64 bf16"
    if platform.system() == "Darwin" and _sysctl("hw.optional.arm.FEAT_BF16") == "1":
        return "FEAT_BF16"
    return None


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this process's CPU has native bf16 arithmetic (cached: the CPU does not change)."""
    return cpu_bf16_reason() is not None


def device_supports_bf16(device: torch.device) -> bool:
    """bf16 natively on ``device``: a bf16-capable CUDA GPU, or a CPU with bf16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` / ``fp32`` / ``bf16`` -> the compute dtype on ``device`` (float32 or bfloat16)."""
    if spec not in PRECISIONS:
        raise ConfigError(f"precision {spec!r}: choose one of {', '.join(PRECISIONS)}")
    if spec == "fp32":
        return torch.float32
    if spec == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device_supports_bf16(device) else torch.float32


def describe_precision(spec: str, device: torch.device) -> str:
    """One phrase for the log: the dtype chosen and why (``bf16 (auto: CPU has avx512_bf16)``)."""
    name = precision_name(resolve_precision(spec, device))
    if spec != "auto":
        return name
    if device.type == "cpu":
        reason = cpu_bf16_reason()
        capability = torch.backends.cpu.get_cpu_capability()
        why = f"CPU has {reason}" if reason else f"CPU has no bf16 instructions (PyTorch kernels: {capability})"
    elif device.type == "cuda":
        why = "CUDA device supports bf16" if name == "bf16" else "CUDA device without bf16"
    else:
        why = f"{device.type} device"
    return f"{name} (auto: {why})"


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` (also for None: no autocast)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def with_precision(predict: Callable[[Tensor], Tensor], device: torch.device,
                   dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """``predict`` (windows -> probabilities) run under autocast; the probabilities come back float32."""
    if dtype == torch.float32:
        return predict

    def run(windows: Tensor) -> Tensor:
        with autocast(device, dtype):
            probs = predict(windows)
        return probs.float()

    return run


# ---------------------------------------------------------------------------------------------
# bf16 training on a CPU
# ---------------------------------------------------------------------------------------------

TINY_AXIS = 2  # voxels: a convolution input with an axis this small runs in fp32 under CPU bf16


class TinyFp32Conv3d(torch.nn.Conv3d):
    """A ``Conv3d`` that leaves CPU bf16 autocast for inputs with an axis of <= ``TINY_AXIS`` voxels.

    PyTorch 2.13's oneDNN bf16 weight gradient of a 3x3x3 convolution returns NaN now and then when
    the input has an axis of 2 voxels (measured on a 2-core EPYC with avx512_bf16: 1-8 of 20
    backward passes at 2x2x1, 2x2x2, 2x4x4 with 16-128 channels; none in 30 at the CPU-scale
    protocol's 3x3x2 ... 48x48x32), which is where the VNet's deepest levels land with small
    patches. Those layers cost next to nothing, so they run in fp32. Same parameters and state
    dict as ``nn.Conv3d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and min(x.shape[2:]) <= TINY_AXIS:
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def guard_cpu_bf16_convs(module: torch.nn.Module) -> int:
    """Make every plain ``nn.Conv3d`` in ``module`` a :class:`TinyFp32Conv3d` (in place); returns how many.

    The class is swapped rather than the modules replaced, so parameters, optimizer state, EMA
    pairs and state-dict keys stay what they are."""
    count = 0
    for child in module.modules():
        if type(child) is torch.nn.Conv3d:
            child.__class__ = TinyFp32Conv3d
            count += 1
    return count


def prepare_cpu_bf16(module: torch.nn.Module, dtype: torch.dtype | None, device: torch.device) -> None:
    """Before training under bf16 autocast on a CPU: guard the convolutions, say what runs how."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return
    count = guard_cpu_bf16_convs(module)
    reason = cpu_bf16_reason()
    if reason is None:
        log.warning("train.amp=bf16 on a CPU without bf16 instructions: oneDNN emulates bf16, slower than fp32")
    log.info("bf16 autocast on the CPU (%s); %d convolutions run in fp32 on inputs with an axis of <= %d voxels",
             reason or "emulated", count, TINY_AXIS)

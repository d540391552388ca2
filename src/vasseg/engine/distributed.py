"""Multi-GPU / multi-node training through PyTorch's own DDP, launched by ``torchrun``.

    torchrun --nproc_per_node 4 -m vasseg train --config configs/la/vas_16.yaml

Each process trains one replica; ``data.labeled_bs``/``data.unlabeled_bs`` are per process, so the
global batch is ``world_size`` times larger. The two-stream batcher draws the same global batch on
every rank and each rank keeps its own slice (distinct cases within a step). Gradients of the main
optimizer are averaged by DDP; a method's discriminator is stepped outside DDP (its phase is not a
forward of the wrapped module) so its gradients are averaged here explicitly. Only rank 0 writes
logs and checkpoints. ``train.sync_bn`` converts BatchNorm to SyncBatchNorm (statistics over the
global batch). A checkpoint holds the global sampler state, so a run can resume with another
world size (the global batch then changes with it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up; returns this rank's info and device."""
    if not launched_by_torchrun():
        return DistInfo(), _device(device_spec, 0)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(device_spec, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    log.info("rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistInfo(rank, world, local), device


def _device(spec: str, local_rank: int) -> torch.device:
    from vasseg.engine.setup import select_device

    device = select_device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(method: nn.Module, device: torch.device) -> nn.Module:
    """The DDP wrapper the engine calls for the main phase."""
    ids = [device.index] if device.type == "cuda" else None
    # Some parameters legitimately get no gradient in a step (a class absent from a patch, a
    # head used only on some steps): let DDP find them rather than hang.
    return nn.parallel.DistributedDataParallel(method, device_ids=ids, find_unused_parameters=True)


def convert_sync_bn(method: nn.Module) -> None:
    """Replace BatchNorm in every direct child network by SyncBatchNorm (weights are kept)."""
    for name, child in list(method.named_children()):
        setattr(method, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (for logged scalars: the global-batch values)."""
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of parameters that DDP does not manage."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    # A parameter without a gradient on this rank (e.g. a class head unused here) counts as zero,
    # so every rank reduces a buffer of the same size.
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()

"""Process-group set-up for `torchrun`: which rank this is, which device it owns, and rank-0-only side effects.

torchrun (single or multi-node, through its --nnodes/--rdzv_* flags) exports RANK, WORLD_SIZE and LOCAL_RANK;
a plain `python -m voxfast train` sets none of them and runs as world size 1 with no process group at all,
so the single-process path never pays for distribution.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from voxfast.errors import VoxfastError
from voxfast.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and metrics."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (world 1 when absent)."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise VoxfastError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc}); launch with torchrun") from exc


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun: NCCL for GPUs, gloo for CPUs.

    Each rank takes GPU `LOCAL_RANK` (set before the group starts, so NCCL binds the right device).
    Calling it again, or in a process that already joined a group, returns the same DistInfo.
    """
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return info
    use_cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available()
    if use_cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise VoxfastError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs visible "
                               "(lower --nproc_per_node)")
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend)
    log.info("rank %d/%d joined the %s process group", info.rank, info.world, backend)
    return info


def rank_device(name: str, info: DistInfo) -> torch.device:
    """The device this rank trains on: `auto` and `cuda` mean GPU LOCAL_RANK under torchrun."""
    return resolve_device(name, info.local_rank if info.enabled else None)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (a collective: every rank must call it)."""
    if not info.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

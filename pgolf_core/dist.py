"""Process setup: which rank this is, which device it trains on, the process group, small collectives.

The only place that reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK. Hyperparameters never come from
the environment (they come from params/); these three variables are torchrun's own contract with the
process it launches.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist

from pgolf_core.challenge import WORLD_SIZE
from pgolf_core.runfolder import RunError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """DistInfo from torchrun's variables (a single process when they are absent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    )
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}")
    return info


def resolve_device(requested: str, dist: DistInfo) -> torch.device:
    """``train.device`` ("auto", "cpu", "cuda") to this rank's device: its local GPU, or the CPU."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RunError(
                "train.device='cuda' but this machine has no usable CUDA device "
                "(torch.cuda.is_available() is False); expected 'cpu' or 'auto' here"
            )
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (every rank the same seed: identical initial weights)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_process_group(dist: DistInfo, device: torch.device) -> None:
    """NCCL on GPUs, gloo on CPUs; nothing for a single process or when a group already exists."""
    if not dist.distributed or tdist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        tdist.init_process_group("nccl", device_id=device)
    else:
        tdist.init_process_group("gloo")


def wrap_ddp(module: torch.nn.Module, dist: DistInfo, device: torch.device) -> torch.nn.Module:
    """DDP around the (compiled) model when there are several ranks: gradients averaged across ranks."""
    if not dist.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)


def leave_together(dist: DistInfo) -> None:
    """A barrier before a completed run destroys its group, so no rank tears gloo down under a peer that
    still has work in flight (only on success: after a failure the peers may be gone already)."""
    if dist.distributed and tdist.is_initialized():
        tdist.barrier()


def destroy_process_group(dist: DistInfo) -> None:
    if dist.distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def broadcast_str(value: str, dist: DistInfo) -> str:
    """Rank 0's ``value`` on every rank (the value itself when there is no group)."""
    if not (dist.distributed and tdist.is_initialized()):
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flags: list[bool], dist: DistInfo, device: torch.device) -> list[bool]:
    """Logical OR of each flag across ranks (one small all-reduce), so every rank takes the same branch."""
    t = torch.tensor([float(f) for f in flags], device=device)
    if dist.distributed:
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def grad_accum_steps(configured: int, dist: DistInfo) -> int:
    """Micro-batches per step: ``train.grad_accum_steps``, or (0) the scored run's global batch in
    WORLD_SIZE micro-batches whatever this machine's world size, as the challenge baseline."""
    if configured:
        return configured
    if WORLD_SIZE % dist.world_size:
        raise RunError(
            f"world size {dist.world_size} does not divide the scored run's {WORLD_SIZE} GPUs; "
            "set train.grad_accum_steps explicitly"
        )
    return WORLD_SIZE // dist.world_size

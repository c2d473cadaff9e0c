"""Worker for the 2-process Hessian all-reduce test: importable by spawned children (not collected)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from pgolf_core.dist import DistInfo
from pgolf_core.quant import collect_hessians
from tests.model.helpers import tiny_model


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four calibration batches of different sizes, identical in every process."""
    g = torch.Generator().manual_seed(99)
    return [
        (torch.randint(0, 64, (b, 20), generator=g), torch.zeros(b, 20, dtype=torch.long))
        for b in (1, 2, 3, 2)
    ]


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        mine = batches()[rank::world_size]  # rank 0: sizes 1, 3; rank 1: sizes 2, 2 -> unequal row counts
        hess = collect_hessians(tiny_model(), mine, DistInfo(rank, world_size, 0))
        torch.save({"h": dict(hess), "rows": hess.rows}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()

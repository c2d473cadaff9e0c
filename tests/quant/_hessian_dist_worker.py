"""Worker for the 2-process Hessian all-reduce test: importable by spawned children (not collected)."""

from __future__ import annotations

from pathlib import Path

import torch

from pgolf_core.dist import DistInfo
from pgolf_core.quant import collect_hessians
from pgolf_core.quant.calib import measure_calibration
from tests.gloo import gloo_group
from tests.model.helpers import tiny_model


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four calibration batches of different sizes, identical in every process."""
    g = torch.Generator().manual_seed(99)
    return [
        (torch.randint(0, 64, (b, 20), generator=g), torch.zeros(b, 20, dtype=torch.long))
        for b in (1, 2, 3, 2)
    ]


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world_size, port):
        mine = batches()[rank::world_size]  # rank 0: sizes 1, 3; rank 1: sizes 2, 2 -> unequal row counts
        dist = DistInfo(rank, world_size, 0)
        hess = collect_hessians(tiny_model(), mine, dist)
        timing = measure_calibration(tiny_model(), 2 + rank, 20, 64, dist)  # ranks time different shapes
        torch.save({"h": dict(hess), "rows": hess.rows, "timing": timing}, Path(out_dir) / f"rank{rank}.pt")

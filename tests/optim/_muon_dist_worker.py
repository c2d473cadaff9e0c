"""Worker for the 2-process Muon test: importable by spawned children (pytest does not collect it)."""

from __future__ import annotations

from pathlib import Path

import torch

from pgolf_core.optim.muon import Muon
from tests.gloo import gloo_group

# Five matrices in two groups: rank 0 owns params 0, 2 of group 0 and 0, 2 of group 1; rank 1 the rest.
# Includes a tall matrix (scaled by 2) and a 3-D bank.
SHAPES = [[(16, 32), (64, 16), (24, 24)], [(2, 16, 8), (8, 40), (12, 12)]]
NUM_STEPS = 3


def make_problem() -> tuple[list[list[torch.Tensor]], list[list[list[torch.Tensor]]]]:
    """(initial params per group, grads per step per group), identical in every process."""
    gen = torch.Generator().manual_seed(1234)
    params = [[torch.randn(*s, generator=gen) for s in group] for group in SHAPES]
    grads = [[[torch.randn(*s, generator=gen) for s in group] for group in SHAPES] for _ in range(NUM_STEPS)]
    return params, grads


def run_problem() -> list[torch.Tensor]:
    """Run NUM_STEPS Muon steps (group 0: quintic + WD; group 1: polar express + row norm + WD)."""
    init, grads = make_problem()
    groups = [[torch.nn.Parameter(p.clone()) for p in group] for group in init]
    opt = Muon(
        [
            dict(params=groups[0], weight_decay=0.04),
            dict(params=groups[1], coefficients="polar_express", row_norm=True, weight_decay=0.095, lr=0.03),
        ],
        lr=0.02,
        momentum=0.95,
    )
    for step_grads in grads:
        for params, gs in zip(groups, step_grads):
            for p, g in zip(params, gs):
                p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for group in groups for p in group]


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world_size, port):
        torch.save(run_problem(), Path(out_dir) / f"rank{rank}.pt")

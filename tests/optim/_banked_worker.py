"""Workers for the BankedMuon tests: importable by spawned children (pytest does not collect it).

One spawn per world size runs every case on the same gloo group and saves what each rank ends with; the
test process recomputes the references with plain ``Muon`` on one process.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from pgolf_core.config import ModelConfig, OptimConfig
from pgolf_core.model import build_model
from pgolf_core.optim.banked import BankedMuon, exclude_from_ddp, use_banked_muon
from pgolf_core.optim.groups import build_optimizers
from tests.gloo import gloo_group

# Group 0 (quintic, WD): 16x32 and 32x16 share one 512-element bank of 5 (not divisible by 2 or 4) with
# two shapes and a scale of 1 and sqrt(2); a single 24x24 (fewer matrices than ranks); a 3-D 3x8x8 bank
# whose slices land on different ranks. Group 1 (polar express, row norm, no Nesterov): five 12x20 and
# one 8x40.
SHAPES = [
    [(16, 32), (32, 16), (24, 24), (16, 32), (3, 8, 8), (32, 16), (16, 32)],
    [(12, 20), (12, 20), (8, 40), (12, 20), (12, 20), (12, 20)],
]
NUM_STEPS = 4
# (group, index) whose gradient is None at step 2 on every rank: part of a bank, and a whole bank.
NO_GRAD = {2: [(1, 1), (1, 2)]}
CLIP = 5.0  # far below the averaged gradients' norm (20 to 50 here): clipping is active at every step


def make_problem(world: int, kind: str) -> tuple[list[list[torch.Tensor]], list]:
    """(initial params per group, local grads[step][rank][group][i]), identical in every process.

    kind "random": N(0, 1); "dyadic": multiples of 1/64 in [-1, 1], whose sums over ranks are exact in
    fp32 in any order (and so are their averages over 2 or 4 ranks).
    """
    gen = torch.Generator().manual_seed(2024 + world)
    params = [[torch.randn(*s, generator=gen) for s in group] for group in SHAPES]

    def grad(shape):
        if kind == "dyadic":
            return torch.randint(-64, 65, shape, generator=gen).float() / 64
        return torch.randn(*shape, generator=gen)

    grads = [[[[grad(s) for s in group] for group in SHAPES] for _ in range(world)] for _ in range(NUM_STEPS)]
    for step, missing in NO_GRAD.items():
        for rank_grads in grads[step]:
            for gi, i in missing:
                rank_grads[gi][i] = None
    return params, grads


def average(grads_by_rank: list) -> list:
    """The reference's averaged gradient: sum in rank order, divided by the world size."""
    world = len(grads_by_rank)
    out = []
    for gi, group in enumerate(grads_by_rank[0]):
        row = []
        for i, g in enumerate(group):
            if g is None:
                row.append(None)
                continue
            total = g.clone()
            for r in range(1, world):
                total += grads_by_rank[r][gi][i]
            row.append(total / world)
        out.append(row)
    return out


def make_opt(cls, groups):
    return cls(
        [
            {"params": groups[0], "weight_decay": 0.04},
            {
                "params": groups[1],
                "coefficients": "polar_express",
                "row_norm": True,
                "nesterov": False,
                "weight_decay": 0.095,
                "lr": 0.03,
            },
        ],
        lr=0.02,
        momentum=0.95,
    )


def run(cls, init, step_grads, clip: bool = False, reload_at: int | None = None):
    """Run the optimizer over ``step_grads`` (grads[step][group][i]); returns (params, total norms, state).

    ``reload_at``: after that many steps, state_dict() into a fresh optimizer (a resume).
    """
    groups = [[torch.nn.Parameter(p.clone()) for p in group] for group in init]
    opt = make_opt(cls, groups)
    norms = []
    for step, grads in enumerate(step_grads):
        if step == reload_at:
            state = opt.state_dict()
            opt = make_opt(cls, groups)
            opt.load_state_dict(state)
        for params, gs in zip(groups, grads):
            for p, g in zip(params, gs):
                p.grad = None if g is None else g.clone()
        if clip:
            if isinstance(opt, BankedMuon):
                norms.append(opt.clip_grad_norm_(CLIP))
            else:
                norms.append(torch.nn.utils.clip_grad_norm_([p for g in groups for p in g], CLIP))
        opt.step()
    state = opt.state_dict()["state"]
    return [p.detach().clone() for group in groups for p in group], norms, state


# ----- a tiny GPT under DDP: Muon's gradients excluded from DDP and averaged by BankedMuon -----
TINY = {"vocab_size": 64, "num_layers": 3, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1}
DDP_STEPS = 3


def tiny_run(rank: int, world: int, banked: bool) -> dict:
    """3 steps of the tiny GPT on this rank's batches under DDP; Muon or BankedMuon + AdamW."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY), device="cpu")
    opt = build_optimizers(model, OptimConfig(muon_weight_decay=0.04), tie_embeddings=True)
    out = {"names": [(n, p.numel()) for n, p in model.named_parameters()]}
    out["state_keys"] = list(model.state_dict())
    out["muon_names"] = opt.param_names["matrix"]
    out["init"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    if banked:
        assert use_banked_muon(opt, SimpleNamespace(muon_banked=True))
        exclude_from_ddp(model, opt.optimizers["muon"].param_groups[0]["params"])
    ddp = DDP(model, broadcast_buffers=False)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(DDP_STEPS):
        x = torch.randint(0, 64, (2, 16), generator=gen)
        ddp(x, torch.roll(x, -1, 1)).backward()
        if step == 1:  # at step 0 the zero-init output projections leave Q, K, V, up without gradient
            out["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    out["muon_type"] = type(opt.optimizers["muon"]).__name__
    return out


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world, port):
        results = {}
        for kind in ("random", "dyadic"):
            init, grads = make_problem(world, kind)
            local = [step[rank] for step in grads]
            results[kind] = run(BankedMuon, init, local)
            results[kind + "_reload"] = run(BankedMuon, init, local, reload_at=2)
            results[kind + "_clip"] = run(BankedMuon, init, local, clip=True)
        if world == 2:
            results["ddp_muon"] = tiny_run(rank, world, banked=False)
            results["ddp_banked"] = tiny_run(rank, world, banked=True)
        dist.barrier()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")

"""How ``BankedMuon`` (pgolf_core.optim.banked) lays Muon's matrices out over the ranks, and the
Newton-Schulz work that gives each rank (bench/muon_comm.py prints it for the record configs).

Banks: the optimizer stacks the existing parameters' gradients into virtual banks, one per (element
count, dtype, device) within a param group. Keying by element count rather than shape lets the MLP's up
(h x d) and down (d x h) matrices share one bank, which cuts the padding (8 ranks: baseline +59% -> +33%
of the matrices' elements, #1493 +36% -> +9%); each rank's shard is then orthogonalized in runs of equal
shape (``shape_runs``).

Layout: ``reduce_scatter`` gives rank r the r-th of n equal chunks, so a bank of K matrices becomes n
chunks of ceil(K / n) slots; rank r owns a contiguous run of floor(K / n) or ceil(K / n) matrices at the
start of its chunk, and zero padding fills the rest (sent, never orthogonalized). Which ranks get the
extra matrices is chosen across banks so that Newton-Schulz work stays balanced (``assign``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Member:
    """One parameter in a bank: matrices [start, start + count) (count > 1 for a 3-D parameter)."""

    param: nn.Parameter
    start: int
    count: int


@dataclass
class Bank:
    """Equal-sized matrices of one param group, in order (sorted by shape, then group order), how they
    are laid out over the ranks (``assign``), and the optimizer's per-bank state (``BankedMuon``)."""

    numel: int
    members: list[Member]
    shapes: list[tuple[int, int]]  # per matrix
    counts: list[int] = field(default_factory=list)  # matrices owned by each rank (a contiguous run)
    momentum: Tensor | None = None  # (owned matrices, numel): this rank's shard only
    started: list[bool] = field(default_factory=list)  # per member: has it ever had a gradient
    grad_shard: Tensor | None = None  # set by reduce_grads, consumed by step
    has_grad: list[bool] | None = None

    @property
    def size(self) -> int:
        return len(self.shapes)

    @property
    def per(self) -> int:
        """Slots per rank in the padded bank: the largest count."""
        return max(self.counts)

    def owned(self, rank: int) -> tuple[int, int]:
        """(first matrix, number of matrices) of ``rank``."""
        return sum(self.counts[:rank]), self.counts[rank]

    def slots(self, m: Member) -> slice | Tensor:
        """Rows of ``m``'s matrices in the padded (world * per) bank: rank r's chunk starts at r * per
        with its owned matrices, then zero padding."""
        rows = [r * self.per + j for r, c in enumerate(self.counts) for j in range(c)]
        idx = rows[m.start : m.start + m.count]
        if idx == list(range(idx[0], idx[0] + m.count)):
            return slice(idx[0], idx[0] + m.count)
        return torch.tensor(idx, device=m.param.device)


def build_banks(params: list[nn.Parameter]) -> list[Bank]:
    """The banks of one param group (no layout yet: ``assign``)."""
    by_key: dict[tuple, list[nn.Parameter]] = {}
    for p in params:
        by_key.setdefault((p.shape[-2] * p.shape[-1], p.dtype, p.device), []).append(p)
    banks = []
    for (numel, _, _), ps in by_key.items():
        # Sorting by shape makes each rank's shard a few runs of one shape (one batched NS each).
        ps = sorted(ps, key=lambda p: tuple(p.shape[-2:]))
        members, shapes = [], []
        for p in ps:
            count = p.shape[0] if p.ndim == 3 else 1
            members.append(Member(p, len(shapes), count))
            shapes += [tuple(p.shape[-2:])] * count
        banks.append(Bank(numel, members, shapes, started=[False] * len(members)))
    return banks


def assign(banks: list[Bank], world: int) -> None:
    """Give each rank floor(K / n) or ceil(K / n) matrices of every bank (ceil: the padded size), the
    extra ones to the ranks with the least Newton-Schulz work so far, heaviest banks first. Padding at
    the end of every bank would leave the last ranks idle in all of them (the baseline's three banks of
    18 on 8 ranks: ranks 6 and 7 with nothing, the busiest 16% above the round-robin Muon).
    Deterministic, so every rank computes the same layout."""
    load = [0] * world
    order = sorted(range(len(banks)), key=lambda i: (-sum(ns_flops(*s, 1) for s in banks[i].shapes), i))
    for i in order:
        bank = banks[i]
        base, extra = divmod(bank.size, world)
        lucky = set(sorted(range(world), key=lambda r: (load[r], r))[:extra])
        bank.counts = [base + (r in lucky) for r in range(world)]
        start = 0
        for r, c in enumerate(bank.counts):
            load[r] += sum(ns_flops(*s, 1) for s in bank.shapes[start : start + c])
            start += c


def shape_runs(shapes: list[tuple[int, int]]) -> list[tuple[int, int, tuple[int, int]]]:
    """Maximal [a, b) ranges of equal shape."""
    out, a = [], 0
    for i in range(1, len(shapes) + 1):
        if i == len(shapes) or shapes[i] != shapes[a]:
            out.append((a, i, shapes[a]))
            a = i
    return out


def ns_flops(rows: int, cols: int, steps: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of ``steps`` Newton-Schulz iterations on one rows x cols matrix:
    with m = min, k = max: A = X X^T (2 m^2 k), A A (2 m^3), B X (2 m^2 k)."""
    m, k = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * k + 2 * m**3)


def shard_plan(groups: list[list[nn.Parameter]], world: int, steps: int) -> list[dict]:
    """Per virtual bank of the param groups ``groups``, as ``BankedMuon`` lays them out on ``world``
    ranks: element count, matrices, padded matrices, and each rank's Newton-Schulz FLOPs
    (bench/muon_comm.py; works on meta-device parameters)."""
    banks = [b for g in groups for b in build_banks(list(g))]
    assign(banks, world)
    plan = []
    for bank in banks:
        flops = []
        for rank in range(world):
            lo, real = bank.owned(rank)
            flops.append(sum(ns_flops(r, c, steps) for r, c in bank.shapes[lo : lo + real]))
        plan.append({"numel": bank.numel, "matrices": bank.size, "padded": bank.per * world, "flops": flops})
    return plan

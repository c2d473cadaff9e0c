"""Selective +-1 pruning: zero the cheapest codes until a compressed artifact fits its byte target.

#1019 (from #609) took every int6 code with |q| = 1, ranked them by the error zeroing them would add
(it used scale_row^2), and binary-searched how many to zero so that the compressed model plus code fit
its target (in MiB there; the cap is decimal). Zeros are the most frequent code, so each one zeroed
lowers the entropy the coder pays for. Here the ranking is the exact added error of each entry,
(w - w^ + q s)^2 - (w - w^)^2 with w^ the stored weight (AWQ-lite and LQER included), weighted by
diag(H)_j when Hessians are given (the layer-output error a change in column j makes); the AWQ-lite
columns hold no codes in q and the "other" tables keep theirs. A cost can be negative: GPTQ's codes
are not each the nearest grid point (it trades weight error for output error), so zeroing some of
them lowers this per-entry measure.

The count is searched with the real encoder: a bracket from a first guess (8 codes per byte over;
a tiny int6 model needed ~11), then interpolation between the largest count known too big and the smallest
known to fit,
until they are within 0.5% (or one code) of each other. Each probe re-encodes; streams whose bytes did
not change are reused from a cache by the caller's encoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor

from pgolf_core.quant.schemes import QTensor, dequantize

PRUNED_GROUPS = ("attn", "mlp", "embed")
_TOLERANCE = 0.005


@dataclass
class PruneResult:
    """What pruning did. ``changes``: (tensor index, flat indices, old codes) to undo it (not in
    ``as_dict``)."""

    target_bytes: int
    bytes_before: int
    bytes_after: int
    values: int  # codes changed (+-1 -> 0)
    candidates: int  # codes with |q| = 1 in the pruned groups
    added_error: float  # sum of the ranked added errors of the changed codes
    probes: int  # encodes run
    fits: bool
    changes: list[tuple[int, Tensor, Tensor]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("changes")
        return d


def candidates(
    qts: list[QTensor], originals: Mapping[str, Tensor], hessians: Mapping[str, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(tensor index, flat index, cost) of every +-1 code of the pruned groups, cheapest first (ties:
    tensor order, then position)."""
    tids, idxs, costs = [], [], []
    for i, qt in enumerate(qts):
        if qt.kind != "row" or qt.group not in PRUNED_GROUPS:
            continue
        q = qt.arrays["q"]
        flat = torch.nonzero(q.reshape(-1).abs() == 1).flatten()
        if flat.numel() == 0:
            continue
        cols = q.shape[1]
        r, c = flat // cols, flat % cols
        e0 = (originals[qt.name].float() - dequantize(qt).float()).reshape(-1)[flat]
        step = q.reshape(-1)[flat].float() * qt.arrays["scale"].float()[r]
        cost = (e0 + step).square() - e0.square()
        h = None if hessians is None else hessians.get(qt.name)
        if h is not None:
            cost = cost * h.diagonal().float()[c]
        tids.append(torch.full_like(flat, i))
        idxs.append(flat)
        costs.append(cost)
    if not tids:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty, torch.empty(0)
    tid, idx, cost = torch.cat(tids), torch.cat(idxs), torch.cat(costs)
    order = torch.sort(cost, stable=True).indices
    return tid[order], idx[order], cost[order]


def _changes(qts: list[QTensor], tid: Tensor, idx: Tensor) -> list[tuple[int, Tensor, Tensor]]:
    out = []
    for i in torch.unique(tid).tolist():
        flat = idx[tid == i]
        out.append((i, flat, qts[i].arrays["q"].reshape(-1)[flat].clone()))
    return out


def with_pruned(qts: list[QTensor], tid: Tensor, idx: Tensor) -> list[QTensor]:
    """Copies of ``qts`` with the listed codes set to 0 (untouched tensors shared, not copied)."""
    out = list(qts)
    for i in torch.unique(tid).tolist():
        q = qts[i].arrays["q"].clone()
        q.view(-1)[idx[tid == i]] = 0
        out[i] = replace(qts[i], arrays={**qts[i].arrays, "q": q})
    return out


def undo(qts: list[QTensor], result: PruneResult) -> list[QTensor]:
    """The QTensors before pruning (copies of the changed ones)."""
    out = list(qts)
    for i, flat, old in result.changes:
        q = qts[i].arrays["q"].clone()
        q.view(-1)[flat] = old
        out[i] = replace(qts[i], arrays={**qts[i].arrays, "q": q})
    return out


def prune_to_fit(
    qts: list[QTensor],
    originals: Mapping[str, Tensor],
    target_bytes: int,
    size_of: Callable[[list[QTensor]], int],
    *,
    hessians: Mapping[str, Tensor] | None = None,
    max_probes: int = 24,
) -> tuple[list[QTensor], PruneResult]:
    """(QTensors that fit ``target_bytes`` by ``size_of``, what was done). Nothing changes when they
    already fit, or when zeroing every candidate would not be enough (``fits`` False then)."""
    before = size_of(qts)
    probes = 1
    if before <= target_bytes:
        return qts, PruneResult(target_bytes, before, before, 0, 0, 0.0, probes, True)
    tid, idx, cost = candidates(qts, originals, hessians)
    n_cand = int(tid.numel())
    sizes = {0: before}

    def size(n: int) -> int:
        nonlocal probes
        if n not in sizes:
            sizes[n] = size_of(with_pruned(qts, tid[:n], idx[:n]))
            probes += 1
        return sizes[n]

    lo, hi = 0, None  # lo: known over the target; hi: known to fit
    n = min(n_cand, max(64, 8 * (before - target_bytes)))
    while n_cand and probes < max_probes:
        if size(n) <= target_bytes:
            hi = n
            break
        lo = n
        if n == n_cand:
            break
        saved_per_code = max((before - sizes[n]) / n, 1e-3)
        n = min(n_cand, max(2 * n, math.ceil(n + 1.2 * (sizes[n] - target_bytes) / saved_per_code)))
    if hi is None:
        return qts, PruneResult(target_bytes, before, before, 0, n_cand, 0.0, probes, False)
    while hi - lo > max(1, int(hi * _TOLERANCE)) and probes < max_probes:
        s_lo, s_hi = sizes[lo], sizes[hi]
        guess = lo + (s_lo - target_bytes) * (hi - lo) / max(s_lo - s_hi, 1)
        margin = max(1, (hi - lo) // 8)  # keep away from the ends so the bracket always shrinks
        mid = int(min(max(round(guess), lo + margin), hi - margin))
        if size(mid) <= target_bytes:
            hi = mid
        else:
            lo = mid
    pruned = with_pruned(qts, tid[:hi], idx[:hi])
    result = PruneResult(
        target_bytes,
        before,
        sizes[hi],
        hi,
        n_cand,
        float(cost[:hi].sum()),
        probes,
        True,
        _changes(qts, tid[:hi], idx[:hi]),
    )
    return pruned, result

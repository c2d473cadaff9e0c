"""The per-group layout (#1855 ``COMPRESSOR=pergroup``): int8 codes bucketed by role, rows reordered.

Codes of the same role across layers look alike (same shape, similar statistics), so each role is one
stream: tok_emb, attn k / q / v / proj, mlp fc (up) / proj (down), an untied lm_head, and the large
tables (bigram / value embeddings), layers concatenated in state-dict order. For tok_emb, attn q and
mlp fc the rows are first put in a greedy L1 nearest-neighbour chain (start at row 0, then always the
closest unused row; the permutation is stored), so similar rows sit next to each other; every matrix
is written column-major (transposed). Each role stream is compressed with lrzip where it is installed
(ZPAQ; kept only where it beats brotli, which it does on the large streams), else brotli; scales, LQER /
AWQ-lite arrays, small tensors and the permutations go in one
brotli stream, byte-shuffled by element size. #1855: ~280 KB smaller than brotli (#1512-head Run 6:
-240,863 B on identical weights), at ~52 s of similarity sort plus ~50-75 s of lrzip to serialize.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pgolf_core.model.attention import CausalSelfAttention
from pgolf_core.model.gpt import GPT
from pgolf_core.model.mlp import MLP
from pgolf_core.quant.classify import unwrap
from pgolf_core.quant.schemes import QTensor

# the stream order (#1855's, with lm_head and tables added at the end)
BUCKETS = ("tok_emb", "attn.k", "attn.q", "attn.v", "attn.proj", "mlp.fc", "mlp.proj", "lm_head", "tables")
REORDERED = frozenset({"tok_emb", "attn.q", "mlp.fc"})
REST = "rest"  # the brotli stream of everything else

# (section name, codecs to try or None for the header's, parts); a part is [(tensor index, array key,
# tensor)]
Section = tuple[str, tuple[str, ...] | None, list[list[tuple[int, str, Tensor]]]]


def tensor_roles(model: nn.Module) -> dict[str, str]:
    """state-dict name -> role bucket for the linears of attention / MLP blocks and the embeddings."""
    model = unwrap(model)
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    out: dict[str, str] = {}

    def put(param: Tensor, role: str) -> None:
        if id(param) in names:
            out[names[id(param)]] = role

    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            for role in ("q", "k", "v", "proj"):
                put(getattr(module, role).weight, f"attn.{role}")
        elif isinstance(module, MLP):
            put(module.up.weight, "mlp.fc")
            put(module.down.weight, "mlp.proj")
        elif isinstance(module, GPT):
            put(module.tok_emb.weight, "tok_emb")
            if module.lm_head is not None:
                put(module.lm_head.weight, "lm_head")
    return out


def l1_chain(q: Tensor) -> Tensor:
    """Row order of a greedy nearest-neighbour chain under the L1 distance (int64, a permutation).

    Start at row 0; repeatedly append the unused row closest to the last one (ties: the lowest index).
    O(rows^2 * cols): the distances from the current row to the rows still unused, one step at a time,
    with the unused rows compacted whenever half of them have been taken.
    """
    rows = q.shape[0]
    if rows <= 2:
        return torch.arange(rows)
    x = q.to(torch.int16)
    remaining = torch.arange(1, rows)
    pool = x[1:]
    alive = torch.ones(rows - 1, dtype=torch.bool)
    taken_since = 0
    order = [0]
    cur = x[0]
    big = torch.iinfo(torch.int32).max
    for _ in range(rows - 1):
        d = (pool - cur).abs().sum(dim=1, dtype=torch.int32)
        d.masked_fill_(~alive, big)
        j = int(torch.argmin(d))
        order.append(int(remaining[j]))
        alive[j] = False
        cur = pool[j]
        taken_since += 1
        if 2 * taken_since >= len(remaining) and taken_since < len(remaining):
            keep = alive.nonzero().flatten()
            remaining, pool, alive = remaining[keep], pool[keep], torch.ones(len(keep), dtype=torch.bool)
            taken_since = 0
    return torch.tensor(order, dtype=torch.int64)


@dataclass
class PerGroupPlan:
    """Which tensors go in which role stream, their row orders, and the codec of the role streams."""

    buckets: dict[str, str]  # tensor name -> bucket
    perms: dict[str, Tensor]  # tensor name -> row order (only the REORDERED buckets)
    codec: str  # "lrzip" (each role stream: the smaller of lrzip and brotli) or "brotli"


def make_plan(qts: list[QTensor], roles: dict[str, str], codec: str) -> PerGroupPlan:
    """Bucket every per-row tensor that has a role (or is a large "other" table) and chain the rows of
    the reordered roles. The orders depend on the codes only, so a plan can be reused for small edits
    of them (pruning): any order is valid, the chain only makes it compress better."""
    buckets, perms = {}, {}
    for qt in qts:
        if qt.kind != "row":
            continue
        bucket = roles.get(qt.name) or ("tables" if qt.group == "other" else None)
        if bucket is None:
            continue
        buckets[qt.name] = bucket
        if bucket in REORDERED:
            perms[qt.name] = l1_chain(qt.arrays["q"])
    return PerGroupPlan(buckets, perms, codec)


def stored_codes(q: Tensor, perm: Tensor | None) -> Tensor:
    """What the role stream holds for codes q (rows x cols): q[perm] transposed (cols x rows)."""
    return (q if perm is None else q[perm]).t().contiguous()


def restore_codes(stored: Tensor, perm: Tensor | None) -> Tensor:
    """Inverse of ``stored_codes``: q with q[perm] = stored^T."""
    rows_first = stored.t()
    if perm is None:
        return rows_first.contiguous()
    q = torch.empty_like(rows_first)
    q[perm] = rows_first
    return q


def perm_array(perm: Tensor) -> Tensor:
    """The stored permutation: int16 while the row count allows it (2 bytes a row, as #1855's uint16)."""
    return perm.to(torch.int16 if perm.numel() <= 1 << 15 else torch.int32)


def plan_sections(
    qts: list[QTensor], plan: PerGroupPlan, order: tuple[str, ...]
) -> tuple[list[Section], dict]:
    """(sections, stored layout per tensor index): one section per non-empty role bucket with the
    transformed codes, then the "rest" section (brotli) with every other array, parts by element size.
    ``order``: the array keys in their stored order."""
    by_bucket: dict[str, list[tuple[int, str, Tensor]]] = {b: [] for b in BUCKETS}
    rest: list[tuple[int, str, Tensor]] = []
    xforms = {}
    for i, qt in enumerate(qts):
        bucket = plan.buckets.get(qt.name)
        for k in order:
            if k not in qt.arrays:
                continue
            if bucket is not None and k == "q":
                perm = plan.perms.get(qt.name)
                by_bucket[bucket].append((i, k, stored_codes(qt.arrays["q"], perm)))
                xforms[i] = "t" if perm is None else "perm_t"
                if perm is not None:
                    rest.append((i, "perm", perm_array(perm)))
            else:
                rest.append((i, k, qt.arrays[k]))
    codecs = ("lrzip", "brotli") if plan.codec == "lrzip" else ("brotli",)
    sections: list[Section] = [(b, codecs, [items]) for b, items in by_bucket.items() if items]
    parts = [[it for it in rest if it[2].element_size() == size] for size in (1, 2, 4, 8)]
    if rest:
        sections.append((REST, ("brotli",), [p for p in parts if p]))
    return sections, xforms


def check_permutation(perm: Tensor, rows: int) -> bool:
    """True when ``perm`` holds each of 0..rows-1 exactly once."""
    return perm.numel() == rows and torch.equal(torch.sort(perm.long()).values, torch.arange(rows))

"""Banked parallel Muon (PR #399, used by the records from #549 on): the same updates as ``Muon``, with a
reduce-scatter of the gradients and an all-gather of the updates instead of DDP's all-reduce.

With DDP, every rank receives the averaged gradient of every matrix (a ring all-reduce, i.e. a
reduce-scatter plus an all-gather), and ``Muon`` then shares the orthogonalized updates with a second
all-reduce of a buffer that is zero outside each rank's matrices. ``BankedMuon`` skips both halves that
are not needed: each rank receives only the averaged gradient of the matrices it owns (reduce-scatter),
runs momentum and Newton-Schulz on them, and the updates are all-gathered. At the same dtypes that is half
the bytes, plus the padding of the banks (bench/muon_comm.py prints the volumes for the record configs).

The model is left as it is: the optimizer stacks the existing parameters' gradients into virtual banks
(pgolf_core.optim.bank_plan: which rank owns which matrices), so parameter names, counts and the state
dict of the model do not change (the records instead store 3-D bank parameters).

Contract with the training loop: the gradients of this optimizer's parameters must be each rank's LOCAL
gradients (not averaged): exclude them from DDP with ``exclude_from_ddp`` before wrapping the model. The
averaging happens here (sum, then divide by the world size). Gradient clipping of the averaged gradient
needs ``clip_grad_norm_`` here, because after the reduce-scatter no rank holds every averaged gradient.
Gradient accumulation needs nothing: the local gradients sum over the micro-batches in ``.grad`` (DDP's
no_sync does not touch excluded parameters), and the clip or the step reduces them once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pgolf_core.optim.bank_plan import Bank, assign, build_banks, shape_runs
from pgolf_core.optim.muon import Muon, _world, compute_dtype, muon_scale, orthogonalize

if TYPE_CHECKING:
    from pgolf_core.optim.groups import OptimizerSet

# torch 2.13 renamed the tensor collectives; older builds (the GPU machines') have only the old names.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or getattr(dist, "reduce_scatter_tensor", None)
_all_gather = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)


class BankedMuon(Muon):
    """``Muon`` with sharded work: the same hyperparameters and, given LOCAL gradients whose average is
    what DDP would have produced, the same updates.

    Per bank and step: reduce-scatter(SUM) of the stacked local gradients in their own dtype (fp32, as
    DDP's all-reduce), divided by the world size; momentum, Nesterov, row norm and Newton-Schulz on the
    owned shard, scaled by sqrt(max(1, rows / cols)) and rounded to ``compute_dtype`` exactly as ``Muon``
    does; all-gather of the rounded updates; then on every rank W <- W (1 - lr wd) - lr u.

    Invariants:
    - Without a process group (or world size 1) there is no communication and the result equals
      ``Muon`` bitwise (batched Newton-Schulz gives each matrix the bits of its own 2-D run on CPU).
    - With n ranks it equals ``Muon`` fed the averaged gradient up to the summation order of the
      reduce-scatter (exact for 2 ranks; for more, exact when the sums are, e.g. dyadic gradients).
    - Momentum lives only on the owning rank (1 / n of Muon's memory). ``state_dict`` all-gathers it into
      ``Muon``'s per-parameter format, so it is a COLLECTIVE call when distributed (every rank must call
      it) and a checkpoint loads into either optimizer.
    - Every rank must agree on which gradients are None (as under DDP); a parameter without a gradient
      keeps its weight and momentum unchanged, as in ``Muon``.
    """

    def __init__(self, params, lr: float, **kwargs):
        super().__init__(params, lr, **kwargs)
        self._banks: list[list[Bank]] | None = None
        self._layout_world = 0

    @classmethod
    def from_muon(cls, opt: Muon) -> BankedMuon:
        """The same param groups (all keys, e.g. ``name`` / ``base_lr``), defaults and momentum state."""
        groups = [dict(g, params=list(g["params"])) for g in opt.param_groups]
        banked = cls(groups, **opt.defaults)
        if opt.state:
            banked.load_state_dict(opt.state_dict())
        return banked

    def _group_banks(self, world: int) -> list[list[Bank]]:
        if self._banks is None:
            self._banks = [build_banks(list(g["params"])) for g in self.param_groups]
        if self._layout_world != world:  # one layout over all groups: their NS work is balanced together
            if any(b.momentum is not None for banks in self._banks for b in banks):
                raise RuntimeError("BankedMuon: the world size changed after the first step")
            assign([b for banks in self._banks for b in banks], world)
            self._layout_world = world
        return self._banks

    # ----- communication -----
    def reduce_grads(self) -> None:
        """Reduce-scatter every bank's gradients (averaged) into this rank's shard; ``step`` calls it
        when the caller has not (the caller does when it clips first)."""
        rank, world = _world()
        for banks in self._group_banks(world):
            for bank in banks:
                if bank.grad_shard is not None:
                    continue
                has = [m.param.grad is not None for m in bank.members]
                if not any(has):
                    continue
                ref = next(m.param.grad for m, h in zip(bank.members, has) if h)
                send = torch.zeros(world * bank.per, bank.numel, dtype=ref.dtype, device=ref.device)
                for m, h in zip(bank.members, has):
                    if h:
                        send[bank.slots(m)] = m.param.grad.reshape(m.count, bank.numel)
                if world == 1:
                    shard = send
                else:
                    recv = torch.empty(bank.per, bank.numel, dtype=ref.dtype, device=ref.device)
                    _reduce_scatter(recv, send, op=dist.ReduceOp.SUM)  # gloo has no AVG
                    shard = recv[: bank.counts[rank]].div_(world)
                bank.grad_shard, bank.has_grad = shard, has

    def clip_grad_norm_(self, max_norm: float, other_params=()) -> Tensor:
        """``torch.nn.utils.clip_grad_norm_`` (2-norm) over this optimizer's averaged gradients and
        ``other_params`` (whose gradients are already averaged, e.g. by DDP; this optimizer's own
        parameters among them are skipped, so ``model.parameters()`` can be passed): the global norm
        comes from the shards (one scalar all-reduce), and shards and other gradients are scaled in
        place. The parameters' own ``.grad`` stay local and unclipped; ``step`` uses the shards.
        This clips the average over the ranks, as DDP + ``Muon`` does; the banked records from #549 on
        clip each rank's un-reduced gradient instead. Returns the total norm (the same on every rank)."""
        self.reduce_grads()
        _, world = _world()
        shards = [
            b.grad_shard for banks in self._group_banks(world) for b in banks if b.grad_shard is not None
        ]
        dev = self.param_groups[0]["params"][0].device
        sq = torch.zeros((), dtype=torch.float32, device=dev)
        for s in shards:
            sq += s.float().pow(2).sum()
        if world > 1:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM)
        own = {id(p) for g in self.param_groups for p in g["params"]}
        others = [p.grad for p in other_params if p.grad is not None and id(p) not in own]
        for g in others:
            sq += g.float().pow(2).sum().to(dev)
        total = sq.sqrt()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in shards + others:
            g.mul_(coef.to(g.device, g.dtype))
        return total

    # ----- the step -----
    def _shard_update(self, bank: Bank, group: dict, rank: int) -> Tensor:
        """Momentum + direction for the owned matrices, as (per, numel) in the communication dtype."""
        g, mu = bank.grad_shard, group["momentum"]
        lo, real = bank.owned(rank)
        if bank.momentum is None:
            bank.momentum = torch.zeros_like(g)
        slot_has = [h for m, h in zip(bank.members, bank.has_grad) for _ in range(m.count)][lo : lo + real]
        if all(slot_has):
            bank.momentum.mul_(mu).add_(g)
        else:  # x * 1 + 0 is exact: slots without a gradient keep their momentum bit for bit
            factor = torch.tensor([mu if h else 1.0 for h in slot_has], dtype=g.dtype, device=g.device)
            bank.momentum.mul_(factor[:, None]).add_(g)
        buf = bank.momentum
        u = g.add(buf, alpha=mu) if group["nesterov"] else buf
        cdtype = compute_dtype(g.device)
        out = torch.zeros(bank.per, bank.numel, dtype=cdtype, device=g.device)
        for a, b, (rows, cols) in shape_runs(bank.shapes[lo : lo + real]):
            x = u[a:b].view(b - a, rows, cols)
            if group["row_norm"]:
                # MuonEq-R (#1285): equalize row norms before NS; ~0.001 bpb at zero bytes.
                x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-7)
            x = orthogonalize(x, group["backend_steps"], group["coefficients"])
            out[a:b] = (x * muon_scale(torch.Size((rows, cols)))).to(cdtype).view(b - a, bank.numel)
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = _world()
        self.reduce_grads()
        for group, banks in zip(self.param_groups, self._banks):
            lr, wd = group["lr"], group["weight_decay"]
            for bank in banks:
                if bank.grad_shard is None:
                    continue
                self._adopt_loaded(bank, rank)
                out = self._shard_update(bank, group, rank)
                if world > 1:
                    updates = torch.empty(world * bank.per, bank.numel, dtype=out.dtype, device=out.device)
                    _all_gather(updates, out)
                else:
                    updates = out
                for i, (m, h) in enumerate(zip(bank.members, bank.has_grad)):
                    if not h:
                        continue
                    bank.started[i] = True
                    p = m.param
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(updates[bank.slots(m)].view(p.shape).to(p.dtype), alpha=-lr)
                bank.grad_shard = bank.has_grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Also drops reduced gradients that no step consumed."""
        super().zero_grad(set_to_none=set_to_none)
        for banks in self._banks or []:
            for bank in banks:
                bank.grad_shard = bank.has_grad = None

    # ----- state: Muon's per-parameter format -----
    def _adopt_loaded(self, bank: Bank, rank: int) -> None:
        """Move momentum that ``load_state_dict`` put into ``self.state`` into this rank's shard."""
        if not any("momentum_buffer" in self.state.get(m.param, {}) for m in bank.members):
            return
        lo, real = bank.owned(rank)
        ref = bank.grad_shard
        rows = []
        for i, m in enumerate(bank.members):
            buf = self.state.pop(m.param, {}).get("momentum_buffer")
            bank.started[i] = buf is not None
            rows.append(
                buf.reshape(m.count, bank.numel).to(ref.dtype)
                if buf is not None
                else torch.zeros(m.count, bank.numel, dtype=ref.dtype, device=ref.device)
            )
        bank.momentum = torch.cat(rows)[lo : lo + real].clone()

    def _full_momentum(self) -> dict[nn.Parameter, Tensor]:
        rank, world = _world()
        full = {}
        for banks in self._group_banks(world):
            for bank in banks:
                if bank.momentum is None:
                    continue
                buf = torch.zeros(
                    bank.per, bank.numel, dtype=bank.momentum.dtype, device=bank.momentum.device
                )
                buf[: bank.counts[rank]] = bank.momentum
                if world > 1:
                    send, buf = (
                        buf,
                        torch.empty(world * bank.per, bank.numel, dtype=buf.dtype, device=buf.device),
                    )
                    _all_gather(buf, send)
                for m, started in zip(bank.members, bank.started):
                    if started:
                        full[m.param] = buf[bank.slots(m)].reshape(m.param.shape).clone()
        return full

    def state_dict(self):
        """Muon's format (a full ``momentum_buffer`` per parameter); collective when distributed."""
        full = self._full_momentum()
        for p, buf in full.items():
            self.state[p]["momentum_buffer"] = buf
        try:
            return super().state_dict()
        finally:
            for p in full:
                self.state.pop(p, None)

    def load_state_dict(self, state_dict) -> None:
        """Replaces all momentum (none for a parameter missing from ``state_dict``); sharded lazily at
        the next step."""
        super().load_state_dict(state_dict)
        self._banks, self._layout_world = None, 0  # fresh banks: no shard momentum, nothing started


def exclude_from_ddp(module: nn.Module, params) -> list[str]:
    """Tell DDP (before wrapping ``module``) not to all-reduce ``params``: BankedMuon averages them.

    Names are taken from ``module.named_parameters()`` by identity, so they carry whatever prefix a
    wrapper adds (``_orig_mod.`` under torch.compile). Returns the names.
    """
    ids = {id(p) for p in params}
    names = [n for n, p in module.named_parameters() if id(p) in ids]
    if len(names) != len(ids):
        raise ValueError(
            f"{len(ids) - len(names)} of the {len(ids)} parameters to exclude are not in the module"
        )
    from torch.nn.parallel import DistributedDataParallel as DDP

    DDP._set_params_and_buffers_to_ignore_for_model(module, names)
    return names


def use_banked_muon(opt_set: OptimizerSet, optim_cfg) -> bool:
    """Swap ``opt_set``'s "muon" optimizer for a ``BankedMuon`` when ``optim.muon_banked`` is set
    (read with getattr: configs written before the field existed keep plain Muon). Returns whether it did."""
    muon = opt_set.optimizers.get("muon")
    if not getattr(optim_cfg, "muon_banked", False) or muon is None or isinstance(muon, BankedMuon):
        return isinstance(muon, BankedMuon)
    opt_set.optimizers["muon"] = BankedMuon.from_muon(muon)
    return True

"""Optimizer routing by parameter role (the split every record uses: Muon for block matrices, Adam(W)
for the rest).

Every trainable parameter declares a role at construction (``pgolf_core.model.roles``); routing reads
the role, never the name, and checks that each trainable parameter lands in exactly one group:

    matrix -> Muon    block matrices (Q, K, V, O, MLP)
    embed  -> AdamW   token embedding (tied LM head when tie_embeddings)
    head   -> AdamW   untied LM head
    table  -> AdamW   BigramHash / value-embedding tables (embedding LR in #549 unless table_lr is set)
    scalar -> AdamW   gains, scales, mixes, gates, small projections
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pgolf_core.config import OptimConfig
from pgolf_core.model.roles import EMBED, HEAD, MATRIX, ROLES, SCALAR, TABLE, lookup_roles
from pgolf_core.optim.banked import BankedMuon
from pgolf_core.optim.muon import Muon


@dataclass
class OptimizerSet:
    """The optimizers of one model, driven together by the training loop.

    ``optimizers`` maps a short name ("muon", "adamw") to an optimizer; ``param_names`` maps each group
    name (a role) to the fully-qualified names of its parameters, in group order.
    """

    optimizers: dict[str, torch.optim.Optimizer]
    param_names: dict[str, list[str]]

    def __iter__(self):
        return iter(self.optimizers.values())

    def groups(self):
        """(optimizer name, param group) for every group of every optimizer."""
        for opt_name, opt in self.optimizers.items():
            for group in opt.param_groups:
                yield opt_name, group

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def banked_params(self) -> list[nn.Parameter]:
        """The parameters of a ``BankedMuon`` (``optim.muon_banked``), which must stay out of DDP."""
        muon = self.optimizers.get("muon")
        return [p for g in muon.param_groups for p in g["params"]] if isinstance(muon, BankedMuon) else []

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` of the rank-averaged gradient of ``params``; returns its norm.

        A ``BankedMuon``'s gradients are still each rank's own at this point: it averages them and takes
        them into the same norm (``BankedMuon.clip_grad_norm_``). Clipping after averaging is pgolf's
        semantics on both paths; the banked records from #549 on clip each rank's un-reduced gradient.
        """
        muon = self.optimizers.get("muon")
        if isinstance(muon, BankedMuon):
            return muon.clip_grad_norm_(max_norm, params)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def set_lr_multiplier(self, mult: float) -> None:
        """lr = base_lr * mult in every group (one schedule for all optimizers, as the records)."""
        for _, group in self.groups():
            group["lr"] = group["base_lr"] * mult

    def set_muon_momentum(self, momentum: float) -> None:
        for opt in self.optimizers.values():
            if isinstance(opt, Muon):
                for group in opt.param_groups:
                    group["momentum"] = momentum

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if state.keys() != self.optimizers.keys():
            raise KeyError(f"optimizer state has {sorted(state)}, this run has {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])

    def param_names_by_group(self) -> dict[str, list[str]]:
        return {name: list(names) for name, names in self.param_names.items()}

    def groups_table(self) -> str:
        """A fixed-width routing table: group, optimizer, #tensors, #parameters, base lr, weight decay."""
        header = ("group", "optimizer", "tensors", "params", "lr", "weight_decay")
        rows = [header]
        for opt_name, group in self.groups():
            numel = sum(p.numel() for p in group["params"])
            rows.append(
                (
                    group["name"],
                    type(self.optimizers[opt_name]).__name__,
                    str(len(group["params"])),
                    f"{numel:,}",
                    f"{group['base_lr']:g}",
                    f"{group['weight_decay']:g}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _adam_settings(cfg: OptimConfig, tie_embeddings: bool) -> dict[str, tuple[float, float]]:
    """role -> (lr, weight decay) for the AdamW roles."""
    embed_lr = cfg.tied_embed_lr if tie_embeddings else cfg.embed_lr
    return {
        EMBED: (embed_lr, cfg.embed_weight_decay),
        HEAD: (cfg.head_lr, cfg.adam_weight_decay),
        TABLE: (cfg.table_lr or embed_lr, cfg.embed_weight_decay),
        SCALAR: (cfg.scalar_lr, cfg.adam_weight_decay),
    }


def build_optimizers(
    model: nn.Module, cfg: OptimConfig, *, tie_embeddings: bool, fused: bool = False
) -> OptimizerSet:
    """Route ``model``'s trainable parameters to Muon and AdamW by role.

    Args:
        model: parameters carry roles set with ``pgolf_core.model.roles.set_role``.
        cfg: learning rates, weight decays, betas and Muon settings.
        tie_embeddings: the embed group uses ``tied_embed_lr`` when True, ``embed_lr`` otherwise.
        fused: use the fused AdamW kernel (the records' choice on CUDA).

    Raises:
        ValueError: a trainable parameter has no role (every such parameter is named).
    """
    by_role: dict[str, list[tuple[str, nn.Parameter]]] = {role: [] for role in ROLES}
    missing = []
    roles = lookup_roles(model)
    for name, p in model.named_parameters():  # shared (tied) parameters are yielded once
        if not p.requires_grad:
            continue
        role = roles[name]
        if role is None:
            missing.append(name)
        else:
            by_role[role].append((name, p))
    if missing:
        raise ValueError(
            f"trainable parameters without a role (use pgolf_core.model.roles.set_role): {missing}"
        )

    optimizers: dict[str, torch.optim.Optimizer] = {}
    param_names: dict[str, list[str]] = {}
    if by_role[MATRIX]:
        group = {
            "name": MATRIX,
            "params": [p for _, p in by_role[MATRIX]],
            "lr": cfg.matrix_lr,
            "base_lr": cfg.matrix_lr,
            "weight_decay": cfg.muon_weight_decay,
        }
        optimizers["muon"] = Muon(
            [group],
            lr=cfg.matrix_lr,
            momentum=cfg.muon_momentum,
            backend_steps=cfg.muon_backend_steps,
            coefficients=cfg.muon_coefficients,
            row_norm=cfg.muon_row_norm,
        )
        param_names[MATRIX] = [n for n, _ in by_role[MATRIX]]

    adam_groups = []
    for role, (lr, wd) in _adam_settings(cfg, tie_embeddings).items():
        if by_role[role]:
            adam_groups.append(
                {
                    "name": role,
                    "params": [p for _, p in by_role[role]],
                    "lr": lr,
                    "base_lr": lr,
                    "weight_decay": wd,
                }
            )
            param_names[role] = [n for n, _ in by_role[role]]
    if adam_groups:
        # One AdamW with a group per role: numerically the same as the baseline's one Adam per group.
        optimizers["adamw"] = torch.optim.AdamW(
            adam_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused or None
        )

    routed = [id(p) for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(routed) == len(set(routed)) and set(routed) == set(trainable), (
        "optimizer routing is not a partition"
    )
    return OptimizerSet(optimizers, param_names)

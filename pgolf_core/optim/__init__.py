"""Optimizers and schedules: Muon for block matrices, AdamW for the rest, routed by parameter role."""

from pgolf_core.optim.ema import EMA
from pgolf_core.optim.groups import OptimizerSet, build_optimizers
from pgolf_core.optim.muon import Muon, orthogonalize
from pgolf_core.optim.schedules import lr_multiplier, muon_momentum_at

__all__ = [
    "EMA",
    "Muon",
    "OptimizerSet",
    "build_optimizers",
    "lr_multiplier",
    "muon_momentum_at",
    "orthogonalize",
]

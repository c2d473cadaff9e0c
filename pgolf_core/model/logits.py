"""The logit softcap: the baseline's symmetric c * tanh(z / c), and the AsymLogit rescale (#1923).

AsymLogit: two scalars, softcap_pos and softcap_neg, both initialised to c; on the evaluation / TTT
path z >= 0 maps to sp * tanh(z / sp) and z < 0 to sn * tanh(z / sn). The training path keeps the
single softcap, so the scalars get no gradient there (they are built with ``requires_grad`` off, so
neither DDP nor the optimizer groups ever see them); only the global SGD pass of phased TTT trains them
(``pgolf_core.ttt.phased``), never a per-document LoRA optimizer. Identity at init, so pre-quant and
quantized scores are unchanged; measured: TTT recovery 0.01269 -> 0.01398 bpb (-0.00129, seed 42,
consistent over 3 seeds, #1945 V21 README). A monotone per-logit map before a full softmax keeps the
distribution normalized. Credited by #1923 to modded-nanogpt PR #181.

Shapes: B batch, T time, V vocab.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf_core.model.layers import param
from pgolf_core.model.roles import SCALAR


def softcap(z_BTV: Tensor, c: float) -> Tensor:
    """c * tanh(z / c) in fp32."""
    return c * torch.tanh(z_BTV.float() / c)


def asym_softcap(z_BTV: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """sp * tanh(z / sp) where z >= 0, sn * tanh(z / sn) where z < 0, in fp32."""
    z_BTV = z_BTV.float()
    return torch.where(z_BTV >= 0, pos * torch.tanh(z_BTV / pos), neg * torch.tanh(z_BTV / neg))


def asym_softcap_params(c: float) -> tuple[nn.Parameter, nn.Parameter]:
    """(softcap_pos, softcap_neg) = (c, c), fp32 scalars with the SCALAR role and no training gradient."""
    pos, neg = param(torch.tensor(c), SCALAR), param(torch.tensor(c), SCALAR)
    return pos.requires_grad_(False), neg.requires_grad_(False)


def asym_softcap_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The AsymLogit scalars of ``model`` (empty without them): what only the global TTT pass trains."""
    return [
        p for p in (getattr(model, "softcap_pos", None), getattr(model, "softcap_neg", None)) if p is not None
    ]

"""Small building blocks shared by the model files: role-tagged linears and parameters, RMS norm,
the orthogonal initialisation of #549.

Shapes: B batch, T time, D model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.model.roles import set_role

# A weight carrying this attribute has an init prescribed by its component (zero, a small normal, ...),
# so the blanket orthogonal init must leave it alone.
_CUSTOM_INIT = "_pgolf_custom_init"


def mark_custom_init(param: Tensor) -> Tensor:
    setattr(param, _CUSTOM_INIT, True)
    return param


def has_custom_init(param: Tensor) -> bool:
    return getattr(param, _CUSTOM_INIT, False)


def linear(in_dim: int, out_dim: int, role: str, zero_init: bool = False) -> nn.Linear:
    """A bias-free ``nn.Linear`` (fp32 weight, autocast casts it) whose weight carries ``role``.

    ``zero_init`` zeroes the weight and exempts it from orthogonal init: output projections start as
    no-ops so every block is the identity at step 0 (the baseline's init).
    """
    layer = nn.Linear(in_dim, out_dim, bias=False)
    set_role(layer.weight, role)
    if zero_init:
        nn.init.zeros_(layer.weight)
        mark_custom_init(layer.weight)
    return layer


def param(value: Tensor, role: str) -> nn.Parameter:
    """An fp32 parameter initialised to ``value`` with its role declared."""
    return set_role(nn.Parameter(value.detach().clone().float()), role)


def rms_norm(x_BTD: Tensor) -> Tensor:
    """RMS norm over the last dim with no learnable weight (``F.rms_norm``, as the baseline)."""
    return F.rms_norm(x_BTD, (x_BTD.size(-1),))


def shift_right(x_BTD: Tensor) -> Tensor:
    """x_{t-1} at position t, zeros at t = 0 (the previous-token view used by smear gates)."""
    return F.pad(x_BTD[:, :-1], (0, 0, 1, 0))


@torch.no_grad()
def orthogonal_init_(model: nn.Module, min_dim: int = 64) -> int:
    """Orthogonal init (gain 1) of every linear weight with both dims >= ``min_dim`` (#549 on).

    Weights with a prescribed init (zero output projections, gate weights) are skipped, and so are
    embedding tables, which keep their own normal init. Returns the number of matrices initialised.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        if has_custom_init(w) or min(w.shape) < min_dim:
            continue
        nn.init.orthogonal_(w)
        count += 1
    return count

"""The block MLP: squared (leaky) ReLU between an up and a zero-initialised down projection.

Shapes: B batch, T time, D model dim, M hidden dim (int(mult * D)). Config: ``model.mlp``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.model.layers import linear
from pgolf_core.model.roles import MATRIX


class MLP(nn.Module):
    """down(act(up(x))^2) with act = relu (baseline) or leaky_relu(slope) (#549 on).

    LeakyReLU(0.5)^2 is #549's change: README -0.003 bpb, ablation -0.0021 post-TTT. The negative side
    keeps a gradient, and squaring keeps the output non-negative like relu^2.
    """

    def __init__(self, dim: int, mult: float, activation: str = "relu2", leaky_slope: float = 0.5):
        super().__init__()
        if activation not in ("relu2", "leaky_relu2"):
            raise ValueError(f"unknown MLP activation {activation!r}; expected relu2 or leaky_relu2")
        hidden = int(mult * dim)
        self.activation, self.leaky_slope = activation, leaky_slope
        self.up = linear(dim, hidden, MATRIX)
        self.down = linear(hidden, dim, MATRIX, zero_init=True)

    def forward(self, x_BTD: Tensor) -> Tensor:
        h_BTM = self.up(x_BTD)
        if self.activation == "leaky_relu2":
            h_BTM = F.leaky_relu(h_BTM, negative_slope=self.leaky_slope)
        else:
            h_BTM = F.relu(h_BTM)
        return self.down(h_BTM.square())

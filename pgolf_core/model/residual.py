"""The residual stream: the block, U-Net skips, depth recurrence (the loops) and parallel residuals.

``Block`` is one physical layer. ``layer_plan`` turns the config into the layer positions (which physical
block runs at each position, with the loops on or off), their U-Net encoder/decoder split and the
two-lane start; ``run_blocks`` walks them. The skip and lane parameters live on the model (their FQNs
are ``skip_weights``, ``skip_gates``, ``parallel_resid_lambdas``, ``parallel_post_lambdas``); this file
creates them (``skip_params``, ``lane_params``) and they come back in as bundles.
Config: ``model.residual.{ln_scale, skip_gates, loops, parallel}``.

Shapes: B batch, T time, D model dim, C kv dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from pgolf_core.config import ModelConfig
from pgolf_core.config.model import LoopsConfig
from pgolf_core.model.attention import CausalSelfAttention
from pgolf_core.model.layers import param, rms_norm
from pgolf_core.model.mlp import MLP
from pgolf_core.model.roles import SCALAR
from pgolf_core.model.varlen import Segments


class Block(nn.Module):
    """Pre-norm block: x_in = mix0 x + mix1 x0; x = x_in + a Attn(n(x_in)); x = x + m MLP(n(x)).

    ``resid_mix`` (2, D) init [1, 0] lets each layer re-read the embedding x0; ``attn_scale`` and
    ``mlp_scale`` (D) init 1 (the baseline's block). With ln_scale the normalized inputs are multiplied
    by 1 / sqrt(layer + 1) (physical index, so looped repeats reuse it; with partial RoPE 1.1271 -> 1.1248
    bpb in 2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248). GPT-J parallel blocks (#1412/#1493, layers >=
    parallel.start_layer) feed Attn and MLP the same n(x_in).
    """

    def __init__(self, cfg: ModelConfig, layer: int, attn_backend: str = "sdpa"):
        super().__init__()
        D = cfg.model_dim
        self.layer = layer
        self.attn = CausalSelfAttention(cfg, layer, attn_backend)
        self.mlp = MLP(D, cfg.mlp.mult, cfg.mlp.activation, cfg.mlp.leaky_slope)
        self.resid_mix = param(torch.stack((torch.ones(D), torch.zeros(D))), SCALAR)
        self.attn_scale = param(torch.ones(D), SCALAR)
        self.mlp_scale = param(torch.ones(D), SCALAR)
        self.norm_scale = 1.0 / math.sqrt(layer + 1) if cfg.residual.ln_scale else 1.0
        parallel = cfg.residual.parallel
        self.gptj = parallel.kind == "gptj" and layer >= parallel.start_layer

    def _norm(self, x_BTD: Tensor) -> Tensor:
        h_BTD = rms_norm(x_BTD)
        return h_BTD * self.norm_scale if self.norm_scale != 1.0 else h_BTD

    def _mix(self, x_BTD: Tensor, x0_BTD: Tensor) -> Tensor:
        mix_2D = self.resid_mix.to(x_BTD.dtype)
        return mix_2D[0] * x_BTD + mix_2D[1] * x0_BTD

    def _attn_out(self, h_BTD: Tensor, ve_BTC: Tensor | None, segments: Segments | None = None) -> Tensor:
        return self.attn_scale * self.attn(h_BTD, ve_BTC, segments)

    def _mlp_out(self, h_BTD: Tensor) -> Tensor:
        return self.mlp_scale * self.mlp(h_BTD)

    def forward(
        self, x_BTD: Tensor, x0_BTD: Tensor, ve_BTC: Tensor | None = None, segments: Segments | None = None
    ) -> Tensor:
        x_in_BTD = self._mix(x_BTD, x0_BTD)
        if self.gptj:
            h_BTD = self._norm(x_in_BTD)
            return x_in_BTD + self._attn_out(h_BTD, ve_BTC, segments) + self._mlp_out(h_BTD)
        x_BTD = x_in_BTD + self._attn_out(self._norm(x_in_BTD), ve_BTC, segments)
        return x_BTD + self._mlp_out(self._norm(x_BTD))

    def forward_lanes(
        self,
        lanes: tuple[Tensor, Tensor],
        x0_BTD: Tensor,
        ve_BTC: Tensor | None,
        resid_2: Tensor,
        post_22: Tensor,
        segments: Segments | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Two-lane step (#1204, #1530 -> #1855): attention reads mix(lane0, x0), the MLP
        reads lane1; lane_j <- r_j lane_j + P[attn, j] attn_out + P[mlp, j] mlp_out.

        #1204 README: the biggest single gain there (about -0.0037 nats); the learned routing is
        asymmetric (the MLP barely writes to the attention lane).
        """
        lane0_BTD, lane1_BTD = lanes
        a_BTD = self._attn_out(self._norm(self._mix(lane0_BTD, x0_BTD)), ve_BTC, segments)
        m_BTD = self._mlp_out(self._norm(lane1_BTD))
        new0_BTD = resid_2[0] * lane0_BTD + post_22[0, 0] * a_BTD + post_22[1, 0] * m_BTD
        new1_BTD = resid_2[1] * lane1_BTD + post_22[0, 1] * a_BTD + post_22[1, 1] * m_BTD
        return new0_BTD, new1_BTD


# --------------------------------------------------------------------------------------------------
# Layer plan: the loops + U-Net split + two-lane start
# --------------------------------------------------------------------------------------------------


def loop_layers(num_layers: int, loops: LoopsConfig, on: bool) -> tuple[int, ...]:
    """The physical block at each layer position: [0..s-1] + [s..e] * (count + 1) + [e+1..L-1] with the
    loops on, else [0..L-1].

    #1204 README: repeating layers 4, 5 is worth ~0.003-0.004 nats for zero extra parameters.
    """
    if not (on and loops.count):
        return tuple(range(num_layers))
    segment = list(range(loops.start, loops.end + 1))
    tail = range(loops.end + 1, num_layers)
    return tuple(range(loops.start)) + tuple(segment * (loops.count + 1)) + tuple(tail)


@dataclass(frozen=True)
class LayerPlan:
    """How one forward walks the physical blocks.

    layers: physical index at each position; the first ``num_encoder`` positions are the U-Net encoder.
    num_skips: skips applied (decoder position i < num_skips pops one encoder output).
    lane_start: position where the two lanes begin (len(layers) when they never do).
    """

    layers: tuple[int, ...]
    num_encoder: int
    num_skips: int
    lane_start: int

    @property
    def encoder(self) -> tuple[int, ...]:
        return self.layers[: self.num_encoder]

    @property
    def decoder(self) -> tuple[int, ...]:
        return self.layers[self.num_encoder :]


def layer_plan(cfg: ModelConfig, loops_on: bool) -> LayerPlan:
    """The plan for ``cfg`` with the loops on or off."""
    layers = loop_layers(cfg.num_layers, cfg.residual.loops, loops_on)
    num_encoder = len(layers) // 2
    num_skips = min(num_encoder, len(layers) - num_encoder)
    lane_start = len(layers)
    parallel = cfg.residual.parallel
    if parallel.kind == "two_lane":
        starts = [p for p in range(num_encoder, len(layers)) if layers[p] >= parallel.start_layer]
        lane_start = starts[0] if starts else len(layers)
    return LayerPlan(layers, num_encoder, num_skips, lane_start)


# --------------------------------------------------------------------------------------------------
# Skip and lane parameters
# --------------------------------------------------------------------------------------------------

# The two-lane resid lambdas start a little above 1, as in #1204 and #1855 (their code's init; no
# ablation logged): each lane carries slightly more than its own stream into the next layer at step 0.
LANE_RESID_INIT = 1.1


class SkipParams(NamedTuple):
    """U-Net skip weights (n_skip, D) init 1 and optional sigmoid gates (n_skip, D) init 0."""

    weights: Tensor | None
    gates: Tensor | None


class LaneParams(NamedTuple):
    """Two-lane lambdas of every physical layer: resid (L, 2) init LANE_RESID_INIT, post (L, 2, 2) init 1;
    both None without two lanes."""

    resid: Tensor | None
    post: Tensor | None


def skip_params(cfg: ModelConfig, num_skips: int) -> SkipParams:
    """New skip parameters for ``num_skips`` skips (sized with the loops on, the longest plan)."""
    if not num_skips:
        return SkipParams(None, None)
    D = cfg.model_dim
    weights = param(torch.ones(num_skips, D), SCALAR)
    gates = param(torch.zeros(num_skips, D), SCALAR) if cfg.residual.skip_gates else None
    return SkipParams(weights, gates)


def lane_params(cfg: ModelConfig) -> LaneParams:
    """New two-lane lambdas for ALL physical layers (as in #1855, whose logged count includes them)."""
    if cfg.residual.parallel.kind != "two_lane":
        return LaneParams(None, None)
    L = cfg.num_layers
    return LaneParams(param(torch.full((L, 2), LANE_RESID_INIT), SCALAR), param(torch.ones(L, 2, 2), SCALAR))


def merge_skip(x_BTD: Tensor, skip_BTD: Tensor, skips: SkipParams, i: int) -> Tensor:
    """Baseline: x + w_i skip. Gated (#1218+, from PR #1089): sigmoid(g_i) x + (1 - sigmoid(g_i)) w_i skip."""
    w_skip_BTD = skips.weights[i].to(x_BTD.dtype) * skip_BTD
    if skips.gates is None:
        return x_BTD + w_skip_BTD
    return torch.lerp(w_skip_BTD, x_BTD, torch.sigmoid(skips.gates[i]).to(x_BTD.dtype))


def run_blocks(
    blocks: nn.ModuleList,
    plan: LayerPlan,
    x0_BTD: Tensor,
    skips: SkipParams,
    lanes: LaneParams,
    ve_for: Callable[[int], Tensor | None],
    segments: Segments | None = None,
) -> Tensor:
    """Walk ``plan``: encoder outputs are stacked, decoder position i pops one (i < num_skips).

    From ``plan.lane_start`` on, two lanes start as copies of x; skips merge into lane 0 (the attention
    lane); the result is the mean of the lanes. ``ve_for(layer)`` gives a layer's value-embedding term;
    ``segments`` (the rows' document starts, or None) reaches every attention.
    """
    x_BTD, lane1_BTD = x0_BTD, None
    encoded: list[Tensor] = []
    for pos, layer in enumerate(plan.layers):
        block, ve_BTC = blocks[layer], ve_for(layer)
        if pos < plan.num_encoder:
            x_BTD = block(x_BTD, x0_BTD, ve_BTC, segments)
            encoded.append(x_BTD)
            continue
        if pos == plan.lane_start:
            lane1_BTD = x_BTD
        i = pos - plan.num_encoder
        if i < plan.num_skips:
            x_BTD = merge_skip(x_BTD, encoded.pop(), skips, i)
        if lane1_BTD is None:
            x_BTD = block(x_BTD, x0_BTD, ve_BTC, segments)
        else:
            x_BTD, lane1_BTD = block.forward_lanes(
                (x_BTD, lane1_BTD), x0_BTD, ve_BTC, lanes.resid[layer], lanes.post[layer], segments
            )
    return x_BTD if lane1_BTD is None else 0.5 * (x_BTD + lane1_BTD)

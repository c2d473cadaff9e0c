"""The GPT: composes the embedding-side modules, the blocks over the layer plan, and the tied head.

No trick logic lives here; each sits beside the component it changes (embeddings.py, attention.py,
mlp.py, residual.py), so a flag's code is one hop from its config key.

Shapes: B batch, T time, D model dim, V vocab, C kv dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.config import ModelConfig
from pgolf_core.model.attention import select_attention_backend
from pgolf_core.model.embeddings import (
    build_bigram,
    build_smear,
    build_value_embedding,
    embed_tokens,
    value_terms,
)
from pgolf_core.model.layers import linear, orthogonal_init_, rms_norm
from pgolf_core.model.logits import asym_softcap, asym_softcap_params, softcap
from pgolf_core.model.residual import (
    Block,
    LaneParams,
    LayerPlan,
    SkipParams,
    lane_params,
    layer_plan,
    run_blocks,
    skip_params,
)
from pgolf_core.model.roles import EMBED, HEAD, record_roles, set_role
from pgolf_core.model.varlen import Segments, bos_segments, packed_segments


def default_device() -> torch.device:
    """Where a freshly built model will most likely run: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GPT(nn.Module):
    """Decoder-only LM: logits = softcap(rms_norm(blocks(x0)) E^T), the baseline's skeleton plus the
    record tricks that ``cfg`` switches on.

    Args:
        cfg: the model section of the config.
        attn_backend: "fa3" | "fa2" | "sdpa"; None resolves ``cfg.attn_backend`` for ``default_device()``.
    """

    def __init__(self, cfg: ModelConfig, attn_backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.logit_softcap = cfg.logit_softcap
        self.attn_backend = attn_backend or select_attention_backend(cfg.attn_backend, default_device())
        D, V = cfg.model_dim, cfg.vocab_size
        # Construction order is the parameter order (optimizer groups, state dict, artifact) and the
        # order in which inits draw random numbers: keep it.
        self.tok_emb = nn.Embedding(V, D)
        if cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        set_role(self.tok_emb.weight, EMBED)
        self.bigram = build_bigram(cfg)
        self.smear = build_smear(cfg)
        self.value_embed = build_value_embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i, self.attn_backend) for i in range(cfg.num_layers))

        # Plans with the loops off and on; skip parameters are sized for the longer plan (loops on).
        self.plans = {False: layer_plan(cfg, False), True: layer_plan(cfg, True)}
        self.loops_on = False
        self.max_doc_len = cfg.attention.varlen.max_doc_len  # varlen's segment cap (set_max_doc_len)
        self.skip_weights, self.skip_gates = skip_params(cfg, self.plans[True].num_skips)
        self.parallel_resid_lambdas, self.parallel_post_lambdas = lane_params(cfg)
        self.lm_head = None if cfg.tie_embeddings else linear(D, V, HEAD, zero_init=True)
        self.softcap_pos = self.softcap_neg = None
        if cfg.logit_softcap_asym:  # no random draw: every other parameter keeps its init and order
            self.softcap_pos, self.softcap_neg = asym_softcap_params(cfg.logit_softcap)
        if cfg.ortho_init:
            orthogonal_init_(self)
        record_roles(self)  # roles survive copy.deepcopy (TTT, quantization work on copies)

    def set_loops(self, on: bool) -> None:
        """Depth recurrence on/off; stays off for a config without loops. torch.compile guards on it."""
        self.loops_on = bool(on) and self.cfg.residual.loops.count > 0

    def set_max_doc_len(self, n: int) -> None:
        """Varlen's document-segment cap (progressive context trains at each stage's length); a
        no-op without varlen. torch.compile guards on it, as on ``loops_on``."""
        if not self.cfg.attention.varlen.enabled:
            return
        self.max_doc_len = n
        for block in self.blocks:
            block.attn.max_doc_len = n  # the flash kernels' bound on a segment's length

    @property
    def plan(self) -> LayerPlan:
        """The layer plan of the current loops state."""
        return self.plans[self.loops_on]

    def embed(self, input_ids_BT: Tensor) -> Tensor:
        """x0, the block input (embeddings.embed_tokens)."""
        return embed_tokens(input_ids_BT, self.tok_emb, self.bigram, self.smear)

    def segments(self, input_ids_BT: Tensor) -> Segments | None:
        """The rows' document starts for attention: varlen segments (model.attention.varlen), else the
        BOS tokens when the key offset masks at them, else None (attention reads no boundaries)."""
        ac = self.cfg.attention
        if ac.varlen.enabled:
            return packed_segments(input_ids_BT, self.max_doc_len)
        if ac.key_offset.enabled and ac.key_offset.bos_fix:
            return bos_segments(input_ids_BT)
        return None

    def hidden(self, input_ids_BT: Tensor) -> Tensor:
        """The final-normed hidden state (B, T, D) that the head reads."""
        x0_BTD = self.embed(input_ids_BT)
        ve_for = value_terms(self.value_embed, input_ids_BT)
        skips = SkipParams(self.skip_weights, self.skip_gates)
        lanes = LaneParams(self.parallel_resid_lambdas, self.parallel_post_lambdas)
        segments = self.segments(input_ids_BT)
        return rms_norm(run_blocks(self.blocks, self.plan, x0_BTD, skips, lanes, ve_for, segments))

    def softcap(self, z_BTV: Tensor) -> Tensor:
        """fp32 capped logits: c * tanh(z / c); in eval mode (evaluation, TTT) with logit_softcap_asym,
        the AsymLogit map of the two scalars (logits.py), identical to c * tanh(z / c) at init."""
        if self.softcap_pos is not None and not self.training:
            return asym_softcap(z_BTV, self.softcap_pos, self.softcap_neg)
        return softcap(z_BTV, self.logit_softcap)

    def logits(self, input_ids_BT: Tensor) -> Tensor:
        """(B, T, V) fp32 logits after the softcap (``softcap``)."""
        h_BTD = self.hidden(input_ids_BT)
        if self.lm_head is None:
            z_BTV = F.linear(h_BTD, self.tok_emb.weight)
        else:
            z_BTV = self.lm_head(h_BTD)
        return self.softcap(z_BTV)

    def nll(self, input_ids_BT: Tensor, target_ids_BT: Tensor) -> Tensor:
        """(B, T) fp32 per-token negative log-likelihood in nats."""
        logits_BTV = self.logits(input_ids_BT)
        nll_N = F.cross_entropy(logits_BTV.flatten(0, 1), target_ids_BT.flatten(), reduction="none")
        return nll_N.view_as(target_ids_BT)

    def forward(self, input_ids_BT: Tensor, target_ids_BT: Tensor | None = None) -> Tensor:
        """Logits (B, T, V) without targets; with targets the mean CE over all positions (fp32 scalar)."""
        logits_BTV = self.logits(input_ids_BT)
        if target_ids_BT is None:
            return logits_BTV
        return F.cross_entropy(logits_BTV.flatten(0, 1), target_ids_BT.flatten())


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> GPT:
    """The GPT of ``cfg`` with fp32 parameters on CPU; the attention backend is chosen once, here, for
    the device the model will run on (``device``, default: CUDA when available)."""
    backend = select_attention_backend(cfg.attn_backend, torch.device(device) if device else default_device())
    return GPT(cfg, attn_backend=backend)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (tied embeddings counted once), the AsymLogit scalars included: they are
    parameters the training optimizer never sees (no gradient there), and #2135's logged 35,945,673 is
    #1855's 35,945,671 plus these two."""
    return sum(p.numel() for p in model.parameters())

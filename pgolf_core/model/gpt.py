"""The GPT: composes the embedding-side modules, the blocks over the layer plan, and the tied head.

No trick logic lives here; each sits beside the component it changes (style.md G4/G5).

Shapes: B batch, T time, D model dim, V vocab, C kv dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.config import ModelConfig
from pgolf_core.model.attention import select_attention_backend
from pgolf_core.model.embeddings import BigramHash, SmearGateV2, ValueEmbedding, build_smear
from pgolf_core.model.layers import linear, orthogonal_init_, param, rms_norm
from pgolf_core.model.residual import Block, LaneParams, LayerPlan, SkipParams, layer_plan, run_blocks
from pgolf_core.model.roles import EMBED, HEAD, SCALAR, record_roles, set_role


def default_device() -> torch.device:
    """Where a freshly built model will most likely run: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GPT(nn.Module):
    """Decoder-only LM of records.md B: logits = softcap(rms_norm(blocks(x0)) E^T).

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
        self.tok_emb = nn.Embedding(V, D)
        if cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        set_role(self.tok_emb.weight, EMBED)
        self.bigram = BigramHash(cfg.bigram_vocab, cfg.bigram_dim, D) if cfg.bigram_vocab else None
        self.smear = build_smear(cfg)
        kv_dim = cfg.num_kv_heads * (D // cfg.num_heads)
        use_ve = cfg.ve_dim and cfg.ve_layers
        self.value_embed = ValueEmbedding(V, cfg.ve_dim, kv_dim, cfg.ve_layers) if use_ve else None
        self.blocks = nn.ModuleList(Block(cfg, i, self.attn_backend) for i in range(cfg.num_layers))

        # Plans for both looping states; skip parameters are sized with looping ON (records.md B6).
        self.plans = {False: layer_plan(cfg, False), True: layer_plan(cfg, True)}
        self.looping = False
        n_skip = self.plans[True].num_skips
        self.skip_weights = param(torch.ones(n_skip, D), SCALAR) if n_skip else None
        self.skip_gates = param(torch.zeros(n_skip, D), SCALAR) if n_skip and cfg.skip_gates else None
        # Two-lane lambdas exist for ALL layers (as in #1855, whose logged count includes them).
        self.parallel_resid_lambdas = self.parallel_post_lambdas = None
        if cfg.parallel_residual == "two_lane":
            self.parallel_resid_lambdas = param(torch.full((cfg.num_layers, 2), 1.1), SCALAR)
            self.parallel_post_lambdas = param(torch.ones(cfg.num_layers, 2, 2), SCALAR)
        self.lm_head = None if cfg.tie_embeddings else linear(D, V, HEAD, zero_init=True)
        if cfg.ortho_init:
            orthogonal_init_(self)
        record_roles(self)  # roles survive copy.deepcopy (TTT, quantization work on copies)

    def set_looping(self, enabled: bool) -> None:
        """Depth recurrence on/off (a no-op without num_loops); torch.compile guards on the flag."""
        self.looping = bool(enabled)

    @property
    def plan(self) -> LayerPlan:
        """The layer plan of the current looping state."""
        return self.plans[self.looping]

    def embed(self, input_ids_BT: Tensor) -> Tensor:
        """x0: token embedding (+ bigram, + smear v2) -> RMS norm (-> smear v1)."""
        x_BTD = self.tok_emb(input_ids_BT)
        if self.bigram is not None:
            x_BTD = x_BTD + self.bigram(input_ids_BT)
        if isinstance(self.smear, SmearGateV2):
            x_BTD = self.smear(x_BTD, input_ids_BT)
        x_BTD = rms_norm(x_BTD)
        if self.smear is not None and not isinstance(self.smear, SmearGateV2):
            x_BTD = self.smear(x_BTD)
        return x_BTD

    def hidden(self, input_ids_BT: Tensor) -> Tensor:
        """The final-normed hidden state (B, T, D) that the head reads."""
        x0_BTD = self.embed(input_ids_BT)
        ve_BTC = self.value_embed(input_ids_BT) if self.value_embed is not None else None

        def ve_for(layer: int) -> Tensor | None:
            return None if ve_BTC is None else self.value_embed.for_layer(ve_BTC, layer)

        lanes = None
        if self.parallel_resid_lambdas is not None:
            lanes = LaneParams(self.parallel_resid_lambdas, self.parallel_post_lambdas)
        skips = SkipParams(self.skip_weights, self.skip_gates)
        return rms_norm(run_blocks(self.blocks, self.plan, x0_BTD, skips, lanes, ve_for))

    def logits(self, input_ids_BT: Tensor) -> Tensor:
        """(B, T, V) fp32 logits after the softcap c * tanh(z / c) (records.md B1)."""
        h_BTD = self.hidden(input_ids_BT)
        if self.lm_head is None:
            z_BTV = F.linear(h_BTD, self.tok_emb.weight)
        else:
            z_BTV = self.lm_head(h_BTD)
        c = self.logit_softcap
        return c * torch.tanh(z_BTV.float() / c)

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
    """Number of trainable parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

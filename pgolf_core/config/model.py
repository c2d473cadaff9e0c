"""The model section: the GPT's shape and every record trick, each a flag whose default is off."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pgolf_core.config.section import Section


class ModelConfig(Section):
    """The GPT. Defaults are the challenge baseline (9x512, 8 heads / 4 KV heads, relu^2 MLP 2x).

    Every record trick is a flag whose default is off (records.md B); its code sits next to the
    component it changes in pgolf_core/model/.
    """

    vocab_size: int = Field(1024, gt=0, lt=65536, description="must equal the tokenizer's vocab size")
    num_layers: int = Field(9, gt=0, description="physical blocks")
    model_dim: int = Field(512, gt=0)
    num_heads: int = Field(8, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    mlp_mult: float = Field(2.0, gt=0, description="MLP hidden = int(mlp_mult * model_dim)")
    activation: Literal["relu2", "leaky_relu2"] = Field("relu2", description="leaky_relu2: PR #549, -0.003 bpb")
    leaky_slope: float = Field(0.5, ge=0, description="negative slope of leaky_relu2")
    tie_embeddings: bool = True
    tied_embed_init_std: float = Field(0.005, ge=0)
    rope_base: float = Field(10000.0, gt=0)
    rope_dims: int = Field(0, ge=0, description="rotated dims per head (0: all; records use 16 of 64)")
    rope_train_seq_len: int = Field(0, ge=0, description="NTK base rescale beyond this length (0: off; #549 used 1024)")
    q_gain_init: float = Field(1.5, description="per-head query gain after q/k RMS norm")
    logit_softcap: float = Field(30.0, gt=0, description="logits = c * tanh(z / c)")
    ln_scale: bool = Field(False, description="scale normalized block inputs by 1/sqrt(layer+1) (#549)")
    xsa_last_n: int = Field(0, ge=0, description="exclusive self-attention on the last N physical layers")
    skip_gates: bool = Field(False, description="sigmoid-gated U-Net skips (#1218 on)")
    loop_start: int = Field(0, ge=0, description="depth recurrence: first physical block of the looped segment")
    loop_end: int = Field(0, ge=0, description="depth recurrence: last physical block of the segment (inclusive)")
    num_loops: int = Field(0, ge=0, description="extra passes over the segment (0: no recurrence)")
    loop_enable_frac: float = Field(0.0, ge=0, le=1, description="training-time fraction at which looping turns on")
    parallel_residual: Literal["none", "gptj", "two_lane"] = Field("none", description="gptj: #1412/#1493; two_lane: #1204/#1855")
    parallel_start_layer: int = Field(7, ge=0, description="first physical layer with parallel residuals")
    smear_gate: Literal["none", "v1", "v2"] = Field("none", description="v1: #549 (after norm); v2: #1667+ (before norm)")
    smear_width: int = Field(12, gt=0, description="v2: input dims of the smear gate")
    smear_bos_fix: bool = Field(True, description="v2: no smear into a BOS token (#1851 fix)")
    bigram_vocab: int = Field(0, ge=0, description="BigramHash buckets (0: off; #549 used 1536)")
    bigram_dim: int = Field(128, gt=0)
    ve_dim: int = Field(0, ge=0, description="value-embedding width (0: off; #549 used 128)")
    ve_layers: list[int] = Field(default_factory=list, description="physical layers whose V gets the value embedding")
    attn_gate: Literal["none", "dense", "sparse"] = Field("none", description="dense: #1736; sparse: #1787+")
    attn_gate_width: int = Field(12, gt=0, description="sparse gate: input dims")
    attn_gate_scale: float = Field(1.0, description="sparse gate: logit scale c")
    attn_gate_init_std: float = Field(0.005, ge=0, description="dense gate: init std")
    window_size: int = Field(0, ge=0, description="sliding-window attention span in tokens (0: full causal)")
    window_layers: list[int] = Field(default_factory=list, description="physical layers with the window (empty: all)")
    ortho_init: bool = Field(False, description="orthogonal init of matrices with both dims >= 64 (#549)")
    attn_backend: Literal["auto", "fa3", "fa2", "sdpa"] = Field("auto", description="auto: FA3, then FA2, then SDPA")

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        L = self.num_layers
        if self.model_dim % self.num_heads:
            raise ValueError(f"model.model_dim ({self.model_dim}) must be divisible by model.num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_heads ({self.num_heads}) must be divisible by model.num_kv_heads ({self.num_kv_heads})")
        head_dim = self.model_dim // self.num_heads
        if head_dim % 2:
            raise ValueError("model.model_dim / model.num_heads (the head dim) must be even for RoPE")
        if self.rope_dims % 2 or self.rope_dims > head_dim:
            raise ValueError(f"model.rope_dims ({self.rope_dims}) must be even and at most the head dim ({head_dim})")
        if self.xsa_last_n > L:
            raise ValueError(f"model.xsa_last_n ({self.xsa_last_n}) exceeds model.num_layers ({L})")
        if self.num_loops and not (self.loop_start <= self.loop_end < L):
            raise ValueError(f"model.loop_start..loop_end ({self.loop_start}..{self.loop_end}) must lie in 0..{L - 1}")
        for key in ("ve_layers", "window_layers"):
            bad = [i for i in getattr(self, key) if not 0 <= i < L]
            if bad:
                raise ValueError(f"model.{key} has layers {bad} outside 0..{L - 1}")
        if self.ve_layers and not self.ve_dim:
            raise ValueError("model.ve_layers is set but model.ve_dim is 0; set model.ve_dim (e.g. 128)")
        if self.bigram_vocab == 1:
            raise ValueError("model.bigram_vocab must be 0 (off) or at least 2")
        if self.smear_width > self.model_dim or self.attn_gate_width > self.model_dim:
            raise ValueError("model.smear_width and model.attn_gate_width must not exceed model.model_dim")
        return self


"""The model section, grouped like the files of pgolf_core/model/ that implement it.

    model:                      # the shape: vocab, layers, width, heads, head, softcap, init, kernel
      attention:  {q_gain_init, xsa_last_n, gate: {kind, width, scale, init_std}, window: {size, layers},
                   varlen: {enabled, max_doc_len}, key_offset: {enabled, layers, bos_fix}}
      rotary:     {base, dims, train_seq_len}
      mlp:        {mult, activation, leaky_slope}
      embeddings: {bigram: {buckets, dim, bos_fix}, value: {dim, layers}, smear: {kind, width, bos_fix}}
      residual:   {ln_scale, skip_gates, loops: {start, end, count, enable_frac},
                   parallel: {kind, start_layer}}

Defaults are the challenge baseline (9x512, 8 heads / 4 KV heads, relu^2 MLP 2x); every record trick is
a flag whose default is off. ``RENAMED_MODEL_KEYS`` maps the flat names of the previous release to
their dotted keys, so an old params file gets a one-line hint instead of "unknown key".
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pgolf_core.config.section import Section

# --------------------------------------------------------------------------------------------------
# model.attention (pgolf_core/model/attention.py)
# --------------------------------------------------------------------------------------------------


class AttentionGateConfig(Section):
    """A sigmoid gate per head on the attention output (model.attention.gate)."""

    kind: Literal["none", "dense", "sparse"] = Field("none", description="dense: #1736; sparse: #1787+")
    width: int = Field(12, gt=0, description="sparse: input dims of the gate")
    scale: float = Field(1.0, description="sparse: logit scale c (#1855: 0.5)")
    init_std: float = Field(0.005, ge=0, description="dense: init std of the gate weight")


class WindowConfig(Section):
    """Sliding-window attention (model.attention.window): #1512 windows layers 0-5 at 256 keys."""

    size: int = Field(0, ge=0, description="span in tokens (0: full causal)")
    layers: list[int] = Field(
        default_factory=list, description="physical layers with the window (empty: all)"
    )


class VarlenConfig(Section):
    """Document-masked attention over packed rows (model.attention.varlen; #1530, pgolf_core/model/varlen.py).

    Each row is cut into segments at every BOS (a leading partial document is a segment too) and every
    ``max_doc_len`` tokens of a longer document; attention stays inside its segment. #1530 README: ~2%
    faster and ~0.001 nats better than attention across document boundaries.
    """

    enabled: bool = Field(False, description="attend within documents only (#1530: ~2% faster, ~0.001 nats)")
    max_doc_len: int = Field(
        2048, gt=0, description="longest segment; longer documents are cut (#1530: 2048)"
    )


class KeyOffsetConfig(Section):
    """Partial key offset (model.attention.key_offset; #1512, from modded-nanogpt).

    After q/k RMS norm and partial RoPE, the key's non-rotary dims at position t take the values of
    position t - 1 (position 0 keeps its own): a query can find the token AFTER an earlier match, a
    one-layer induction head, for zero parameters. #1512 (layers 6-10 of 11, with QK gain 2.5):
    1.1259 -> 1.1226 pre-quant, 1.1165 -> 1.1139 sliding (single seed).
    """

    enabled: bool = Field(False, description="shift the non-rotary key dims by one position (#1512)")
    layers: list[int] = Field(
        default_factory=list, description="physical layers with the offset (empty: all; #1512: 6..10)"
    )
    bos_fix: bool = Field(
        True, description="a document's first key keeps its own values (#1512 did not mask: set false)"
    )


class AttentionConfig(Section):
    """Causal self-attention: query gain, XSA, output gate, sliding window, varlen, key offset."""

    q_gain_init: float = Field(1.5, description="per-head query gain after q/k RMS norm")
    xsa_last_n: int = Field(0, ge=0, description="exclusive self-attention on the last N physical layers")
    gate: AttentionGateConfig = AttentionGateConfig()
    window: WindowConfig = WindowConfig()
    varlen: VarlenConfig = VarlenConfig()
    key_offset: KeyOffsetConfig = KeyOffsetConfig()


# --------------------------------------------------------------------------------------------------
# model.rotary (pgolf_core/model/rotary.py), model.mlp (pgolf_core/model/mlp.py)
# --------------------------------------------------------------------------------------------------


class RotaryConfig(Section):
    """RoPE: base, partial rotation, NTK rescale."""

    base: float = Field(10000.0, gt=0)
    dims: int = Field(0, ge=0, description="rotated dims per head (0: all; records use 16 of 64)")
    train_seq_len: int = Field(
        0, ge=0, description="NTK base rescale beyond this length (0: off; #549 used 1024)"
    )


class MLPConfig(Section):
    """The block MLP: width and activation."""

    mult: float = Field(2.0, gt=0, description="hidden = int(mult * model_dim)")
    activation: Literal["relu2", "leaky_relu2"] = Field("relu2", description="leaky_relu2: #549, -0.003 bpb")
    leaky_slope: float = Field(0.5, ge=0, description="leaky_relu2: negative slope")


# --------------------------------------------------------------------------------------------------
# model.embeddings (pgolf_core/model/embeddings.py)
# --------------------------------------------------------------------------------------------------


class BigramConfig(Section):
    """BigramHash: a hashed (previous, current) token-pair table added to the token embedding."""

    buckets: int = Field(0, ge=0, description="table rows (0: off; #549 used 1536)")
    dim: int = Field(128, gt=0, description="table width")
    bos_fix: bool = Field(
        False,
        description="a BOS hashes as a stream start, not with the previous document's last token "
        "(off: #549/#1019 hashed across documents)",
    )

    @model_validator(mode="after")
    def _buckets(self) -> BigramConfig:
        if self.buckets == 1:
            raise ValueError("model.embeddings.bigram.buckets must be 0 (off) or at least 2")
        return self


class ValueEmbeddingConfig(Section):
    """A shared token table whose projection is added to V in a few layers."""

    dim: int = Field(0, ge=0, description="table width (0: off; #549 used 128)")
    layers: list[int] = Field(default_factory=list, description="physical layers whose V gets the term")

    @model_validator(mode="after")
    def _layers_need_dim(self) -> ValueEmbeddingConfig:
        if self.layers and not self.dim:
            raise ValueError(
                "model.embeddings.value.layers is set but model.embeddings.value.dim is 0; "
                "set model.embeddings.value.dim (e.g. 128)"
            )
        return self


class SmearConfig(Section):
    """SmearGate: each position mixes in the previous one."""

    kind: Literal["none", "v1", "v2"] = Field(
        "none", description="v1: #549 (after norm); v2: #1667+ (before norm)"
    )
    width: int = Field(12, gt=0, description="v2: input dims of the gate")
    bos_fix: bool | None = Field(
        None,
        description="no smear into a BOS token (#1851 fix of the #1797 leak); None: as the kind's "
        "record (v1 off: #549 had no fix; v2 on: #1851/#1855)",
    )

    @property
    def bos_fixed(self) -> bool:
        """Whether the previous-token term is zeroed at a BOS for this kind."""
        return self.bos_fix if self.bos_fix is not None else self.kind == "v2"


class EmbeddingsConfig(Section):
    """The embedding-side modules besides the token embedding."""

    bigram: BigramConfig = BigramConfig()
    value: ValueEmbeddingConfig = ValueEmbeddingConfig()
    smear: SmearConfig = SmearConfig()


# --------------------------------------------------------------------------------------------------
# model.residual (pgolf_core/model/residual.py)
# --------------------------------------------------------------------------------------------------


class LoopsConfig(Section):
    """Depth recurrence: the blocks start..end run 1 + count times per forward once the loops are on."""

    start: int = Field(0, ge=0, description="first physical block of the looped segment")
    end: int = Field(0, ge=0, description="last physical block of the looped segment (inclusive)")
    count: int = Field(0, ge=0, description="extra passes over the segment (0: no loops)")
    enable_frac: float = Field(
        0.0, ge=0, le=1, description="training-time fraction at which the loops turn on"
    )


class ParallelConfig(Section):
    """Parallel residuals from ``start_layer`` on."""

    kind: Literal["none", "gptj", "two_lane"] = Field(
        "none", description="gptj: #1412/#1493; two_lane: #1204/#1855"
    )
    start_layer: int = Field(7, ge=0, description="first physical layer with parallel residuals")


class ResidualConfig(Section):
    """The residual stream: norm scale, U-Net skip gates, depth recurrence, parallel residuals."""

    ln_scale: bool = Field(False, description="scale normalized block inputs by 1/sqrt(layer+1) (#549)")
    skip_gates: bool = Field(False, description="sigmoid-gated U-Net skips (#1218 on)")
    loops: LoopsConfig = LoopsConfig()
    parallel: ParallelConfig = ParallelConfig()


# --------------------------------------------------------------------------------------------------
# model (pgolf_core/model/gpt.py composes the rest)
# --------------------------------------------------------------------------------------------------


class ModelConfig(Section):
    """The GPT: its shape at this level, each component's knobs in the sub-section named for its file."""

    vocab_size: int = Field(1024, gt=0, lt=65536, description="must equal the tokenizer's vocab size")
    num_layers: int = Field(9, gt=0, description="physical blocks")
    model_dim: int = Field(512, gt=0)
    num_heads: int = Field(8, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    tie_embeddings: bool = True
    tied_embed_init_std: float = Field(0.005, ge=0)
    logit_softcap: float = Field(30.0, gt=0, description="logits = c * tanh(z / c)")
    logit_softcap_asym: bool = Field(
        False,
        description="AsymLogit rescale (#1923): eval/TTT logits use two scalars (positive / negative z) "
        "initialised to logit_softcap, trained only by the phased-TTT global pass; -0.00129 bpb TTT gain",
    )
    ortho_init: bool = Field(False, description="orthogonal init of matrices with both dims >= 64 (#549)")
    attn_backend: Literal["auto", "fa3", "fa2", "sdpa"] = Field(
        "auto", description="auto: FA3, then FA2, then SDPA"
    )
    attention: AttentionConfig = AttentionConfig()
    rotary: RotaryConfig = RotaryConfig()
    mlp: MLPConfig = MLPConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    residual: ResidualConfig = ResidualConfig()

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        L, D = self.num_layers, self.model_dim
        if D % self.num_heads:
            raise ValueError(f"model.model_dim ({D}) must be divisible by model.num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads ({self.num_heads}) must be divisible by "
                f"model.num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError("model.model_dim / model.num_heads (the head dim) must be even for RoPE")
        dims = self.rotary.dims
        if dims % 2 or dims > self.head_dim:
            raise ValueError(
                f"model.rotary.dims ({dims}) must be even and at most the head dim ({self.head_dim})"
            )
        attn, emb, loops = self.attention, self.embeddings, self.residual.loops
        if attn.xsa_last_n > L:
            raise ValueError(f"model.attention.xsa_last_n ({attn.xsa_last_n}) exceeds model.num_layers ({L})")
        if loops.count and not (loops.start <= loops.end < L):
            raise ValueError(
                f"model.residual.loops.start..end ({loops.start}..{loops.end}) must lie in 0..{L - 1}"
            )
        if attn.key_offset.enabled and not 0 < dims < self.head_dim:
            raise ValueError(
                f"model.attention.key_offset shifts the non-rotary key dims: it needs partial RoPE, "
                f"0 < model.rotary.dims < {self.head_dim} (got {dims}; #1512 used 16 of 64)"
            )
        for key, layers in (
            ("embeddings.value.layers", emb.value.layers),
            ("attention.window.layers", attn.window.layers),
            ("attention.key_offset.layers", attn.key_offset.layers),
        ):
            bad = [i for i in layers if not 0 <= i < L]
            if bad:
                raise ValueError(f"model.{key} has layers {bad} outside 0..{L - 1}")
        for key, width in (
            ("embeddings.smear.width", emb.smear.width),
            ("attention.gate.width", attn.gate.width),
        ):
            if width > D:
                raise ValueError(f"model.{key} ({width}) must not exceed model.model_dim ({D})")
        return self


# The flat names of the previous release -> their dotted keys under model. Kept for one release so that
# an old params file (or --set) gets "model.X was renamed to model.Y" instead of an unknown-key list.
RENAMED_MODEL_KEYS = {
    "q_gain_init": "attention.q_gain_init",
    "xsa_last_n": "attention.xsa_last_n",
    "attn_gate": "attention.gate.kind",
    "attn_gate_width": "attention.gate.width",
    "attn_gate_scale": "attention.gate.scale",
    "attn_gate_init_std": "attention.gate.init_std",
    "window_size": "attention.window.size",
    "window_layers": "attention.window.layers",
    "rope_base": "rotary.base",
    "rope_dims": "rotary.dims",
    "rope_train_seq_len": "rotary.train_seq_len",
    "mlp_mult": "mlp.mult",
    "activation": "mlp.activation",
    "leaky_slope": "mlp.leaky_slope",
    "bigram_vocab": "embeddings.bigram.buckets",
    "bigram_dim": "embeddings.bigram.dim",
    "ve_dim": "embeddings.value.dim",
    "ve_layers": "embeddings.value.layers",
    "smear_gate": "embeddings.smear.kind",
    "smear_width": "embeddings.smear.width",
    "smear_bos_fix": "embeddings.smear.bos_fix",
    "ln_scale": "residual.ln_scale",
    "skip_gates": "residual.skip_gates",
    "loop_start": "residual.loops.start",
    "loop_end": "residual.loops.end",
    "num_loops": "residual.loops.count",
    "loop_enable_frac": "residual.loops.enable_frac",
    "parallel_residual": "residual.parallel.kind",
    "parallel_start_layer": "residual.parallel.start_layer",
}

"""Embedding-side modules: BigramHash, value embeddings, SmearGate v1 and v2, and ``embed_tokens``,
which turns token ids into the block input x0 (the order of bigram, smear and norm lives here).

The token embedding itself (tied with the LM head) is a plain ``nn.Embedding`` owned by gpt.py.
Config: ``model.embeddings.{bigram, value, smear}``.

BOS safety: in a packed row the token before a BOS is the previous document's last one. Each
previous-token feature (bigram, smear v1, smear v2) has a ``bos_fix`` that makes a BOS read nothing of
it, exactly as position 0 does (the #1797 leak, fixed for smear v2 in #1851). Their defaults are the
records' behaviour (v2 fixed; v1 and bigram not), so existing record configs give identical outputs.

Shapes: B batch, T time, D model dim, E bigram dim, V_b bigram buckets, C kv dim, N value-embedding
dim, W smear-gate input width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pgolf_core.config import ModelConfig
from pgolf_core.data.tokenizer import BOS_ID
from pgolf_core.model.layers import linear, param, rms_norm, shift_right
from pgolf_core.model.roles import SCALAR, TABLE, set_role

# Multipliers of the bigram hash (the #549/#1019 form; the first BigramHash record hashed 31 prev + cur).
BIGRAM_MUL_CUR, BIGRAM_MUL_PREV = 36313, 27191

# Inits of #549/#1019 (their code; no ablation of these values was logged). The bigram table starts at
# zero, so its output scale only sets how strongly the first gradients reach the table; the value
# embedding's projection starts at zero, so its table std and scale do the same for the projection.
BIGRAM_SCALE_INIT = 0.05
VALUE_TABLE_INIT_STD = 0.01
VALUE_SCALE_INIT = 0.1


def bigram_buckets(ids_BT: Tensor, buckets: int, bos_fix: bool = False) -> Tensor:
    """(36313 t_i XOR 27191 t_{i-1}) mod (V_b - 1) for i > 0; position 0 gets the reserved bucket V_b - 1.

    With ``bos_fix`` a BOS also gets the reserved bucket, as if it started the stream: its pair would
    otherwise be (previous document's last token, BOS), the same cross-document leak as the smear
    gate's (#1797).
    """
    ids_BT = ids_BT.long()
    mixed_BT = torch.bitwise_xor(BIGRAM_MUL_CUR * ids_BT[:, 1:], BIGRAM_MUL_PREV * ids_BT[:, :-1])
    first_B1 = torch.full_like(ids_BT[:, :1], buckets - 1)
    out_BT = torch.cat((first_B1, mixed_BT % (buckets - 1)), dim=1)
    return torch.where(ids_BT == BOS_ID, buckets - 1, out_BT) if bos_fix else out_BT


def not_bos(ids_BT: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T, 1): 0 where the token is BOS, 1 elsewhere (multiplies a previous-token term)."""
    return (ids_BT != BOS_ID).unsqueeze(-1).to(dtype)


class BigramHash(nn.Module):
    """A hashed (previous, current) token-pair embedding added to the token embedding before the norm.

    Table V_b x E (zero-init) -> projection E -> D -> times a learnable scalar (BIGRAM_SCALE_INIT). Sizes:
    1536 x 128 in #549, 3072 x 112 in #1019; the 2026-03-20_10L_Int5MLP_MuonWD04_SWA50 record measured
    10240 buckets 0.001 bpb better than 4096.
    The projection gets a non-zero init (default Linear, orthogonal under ortho_init): with both the
    table and the projection at zero neither would ever receive a gradient.
    """

    def __init__(self, buckets: int, bigram_dim: int, model_dim: int, bos_fix: bool = False):
        super().__init__()
        self.buckets, self.bos_fix = buckets, bos_fix
        self.table = nn.Embedding(buckets, bigram_dim)
        nn.init.zeros_(self.table.weight)
        set_role(self.table.weight, TABLE)
        self.proj = linear(bigram_dim, model_dim, SCALAR)
        self.scale = param(torch.tensor(BIGRAM_SCALE_INIT), SCALAR)

    def forward(self, ids_BT: Tensor) -> Tensor:
        e_BTE = self.table(bigram_buckets(ids_BT, self.buckets, self.bos_fix))
        return self.proj(e_BTE) * self.scale


class ValueEmbedding(nn.Module):
    """A shared token table whose projection is added to V in a few layers (#549/#1019: layers 9, 10).

    Table vocab x N ~ N(0, VALUE_TABLE_INIT_STD^2) -> projection N -> C (zero-init) -> times a scalar
    (VALUE_SCALE_INIT), then times a per-layer scalar (init 1) in each layer of ``layers``. Removed from
    #1394 on.
    """

    def __init__(self, vocab_size: int, ve_dim: int, kv_dim: int, layers: list[int]):
        super().__init__()
        self.table = nn.Embedding(vocab_size, ve_dim)
        nn.init.normal_(self.table.weight, std=VALUE_TABLE_INIT_STD)
        set_role(self.table.weight, TABLE)
        self.proj = linear(ve_dim, kv_dim, SCALAR, zero_init=True)
        self.scale = param(torch.tensor(VALUE_SCALE_INIT), SCALAR)
        self.layer_scales = param(torch.ones(len(layers)), SCALAR)
        self.slot = {layer: i for i, layer in enumerate(layers)}

    def forward(self, ids_BT: Tensor) -> Tensor:
        """The shared term (B, T, C), computed once per forward."""
        return self.proj(self.table(ids_BT)) * self.scale

    def for_layer(self, ve_BTC: Tensor, layer: int) -> Tensor | None:
        """The term physical ``layer`` adds to its V, or None when the layer takes none."""
        slot = self.slot.get(layer)
        return None if slot is None else ve_BTC * self.layer_scales[slot]


class SmearGate(nn.Module):
    """SmearGate v1: x_t <- (1 - s) x_t + s x_{t-1}, s = sigmoid(g), g (D,) zero-init.

    Applied after the embedding RMS norm; gives every position a cheap look at the previous token.
    From 2026-03-20_Int6_MLP3x_SmearGate_BigramHash_MuonWD_SWA, kept by #549/#1019 (without a BOS fix).
    ``bos_fix``: x_{t-1} counts as zero where the current token is BOS, exactly as at position 0, so a
    document start reads nothing of the previous document (the #1851 rule applied to v1).
    """

    def __init__(self, dim: int, bos_fix: bool = False):
        super().__init__()
        self.bos_fix = bos_fix
        self.gate = param(torch.zeros(dim), SCALAR)

    def forward(self, x_BTD: Tensor, ids_BT: Tensor | None = None) -> Tensor:
        s_D = torch.sigmoid(self.gate).to(x_BTD.dtype)
        prev_BTD = shift_right(x_BTD)
        if self.bos_fix and ids_BT is not None:
            prev_BTD = prev_BTD * not_bos(ids_BT, prev_BTD.dtype)
        return x_BTD + s_D * (prev_BTD - x_BTD)


class SmearGateV2(nn.Module):
    """SmearGate v2 (#1667 -> #1855): x_t <- x_t + lam * sigmoid(w . x_t[:W]) * x_{t-1} for t >= 1.

    Acts on the raw embedding BEFORE the RMS norm; w (W,) and lam are zero-init, so it starts as the
    identity (13 params at W = 12). BOS fix (#1851/#1855): the term is zeroed where the CURRENT token is
    BOS, so the last token of one document cannot leak into the next document's BOS in packed streams.
    """

    def __init__(self, width: int, bos_fix: bool = True):
        super().__init__()
        self.width, self.bos_fix = width, bos_fix
        self.weight = param(torch.zeros(width), SCALAR)
        self.lam = param(torch.tensor(0.0), SCALAR)

    def forward(self, x_BTD: Tensor, ids_BT: Tensor) -> Tensor:
        # Elementwise dot keeps the gate in fp32 under autocast (W is only 12 wide).
        logit_BT1 = (x_BTD[..., : self.width] * self.weight).sum(-1, keepdim=True)
        term_BTD = (self.lam * torch.sigmoid(logit_BT1)) * shift_right(x_BTD)
        if self.bos_fix:
            term_BTD = term_BTD * not_bos(ids_BT, term_BTD.dtype)
        return x_BTD + term_BTD


def build_bigram(cfg: ModelConfig) -> BigramHash | None:
    """The BigramHash of ``model.embeddings.bigram``, or None when it is off (0 buckets)."""
    bc = cfg.embeddings.bigram
    return BigramHash(bc.buckets, bc.dim, cfg.model_dim, bc.bos_fix) if bc.buckets else None


def build_value_embedding(cfg: ModelConfig) -> ValueEmbedding | None:
    """The value embedding of ``model.embeddings.value``, or None without a width or layers."""
    vc = cfg.embeddings.value
    if not (vc.dim and vc.layers):
        return None
    return ValueEmbedding(cfg.vocab_size, vc.dim, cfg.num_kv_heads * cfg.head_dim, vc.layers)


def build_smear(cfg: ModelConfig) -> SmearGate | SmearGateV2 | None:
    """The smear gate ``model.embeddings.smear.kind`` asks for, or None."""
    sc = cfg.embeddings.smear
    if sc.kind == "v1":
        return SmearGate(cfg.model_dim, sc.bos_fixed)
    if sc.kind == "v2":
        return SmearGateV2(sc.width, sc.bos_fixed)
    return None


def embed_tokens(
    ids_BT: Tensor, tok_emb: nn.Embedding, bigram: BigramHash | None, smear: SmearGate | SmearGateV2 | None
) -> Tensor:
    """x0: token embedding (+ bigram, + smear v2) -> RMS norm (-> smear v1).

    v2 reads the raw embedding (#1667 on), v1 the normalized one (#549), hence the two places.
    """
    x_BTD = tok_emb(ids_BT)
    if bigram is not None:
        x_BTD = x_BTD + bigram(ids_BT)
    if isinstance(smear, SmearGateV2):
        x_BTD = smear(x_BTD, ids_BT)
    x_BTD = rms_norm(x_BTD)
    if isinstance(smear, SmearGate):
        x_BTD = smear(x_BTD, ids_BT)
    return x_BTD


def value_terms(value_embed: ValueEmbedding | None, ids_BT: Tensor) -> Callable[[int], Tensor | None]:
    """layer -> that layer's value-embedding term (or None); the shared term is computed once here."""
    if value_embed is None:
        return lambda layer: None
    ve_BTC = value_embed(ids_BT)
    return lambda layer: value_embed.for_layer(ve_BTC, layer)

"""Partial key offset (#1512): the key's non-rotary dims at t come from t - 1, out of place, masked at
document starts; queries, values and the rotated dims are untouched."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf_core.config import ModelConfig
from pgolf_core.model import build_model
from pgolf_core.model.attention import CausalSelfAttention, partial_key_offset
from pgolf_core.model.layers import rms_norm
from pgolf_core.model.rotary import apply_rotary
from pgolf_core.model.varlen import bos_segments
from tests.model.helpers import TINY, perturb, tiny_cfg

BOS = 1


def slow_key_offset(k_BTGK: torch.Tensor, rope_dims: int, starts_BT: torch.Tensor | None) -> torch.Tensor:
    """Position by position: t >= 1 and not a document start takes dims >= rope_dims from t - 1."""
    B, T, G, K = k_BTGK.shape
    out = k_BTGK.clone()
    for b in range(B):
        for t in range(1, T):
            if starts_BT is not None and starts_BT[b, t]:
                continue
            for g in range(G):
                for d in range(rope_dims, K):
                    out[b, t, g, d] = k_BTGK[b, t - 1, g, d]
    return out


@pytest.mark.parametrize("rope_dims", [2, 6])
@pytest.mark.parametrize("masked", [False, True])
def test_key_offset_equals_a_per_position_loop(rope_dims, masked):
    torch.manual_seed(0)
    k = torch.randn(2, 9, 3, 8)
    starts = torch.zeros(2, 9, dtype=torch.bool)
    starts[0, 4], starts[1, 1] = True, True
    got = partial_key_offset(k, rope_dims, starts if masked else None)
    assert torch.equal(got, slow_key_offset(k, rope_dims, starts if masked else None))
    assert torch.equal(got[:, 0], k[:, 0])  # position 0 keeps its own key
    assert torch.equal(got[..., :rope_dims], k[..., :rope_dims])  # rotated dims untouched


def test_in_place_overlapping_slice_is_not_a_shift_in_eager_mode():
    """The in-place form k[:, 1:, :, r:] = k[:, :-1, :, r:] copies position 0 down the row (eager CPU)."""
    torch.manual_seed(0)
    k = torch.randn(1, 6, 2, 8)
    in_place = k.clone()
    in_place[:, 1:, :, 4:] = in_place[:, :-1, :, 4:]
    reference = slow_key_offset(k, 4, None)
    assert not torch.equal(in_place, reference)
    assert torch.equal(in_place[:, 5, :, 4:], k[:, 0, :, 4:])  # smeared from position 0
    assert torch.equal(partial_key_offset(k, 4, None), reference)


def slow_layer(attn: CausalSelfAttention, x_BTD: torch.Tensor, starts_BT) -> torch.Tensor:
    """The attention layer written out with the offset applied to k only (no XSA, gate or window)."""
    B, T, D = x_BTD.shape
    H, G, K = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = rms_norm((x_BTD @ attn.q.weight.T).view(B, T, H, K))
    k = rms_norm((x_BTD @ attn.k.weight.T).view(B, T, G, K))
    v = (x_BTD @ attn.v.weight.T).view(B, T, G, K)
    cos, sin = attn.rotary.cos_sin(T, x_BTD.device)
    q, k = apply_rotary(q, cos, sin) * attn.q_gain[:, None], apply_rotary(k, cos, sin)
    k = slow_key_offset(k, attn.rotary.rope_dims, starts_BT)
    k, v = k.repeat_interleave(H // G, dim=2), v.repeat_interleave(H // G, dim=2)
    scores = torch.einsum("bthk,bshk->bhts", q, k) / math.sqrt(K)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = torch.einsum("bhts,bshk->bthk", scores.softmax(-1), v)
    return y.reshape(B, T, D) @ attn.proj.weight.T


@pytest.mark.parametrize("bos_fix", [True, False])
def test_attention_layer_with_key_offset_equals_the_written_out_layer(bos_fix):
    """Only k changes (after RMS norm and partial RoPE); a BOS key keeps its own values with bos_fix."""
    cfg = tiny_cfg(**{"rotary.dims": 6, "attention.key_offset": {"enabled": True, "bos_fix": bos_fix}})
    torch.manual_seed(0)
    attn = perturb(CausalSelfAttention(cfg, layer=0))
    ids = torch.randint(2, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    ids[0, 5] = ids[1, 2] = BOS
    x = torch.randn(2, 12, cfg.model_dim)
    with torch.no_grad():
        got = attn(x, None, bos_segments(ids) if bos_fix else None)
        torch.testing.assert_close(got, slow_layer(attn, x, ids == BOS if bos_fix else None))
        plain_cfg = tiny_cfg(**{"rotary.dims": 6})
        plain = CausalSelfAttention(plain_cfg, layer=0)
        plain.load_state_dict(attn.state_dict())
        assert (got - plain(x)).abs().max() > 1e-4  # the offset does change the layer


def test_key_offset_layers_and_bos_segments_of_the_model():
    """key_offset.layers picks the layers (empty: all); the model hands BOS starts only with bos_fix."""
    on = {"rotary.dims": 8, "attention.key_offset.enabled": True}
    model = build_model(tiny_cfg(**on, **{"attention.key_offset.layers": [1, 3]}), device="cpu")
    assert [b.attn.key_offset for b in model.blocks] == [False, True, False, True]
    everywhere = build_model(tiny_cfg(**on), device="cpu")
    assert all(b.attn.key_offset for b in everywhere.blocks)
    ids = torch.tensor([[5, 1, 7, 1]])
    assert everywhere.segments(ids).starts_BT.tolist() == [[False, True, False, True]]
    unmasked = build_model(tiny_cfg(**on, **{"attention.key_offset.bos_fix": False}), device="cpu")
    assert unmasked.segments(ids) is None


@pytest.mark.parametrize("dims", [0, 16])
def test_key_offset_needs_partial_rope(dims):
    """All dims rotated (0 or head_dim) leaves nothing to shift: a one-line error naming the keys."""
    with pytest.raises(ValueError, match=r"key_offset .* 0 < model.rotary.dims < 16 \(got " + str(dims)):
        ModelConfig.model_validate(
            {**TINY, "rotary": {"dims": dims}, "attention": {"key_offset": {"enabled": True}}}
        )


def test_key_offset_layers_out_of_range():
    with pytest.raises(ValueError, match=r"model.attention.key_offset.layers has layers \[4\] outside 0..3"):
        tiny_cfg(**{"rotary.dims": 8, "attention.key_offset": {"enabled": True, "layers": [4]}})

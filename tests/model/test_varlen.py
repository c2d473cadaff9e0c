"""Document-masked (varlen) attention (#1530): segments from BOS positions capped at max_doc_len, padded
cu_seqlens, dense and flash paths equal to plain causal attention run on each segment separately."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pgolf_core.model import attention
from pgolf_core.model.attention import CausalSelfAttention, _flash_varlen, causal_attention
from pgolf_core.model.varlen import CU_BUCKET, Segments, packed_segments
from tests.model.helpers import perturb, tiny_cfg

BOS = 1


def slow_segments(ids_BT: torch.Tensor, max_doc_len: int) -> list[tuple[int, int, int]]:
    """(row, start, end) of every segment, by walking each row token by token."""
    out = []
    for b, row in enumerate(ids_BT.tolist()):
        start = 0
        for t in range(1, len(row) + 1):
            if t == len(row) or row[t] == BOS or t - start == max_doc_len:
                out.append((b, start, t))
                start = t
    return out


def slow_attention(q_THK, k_TGK, v_TGK, window: int = 0) -> torch.Tensor:
    """Plain causal (optionally windowed) attention of one sequence, written out: scores, mask, softmax."""
    T, H, K = q_THK.shape
    rep = H // k_TGK.size(1)
    k_THK, v_THK = k_TGK.repeat_interleave(rep, dim=1), v_TGK.repeat_interleave(rep, dim=1)
    out = torch.zeros_like(q_THK)
    for t in range(T):
        lo = max(0, t - window + 1) if window else 0
        scores_HS = torch.einsum("hk,shk->hs", q_THK[t], k_THK[lo : t + 1]) / math.sqrt(K)
        out[t] = torch.einsum("hs,shk->hk", scores_HS.softmax(-1), v_THK[lo : t + 1])
    return out


def per_segment_attention(q, k, v, ids_BT, max_doc_len, window=0) -> torch.Tensor:
    out = torch.zeros_like(q)
    for b, s, e in slow_segments(ids_BT, max_doc_len):
        out[b, s:e] = slow_attention(q[b, s:e], k[b, s:e], v[b, s:e], window)
    return out


def packed_ids(batch: int = 2, seq_len: int = 24, p_bos: float = 0.15, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (batch, seq_len), generator=g)
    ids[torch.rand(batch, seq_len, generator=g) < p_bos] = BOS
    return ids


def qkv(ids_BT: torch.Tensor, heads: int = 4, kv_heads: int = 2, dim: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    B, T = ids_BT.shape
    return (torch.randn(B, T, h, dim, generator=g) for h in (heads, kv_heads, kv_heads))


def test_segments_of_a_hand_made_batch():
    """Row 0: a leading partial segment, a BOS, a cut after max_doc_len = 3, a BOS; row 1 starts at a BOS."""
    ids = torch.tensor([[5, 6, 1, 7, 8, 9, 1, 3], [1, 2, 2, 2, 2, 1, 4, 4]])
    seg = packed_segments(ids, max_doc_len=3)
    assert seg.cu_seqlens.dtype == torch.int32 and seg.cu_seqlens.numel() == CU_BUCKET
    assert seg.cu_seqlens[:8].tolist() == [0, 2, 5, 6, 8, 11, 13, 16]
    assert (seg.cu_seqlens[8:] == 16).all()  # padding: zero-length segments at the total
    assert seg.max_seqlen == 3
    assert seg.starts_BT.nonzero().tolist() == [[0, 0], [0, 2], [0, 5], [0, 6], [1, 0], [1, 3], [1, 5]]


@pytest.mark.parametrize("max_doc_len", [3, 7, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segments_equal_a_token_by_token_walk(max_doc_len, seed):
    """cu_seqlens lists the walk's segments in order; none is longer than max_doc_len; padded to 64."""
    ids = packed_ids(batch=3, seq_len=40, seed=seed)
    seg = packed_segments(ids, max_doc_len)
    T = ids.size(1)
    expected = [b * T + s for b, s, _ in slow_segments(ids, max_doc_len)]
    cu = seg.cu_seqlens.tolist()
    assert cu[: len(expected)] == expected and set(cu[len(expected) :]) == {ids.numel()}
    assert len(cu) % CU_BUCKET == 0 and len(cu) > len(expected)
    lengths = [e - s for _, s, e in slow_segments(ids, max_doc_len)]
    assert max(lengths) <= max_doc_len and seg.max_seqlen == max(lengths)


def test_many_segments_take_the_next_bucket():
    """64 or more segments need 128 entries (the total must always follow the last start)."""
    ids = torch.full((1, 70), BOS)
    assert packed_segments(ids, 2048).cu_seqlens.numel() == 2 * CU_BUCKET
    assert packed_segments(ids[:, :63], 2048).cu_seqlens.numel() == CU_BUCKET


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("max_doc_len", [5, 64])
def test_dense_varlen_equals_attention_run_per_segment(window, max_doc_len):
    """The SDPA path with the block-diagonal mask equals a per-segment loop of plain causal attention."""
    ids = packed_ids()
    q, k, v = qkv(ids)
    got = causal_attention(q, k, v, "sdpa", window, packed_segments(ids, max_doc_len))
    torch.testing.assert_close(got, per_segment_attention(q, k, v, ids, max_doc_len, window))
    # and it is not plain causal attention over the whole row
    assert (got - causal_attention(q, k, v, "sdpa", window)).abs().max() > 1e-3


def test_padding_entries_change_nothing():
    """Unpadded, padded to 64 and padded to 128 cu_seqlens give bit-identical outputs."""
    ids = packed_ids()
    q, k, v = qkv(ids)
    seg = packed_segments(ids, 6)
    real = seg.cu_seqlens[: int((seg.cu_seqlens < ids.numel()).sum()) + 1]
    wide = torch.cat((seg.cu_seqlens, torch.full((CU_BUCKET,), ids.numel(), dtype=torch.int32)))
    outs = [
        causal_attention(q, k, v, "sdpa", 3, Segments(seg.starts_BT, cu, seg.max_seqlen))
        for cu in (real, seg.cu_seqlens, wide)
    ]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def fake_varlen(
    q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window_size=(-1, -1)
):
    """A stand-in flash varlen kernel with FA's flattened (N, H, K) layout, written as a segment loop."""
    assert causal and torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    window = window_size[0] + 1 if window_size[0] >= 0 else 0
    out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    for s, e in itertools.pairwise(cu):
        assert e - s <= max_seqlen_q
        if e > s:
            out[s:e] = slow_attention(q[s:e], k[s:e], v[s:e], window)
    return out, torch.zeros(1)  # FA3 builds that return (out, lse)


@pytest.mark.parametrize("window", [0, 4])
def test_flash_varlen_call_flattens_rows_and_passes_cu_seqlens(monkeypatch, window):
    """The flash path hands the kernel (B*T, H, K) tensors, cu_seqlens and a max_seqlen bound; its
    output equals the dense path."""
    monkeypatch.setattr(attention, "_FLASH_KERNELS", {"fa3_varlen": fake_varlen})
    ids = packed_ids()
    q, k, v = qkv(ids)
    seg = packed_segments(ids, 5)
    got = _flash_varlen("fa3", q, k, v, window, seg, bound=5)
    torch.testing.assert_close(got, causal_attention(q, k, v, "sdpa", window, seg))
    wide = torch.cat((seg.cu_seqlens, torch.full((CU_BUCKET,), ids.numel(), dtype=torch.int32)))
    padded = _flash_varlen("fa3", q, k, v, window, Segments(seg.starts_BT, wide, seg.max_seqlen), bound=5)
    assert torch.equal(padded, got)  # zero-length padding segments change nothing here either


def test_flash_varlen_missing_kernel_names_it(monkeypatch):
    monkeypatch.setattr(attention, "_FLASH_KERNELS", {})
    monkeypatch.setattr(attention, "_FLASH_MODULES", {"fa2": ("math",)})
    ids = packed_ids()
    q, k, v = qkv(ids)
    with pytest.raises(RuntimeError, match="math has no flash_attn_varlen_func"):
        _flash_varlen("fa2", q, k, v, 0, packed_segments(ids, 8), bound=8)


def test_attention_module_on_packed_row_equals_each_segment_alone():
    """A whole attention layer (partial RoPE, XSA, window, gate): packed row == each segment run alone.

    RoPE scores depend on t - s only, so a segment at row offset s attends as it would at offset 0.
    """
    cfg = tiny_cfg(
        **{
            "rotary.dims": 8,
            "attention.xsa_last_n": 4,
            "attention.window.size": 4,
            "attention.gate.kind": "sparse",
            "attention.varlen.enabled": True,
            "attention.varlen.max_doc_len": 6,
        }
    )
    torch.manual_seed(0)
    attn = perturb(CausalSelfAttention(cfg, layer=3))
    ids = packed_ids(batch=2, seq_len=20)
    x = torch.randn(2, 20, cfg.model_dim)
    with torch.no_grad():
        packed = attn(x, None, packed_segments(ids, 6))
        for b, s, e in slow_segments(ids, 6):
            alone = attn(x[b : b + 1, s:e], None, packed_segments(ids[b : b + 1, s:e], 6))
            torch.testing.assert_close(packed[b : b + 1, s:e], alone, atol=1e-5, rtol=1e-5)

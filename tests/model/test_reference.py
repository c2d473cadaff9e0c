"""Fast model code equals slow, obvious reference implementations written independently of it."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf_core.model.attention import causal_attention, exclusive_self_attention
from pgolf_core.model.rotary import Rotary, apply_rotary
from tests.model.helpers import tiny_cfg, tiny_model, tokens

EPS = torch.finfo(torch.float32).eps  # F.rms_norm's default eps for fp32


def rms(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)


def challenge_rope(x_BTHK: torch.Tensor, rope_dims: int, base: float, start: int = 0) -> torch.Tensor:
    """RoPE as the challenge's train_gpt.py (openai/parameter-golf) and its records state it, one
    position, head and frequency at a time in Python floats.

    The first ``rope_dims`` dims of a head split into halves x1 | x2; pair (x1[i], x2[i]) at position t
    turns by angle t / base^(2i / rope_dims) as x1' = x1 cos + x2 sin, x2' = x2 cos - x1 sin (a turn
    by MINUS the angle); the remaining dims pass through unchanged. ``start``: position of x[:, 0].
    """
    out = x_BTHK.clone()
    _, T, H, _ = x_BTHK.shape
    half = rope_dims // 2
    for t in range(T):
        for h in range(H):
            for i in range(half):
                angle = (start + t) / base ** (2 * i / rope_dims)
                c, s = math.cos(angle), math.sin(angle)
                x1, x2 = x_BTHK[:, t, h, i], x_BTHK[:, t, h, half + i]
                out[:, t, h, i] = x1 * c + x2 * s
                out[:, t, h, half + i] = x2 * c - x1 * s
    return out


def softmax_attention(q, k, v, window: int = 0) -> torch.Tensor:
    """Explicit GQA attention: repeat kv heads, mask future (and out-of-window) keys, softmax."""
    B, T, H, K = q.shape
    k, v = (t.repeat_interleave(H // k.size(2), dim=2) for t in (k, v))
    scores = torch.einsum("bthk,bshk->bhts", q, k) / math.sqrt(K)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((i - j < window) if window else True)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshk->bthk", scores.softmax(-1), v)


def baseline_reference_logits(model, cfg, ids: torch.Tensor) -> torch.Tensor:
    """The challenge baseline (openai/parameter-golf train_gpt.py: U-Net skips, resid mix, q/k RMS norm,
    q gain, RoPE, relu^2 MLP, softcapped tied head) written out by hand over the model's weights."""
    w = dict(model.named_parameters())
    B, T = ids.shape
    D, H, G = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
    K, L = D // H, cfg.num_layers
    E = w["tok_emb.weight"]
    x = x0 = rms(E[ids])
    stack, n_enc = [], L // 2
    for layer in range(L):
        p = lambda name: w[f"blocks.{layer}.{name}"]  # noqa: E731
        if layer >= n_enc and layer - n_enc < min(n_enc, L - n_enc):
            x = x + w["skip_weights"][layer - n_enc] * stack.pop()
        x = p("resid_mix")[0] * x + p("resid_mix")[1] * x0
        h = rms(x)
        q = rms((h @ p("attn.q.weight").T).view(B, T, H, K))
        k = rms((h @ p("attn.k.weight").T).view(B, T, G, K))
        v = (h @ p("attn.v.weight").T).view(B, T, G, K)
        q = challenge_rope(q, K, cfg.rotary.base) * p("attn.q_gain")[:, None]
        k = challenge_rope(k, K, cfg.rotary.base)
        y = softmax_attention(q, k, v).reshape(B, T, D)
        x = x + p("attn_scale") * (y @ p("attn.proj.weight").T)
        u = torch.relu(rms(x) @ p("mlp.up.weight").T) ** 2
        x = x + p("mlp_scale") * (u @ p("mlp.down.weight").T)
        if layer < n_enc:
            stack.append(x)
    z = rms(x) @ E.T
    return cfg.logit_softcap * torch.tanh(z / cfg.logit_softcap)


@pytest.mark.parametrize("num_layers", [4, 5])
def test_baseline_logits_match_slow_reference(num_layers):
    """With default flags the model's logits equal the hand-written baseline forward."""
    model = tiny_model(num_layers=num_layers)
    ids = tokens()
    with torch.no_grad():
        expected = baseline_reference_logits(model, tiny_cfg(num_layers=num_layers), ids)
        got = model(ids)
    assert got.dtype == torch.float32 and got.shape == (2, 16, 64)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_baseline_loss_and_nll_are_mean_and_per_token_ce():
    """model(x, y) is the mean of model.nll(x, y), which is -log softmax(logits)[y]."""
    model, ids, targets = tiny_model(), tokens(seed=1), tokens(seed=2)
    with torch.no_grad():
        logits, loss, nll = model(ids), model(ids, targets), model.nll(ids, targets)
    expected = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    assert nll.shape == targets.shape and nll.dtype == torch.float32
    torch.testing.assert_close(nll, expected)
    torch.testing.assert_close(loss, expected.mean())


@pytest.mark.parametrize("window", [0, 1, 3, 16, 40])
def test_causal_attention_matches_per_query_loop(window):
    """SDPA (causal or windowed, GQA) equals an explicit per-query softmax over the allowed keys."""
    gen = torch.Generator().manual_seed(window)
    B, T, H, G, K = 2, 12, 4, 2, 8
    q, k, v = (torch.randn(B, T, n, K, generator=gen) for n in (H, G, G))
    got = causal_attention(q, k, v, "sdpa", window)
    expected = torch.zeros_like(got)
    for t in range(T):
        first = max(0, t - window + 1) if window else 0
        for h in range(H):
            g = h // (H // G)
            keys, values = k[:, first : t + 1, g], v[:, first : t + 1, g]
            weights = (torch.einsum("bk,bsk->bs", q[:, t, h], keys) / math.sqrt(K)).softmax(-1)
            expected[:, t, h] = torch.einsum("bs,bsk->bk", weights, values)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_xsa_gqa_reshape_matches_repeat_interleave_reference():
    """The GQA-efficient XSA equals projecting out the repeated, normalized own value vector."""
    gen = torch.Generator().manual_seed(0)
    B, T, H, G, K = 2, 10, 8, 2, 16
    y, v = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, G, K, generator=gen)
    v_rep = v.repeat_interleave(H // G, dim=2)
    vn = v_rep / v_rep.norm(dim=-1, keepdim=True)
    expected = y - (y * vn).sum(-1, keepdim=True) * vn
    got = exclusive_self_attention(y, v)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert (got * vn).sum(-1).abs().max() < 1e-5  # orthogonal to the own value direction


@pytest.mark.parametrize("rope_dims", [0, 2, 8, 16])
def test_partial_rope_matches_explicit_rotation(rope_dims):
    """apply_rotary rotates the first rope_dims dims (half-split pairs) and leaves the rest unchanged."""
    x = torch.randn(2, 9, 3, 16, generator=torch.Generator().manual_seed(rope_dims))
    rotary = Rotary(16, rope_dims, base=10000.0)
    got = apply_rotary(x, *rotary.cos_sin(9, x.device))
    torch.testing.assert_close(got, challenge_rope(x, rope_dims or 16, 10000.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[..., rope_dims or 16 :], x[..., rope_dims or 16 :])


def test_rope_ntk_rescale_beyond_train_length():
    """Past train_seq_len the base becomes base * (T / train) ** (rd / (rd - 2)); not before."""
    rotary = Rotary(64, 16, base=10000.0, train_seq_len=1024)
    ntk_base = 10000.0 * (2048 / 1024) ** (16 / 14)
    assert rotary.base_for(1024) == 10000.0
    assert rotary.base_for(2048) == pytest.approx(ntk_base)
    x = torch.randn(1, 2048, 1, 64, generator=torch.Generator().manual_seed(0))
    cos, sin = rotary.cos_sin(2048, x.device)
    got = apply_rotary(x, cos, sin)
    torch.testing.assert_close(got[:, :3], challenge_rope(x[:, :3], 16, ntk_base), atol=1e-5, rtol=1e-5)
    # The table's end, also under the rescaled base; fp32 angles near 2047 rad carry ~2e-4 rounding.
    tail = challenge_rope(x[:, -3:], 16, ntk_base, start=2045)
    torch.testing.assert_close(got[:, -3:], tail, atol=1e-3, rtol=0)


def test_rope_turns_by_minus_theta():
    """The challenge's sign: at position 1 with one frequency pair, (1, 0) -> (cos 1, -sin 1)."""
    x = torch.tensor([1.0, 0.0]).expand(1, 2, 1, 2)
    got = apply_rotary(x, *Rotary(2).cos_sin(2, x.device))[0, 1, 0]
    torch.testing.assert_close(got, torch.tensor([math.cos(1.0), -math.sin(1.0)]))


def test_rope_relative_scores_depend_only_on_offset():
    """After RoPE, q_t . k_s is a function of t - s: shifting both positions keeps the score."""
    rotary = Rotary(16, 8)
    cos, sin = rotary.cos_sin(20, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    seq = lambda v: v.expand(1, 20, 1, 16)  # noqa: E731
    rq, rk = apply_rotary(seq(q), cos, sin)[0, :, 0], apply_rotary(seq(k), cos, sin)[0, :, 0]
    torch.testing.assert_close(rq[7] @ rk[3], rq[15] @ rk[11], atol=1e-5, rtol=1e-5)

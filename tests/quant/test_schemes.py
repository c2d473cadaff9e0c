"""Per-tensor schemes: the baseline int8 equals the challenge's, and each clip rule's error bound holds."""

from __future__ import annotations

import inspect

import pytest
import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant import classify
from pgolf_core.quant.qat import fake_quant
from pgolf_core.quant.quantize import quantize_state
from pgolf_core.quant.schemes import (
    baseline_rows,
    baseline_tensor,
    dequant_rows,
    dequantize,
    qmax_for,
    quantize_rows,
    row_quantile,
)
from tests.model.helpers import tiny_model
from tests.quant.reference import challenge_int8, challenge_quantize


def heavy_rows(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Student-t-like rows of varying scale: the outliers a clip rule has to deal with."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, cols, generator=g)
    chi = torch.randn(rows, cols, 4, generator=g).square().mean(-1)
    return z / chi.sqrt() * torch.exp(0.3 * torch.randn(rows, 1, generator=g)) / cols**0.5


def test_row_quantile_bitwise_equals_torch_quantile():
    """The topk fast path reproduces torch.quantile bit for bit, ties and zero rows included."""
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 7, 512, 1536):
        for q in (0.9999984, 0.999, 0.9995, 0.9999, 0.99999, 0.5):
            a = torch.randn(9, n, generator=g).abs()
            a[1] = torch.round(a[1] * 4) / 4
            a[2] = 0
            assert torch.equal(row_quantile(a, q), torch.quantile(a, q, dim=1)), (n, q)


def test_baseline_values_and_scales_equal_the_challenge_reference():
    """Per-row and per-tensor int8 codes and scales, fp16/fp32 passthrough: equal to the challenge's
    export."""
    w = heavy_rows(96, 700) * 40  # rows whose clip exceeds 1, so clip/127 (not the 1/127 floor) is the scale
    w[3] *= 1e-3  # a row on the 1/127 floor
    q, s = baseline_rows(w)
    q_ref, s_ref = challenge_quantize(w)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref) and s.dtype == torch.float16
    assert float(s[3]) == pytest.approx(1 / 127, rel=1e-3)
    v = torch.randn(70_000) * 0.1
    q1, s1 = baseline_tensor(v)
    q1_ref, s1_ref = challenge_quantize(v)
    assert torch.equal(q1, q1_ref) and torch.equal(s1, s1_ref) and s1.dtype == torch.float32

    model = tiny_model(vocab_size=1100)  # tok_emb 1100 x 64 = 70,400 > 65,536: the one quantized tensor
    classes = classify(model)
    control = {n for n, c in classes.items() if c.control}
    ref = challenge_int8(model.state_dict(), control)
    qts, _ = quantize_state(model, QuantConfig())
    by_name = {qt.name: qt for qt in qts}
    assert sorted(ref["quantized"]) == ["tok_emb.weight"]
    for name, q_ref in ref["quantized"].items():
        assert torch.equal(by_name[name].arrays["q"], q_ref)
        assert torch.equal(by_name[name].arrays["scale"], ref["scales"][name])
    for name, t_ref in ref["passthrough"].items():
        assert by_name[name].kind == "float" and torch.equal(by_name[name].arrays["data"], t_ref)
        assert by_name[name].arrays["data"].dtype == (torch.float32 if name in control else torch.float16)
    assert len(control) == 4 * 4 + 1  # resid_mix, attn_scale, mlp_scale, q_gain of 4 blocks + skip_weights


def test_baseline_error_bound_inside_the_clip():
    """|w - q s16| <= s32/2 + 127 |s32 - s16| inside the clip (rounding uses fp32 scales, storage fp16)."""
    w = heavy_rows(64, 512) * 30
    q, s16 = baseline_rows(w)
    clip = torch.quantile(w.abs(), 0.9999984, dim=1)
    s32 = (clip / 127).clamp_min(1 / 127)
    err = (w - dequant_rows(q, s16)).abs()
    bound = s32 / 2 + 127 * (s32 - s16.float()).abs() + 1e-7
    inside = w.abs() <= clip[:, None]
    assert bool((err <= bound[:, None])[inside].all())
    assert float((err / s32[:, None]).max()) == pytest.approx(0.5, abs=0.06)


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_intn_percentile_error_at_most_half_a_step_inside_the_clip(bits):
    """Round-to-nearest with the stored fp16 scale: |w - q s| <= s/2 wherever |w| <= qmax s."""
    w = heavy_rows(128, 512, seed=bits)
    q, s, meta = quantize_rows(w, bits, "percentile", percentile=99.9)
    qmax = qmax_for(bits)
    assert int(q.abs().max()) == qmax and meta == {"bits": bits, "clip": "percentile", "percentile": 99.9}
    s = s.float()[:, None]
    err = (w - q.float() * s).abs()
    inside = w.abs() <= qmax * s
    assert bool((err <= s / 2 * (1 + 1e-6))[inside].all())
    assert bool((err[~inside] >= 0).all()) and int((~inside).sum()) > 0  # outliers were clipped


def test_sdclip_clip_is_k_std_and_error_bounded():
    """SDClip: qmax * scale = k * std(row) up to fp16 rounding; int6 k=12.85 on Gaussian rows, rel. RMS
    error pinned."""
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(3)) * 0.02
    q, s, meta = quantize_rows(w, 6, "sdclip", sdclip_k=12.85)
    torch.testing.assert_close(s.float() * 31, 12.85 * w.std(dim=1), rtol=1e-3, atol=0)
    rel = float((w - dequant_rows(q, s)).norm() / w.norm())
    # step = 12.85 sigma / 31 = 0.41 sigma -> RMS error 0.41/sqrt(12) = 0.120 sigma
    # (no clipping at 12.85 sigma)
    assert rel == pytest.approx(0.1196, rel=0.03)
    assert int(q.abs().max()) <= 31 and meta["sdclip_k"] == 12.85


def test_clip_search_keeps_the_lowest_mse_candidate():
    """search: the chosen quantile's MSE is the minimum over the candidates, and beats max-abs clipping."""
    w = heavy_rows(128, 512, seed=5)
    quantiles = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
    q, s, meta = quantize_rows(w, 5, "search", search_quantiles=quantiles)
    chosen = float((w - dequant_rows(q, s)).square().mean())
    others = {}
    for qt in quantiles:
        qq, ss, _ = quantize_rows(w, 5, "percentile", percentile=qt * 100)
        others[qt] = float((w - dequant_rows(qq, ss)).square().mean())
    assert chosen == min(others.values()) == others[meta["quantile"]]
    assert meta["quantile"] == 0.9995 and chosen == pytest.approx(0.905 * others[1.0], rel=0.01)


def test_an_unknown_clip_rule_is_refused_by_the_export_and_by_qat():
    """Both users of the clip rules reject a rule they do not know, naming it (QAT used to fall back to
    the search silently)."""
    w = heavy_rows(4, 32)
    with pytest.raises(ValueError, match="unknown clip rule 'median'"):
        quantize_rows(w, 6, "median")
    with pytest.raises(ValueError, match="unknown clip rule 'median'"):
        fake_quant(w, ("rows", 6, "median", 99.9, 12.85, ()))


def test_dequantize_restores_the_original_dtype():
    """bf16 weights come back bf16; fp16 passthrough is the only loss for small tensors."""
    model = tiny_model()
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    qts, _ = quantize_state(state, QuantConfig(keep_float_max_numel=1000), model=model)
    for qt in qts:
        assert dequantize(qt).dtype == torch.bfloat16


def test_quantize_rows_defaults_are_the_config_defaults():
    """quantize_rows' keyword defaults are QuantGroupConfig's / QuantConfig's, so a call that leaves them
    out quantizes as a default config does (the two cannot drift apart silently)."""
    params = inspect.signature(quantize_rows).parameters
    group, quant = QuantGroupConfig(), QuantConfig()
    assert params["percentile"].default == group.percentile
    assert params["sdclip_k"].default == group.sdclip_k
    assert params["search_quantiles"].default == tuple(quant.search_quantiles)

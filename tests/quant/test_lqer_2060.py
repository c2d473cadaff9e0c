"""LQER as #2060 runs it (rank 2, INT4 groups of 32 in flattened B, INT2 A, top 4 by ||W - W^||_F),
against a slow group-by-group reference; with AWQ-lite the error it corrects includes the int8 block."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant import collect_hessians
from pgolf_core.quant.lqer import lqer_correction
from pgolf_core.quant.quantize import quantize_state
from pgolf_core.quant.schemes import dequantize
from tests.model.helpers import tiny_model
from tests.quant.reference import lqer_reference

GPTQ = QuantConfig(
    scheme="groups",
    keep_float_max_numel=1024,
    attn=QuantGroupConfig(bits=5, clip="sdclip", sdclip_k=8.0, gptq=True),
    mlp=QuantGroupConfig(bits=5, clip="sdclip", sdclip_k=8.0, gptq=True),
    embed=QuantGroupConfig(bits=6, clip="sdclip", sdclip_k=12.0, gptq=True),
)
LQER_2060 = {"lqer_top_k": 4, "lqer_rank": 2, "lqer_group": 32}


@pytest.mark.parametrize("awq", [0, 8])
def test_lqer_2060_settings_match_the_slow_reference(awq):
    """The 4 tensors with the largest ||W - W^||_F (W^ with its AWQ columns) get exactly the reference's
    codes and scales; their dequantized weight is W^ + A^ B^."""
    torch.set_num_threads(1)
    model = tiny_model(mlp={"mult": 4.0}, vocab_size=96)
    g = torch.Generator().manual_seed(3)
    hess = collect_hessians(model, [(torch.randint(0, 96, (2, 32), generator=g), None) for _ in range(2)])
    base = GPTQ.model_copy(update={"awq_top_k": awq, "awq_group_size": 16})
    plain, _ = quantize_state(model, base, hessians=hess)
    state = model.state_dict()
    errs = {qt.name: state[qt.name].float() - dequantize(qt).float() for qt in plain if qt.kind == "row"}
    worst = sorted(errs, key=lambda n: -float(errs[n].norm()))[:4]
    qts, details = quantize_state(model, base.model_copy(update=LQER_2060), hessians=hess)
    assert details["lqer"] == worst
    if awq:  # the corrected error includes an int8 block: W^ is the AWQ-lite weight
        assert sum(len(v) for v in details["awq"].values()) == 8 and set(details["awq"]) & set(worst)
    for qt in qts:
        if qt.name not in worst:
            assert "lqer_a" not in qt.arrays
            continue
        ref = lqer_reference(errs[qt.name], 2, 32)
        for k, v in ref.items():
            assert qt.arrays[k].dtype == v.dtype and torch.equal(qt.arrays[k], v), (qt.name, k)
        cols = qt.shape[1]
        assert qt.arrays["lqer_b_scale"].shape == (-(-2 * cols // 32),) and qt.meta["lqer_group"] == 32
        w_hat = next(p for p in plain if p.name == qt.name)
        torch.testing.assert_close(
            dequantize(qt).float(), dequantize(w_hat).float() + lqer_correction(ref, 32), rtol=0, atol=1e-6
        )
        # the correction removes part of the error it was fitted to
        assert float((state[qt.name] - dequantize(qt)).norm()) < float(errs[qt.name].norm())

"""Runtime contracts: bf16 autocast keeps fp32 outputs, torch.compile traces one graph per looping state."""

from __future__ import annotations

import torch

from tests.model.helpers import tiny_model, tokens
from tests.model.test_flags import FLAG_CASES


def test_autocast_bf16_outputs_fp32_close_to_full_precision():
    """Under bf16 autocast (CPU here, CUDA in training) logits/loss/nll are fp32 and near the fp32 result."""
    model, ids, targets = tiny_model(looping=True, **FLAG_CASES["kitchen_sink"]), tokens(), tokens(seed=1)
    with torch.no_grad():
        full = model(ids)
    with torch.autocast("cpu", torch.bfloat16):
        logits, loss, nll = model(ids), model(ids, targets), model.nll(ids, targets)
    assert logits.dtype == loss.dtype == nll.dtype == torch.float32
    assert (logits - full).abs().max() < 0.1
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_compile_fullgraph_matches_eager_across_looping_switch():
    """fullgraph=True (no graph break) with every flag on; equals eager before and after set_looping."""
    torch._dynamo.reset()
    model = tiny_model(
        num_layers=3, loop_start=1, loop_end=1, num_loops=1, xsa_last_n=3, rope_dims=8, ln_scale=True,
        skip_gates=True, parallel_residual="two_lane", parallel_start_layer=1, smear_gate="v2",
        attn_gate="sparse", bigram_vocab=32, bigram_dim=16, ve_dim=16, ve_layers=[2], window_size=4,
        window_layers=[0],
    )
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids, targets = tokens(), tokens(seed=1)
    with torch.no_grad():
        for looping in (False, True, False):
            model.set_looping(looping)
            torch.testing.assert_close(compiled(ids, targets), model(ids, targets), rtol=0, atol=0)
    torch._dynamo.reset()

"""Runtime contracts: bf16 autocast keeps fp32 outputs, torch.compile traces one graph per loops state."""

from __future__ import annotations

import torch

from tests.model.helpers import tiny_model, tokens
from tests.model.test_flags import FLAG_CASES


def test_autocast_bf16_outputs_fp32_close_to_full_precision():
    """Under bf16 autocast (CPU here, CUDA in training) logits/loss/nll are fp32 and near the fp32 result."""
    model, ids, targets = tiny_model(loops_on=True, **FLAG_CASES["kitchen_sink"]), tokens(), tokens(seed=1)
    with torch.no_grad():
        full = model(ids)
    with torch.autocast("cpu", torch.bfloat16):
        logits, loss, nll = model(ids), model(ids, targets), model.nll(ids, targets)
    assert logits.dtype == loss.dtype == nll.dtype == torch.float32
    assert (logits - full).abs().max() < 0.1
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_compile_fullgraph_matches_eager_across_loops_switch():
    """fullgraph=True (no graph break) with every flag on; equals eager before and after set_loops."""
    torch._dynamo.reset()
    model = tiny_model(
        num_layers=3,
        attention={"xsa_last_n": 3, "gate": {"kind": "sparse"}, "window": {"size": 4, "layers": [0]}},
        rotary={"dims": 8},
        embeddings={
            "smear": {"kind": "v2"},
            "bigram": {"buckets": 32, "dim": 16},
            "value": {"dim": 16, "layers": [2]},
        },
        residual={
            "ln_scale": True,
            "skip_gates": True,
            "loops": {"start": 1, "end": 1, "count": 1},
            "parallel": {"kind": "two_lane", "start_layer": 1},
        },
    )
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids, targets = tokens(), tokens(seed=1)
    with torch.no_grad():
        for loops_on in (False, True, False):
            model.set_loops(loops_on)
            torch.testing.assert_close(compiled(ids, targets), model(ids, targets), rtol=0, atol=0)
    torch._dynamo.reset()

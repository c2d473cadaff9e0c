"""No variant lets a position see the future: logits at positions <= t ignore tokens after t."""

from __future__ import annotations

import pytest
import torch

from tests.model.helpers import tiny_model, tokens

LOOP = {"residual.loops.start": 1, "residual.loops.end": 2, "residual.loops.count": 2}

VARIANTS = {
    "baseline": {},
    "partial_rope_ntk": {"rotary.dims": 8, "rotary.train_seq_len": 8},
    "xsa": {"attention.xsa_last_n": 4},
    "window": {"attention.window.size": 3},
    "attn_gate_dense": {"attention.gate.kind": "dense"},
    "attn_gate_sparse": {"attention.gate.kind": "sparse", "attention.gate.width": 4},
    "smear_v1": {"embeddings.smear.kind": "v1"},
    "smear_v2": {"embeddings.smear.kind": "v2"},
    "smear_v2_no_bos_fix": {"embeddings.smear.kind": "v2", "embeddings.smear.bos_fix": False},
    "bigram": {"embeddings.bigram.buckets": 32, "embeddings.bigram.dim": 16},
    "bigram_bos_fix": {"embeddings.bigram": {"buckets": 32, "dim": 16, "bos_fix": True}},
    "smear_v1_bos_fix": {"embeddings.smear": {"kind": "v1", "bos_fix": True}},
    "varlen": {"attention.varlen": {"enabled": True, "max_doc_len": 4}},
    "varlen_window_xsa": {
        "attention.varlen.enabled": True,
        "attention.window.size": 3,
        "attention.xsa_last_n": 4,
    },
    "key_offset": {"rotary.dims": 8, "attention.key_offset.enabled": True},
    "key_offset_varlen": {
        "rotary.dims": 8,
        "attention.key_offset.enabled": True,
        "attention.varlen.enabled": True,
    },
    "value_embed": {"embeddings.value.dim": 16, "embeddings.value.layers": [0, 3]},
    "skip_gates": {"residual.skip_gates": True},
    "loops": LOOP,
    "gptj": {"residual.parallel.kind": "gptj", "residual.parallel.start_layer": 1},
    "two_lane": {"residual.parallel.kind": "two_lane", "residual.parallel.start_layer": 2},
    "two_lane_loops": {"residual.parallel.kind": "two_lane", "residual.parallel.start_layer": 1, **LOOP},
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=list(VARIANTS))
@pytest.mark.parametrize("t", [0, 6])
def test_causality_future_tokens_do_not_change_past_logits(overrides, t):
    """Changing tokens after position t leaves logits at 0..t unchanged (and does change later ones)."""
    model = tiny_model(loops_on=True, **overrides)
    ids = tokens(seq_len=16)
    ids[:, 3] = 1  # a BOS in the prefix
    other = ids.clone()
    other[:, t + 1 :] = tokens(seq_len=15 - t, seed=7)
    other[:, t + 1] = (ids[:, t + 1] + 1) % 64  # certainly different right after t
    with torch.no_grad():
        a, b = model(ids), model(other)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-4

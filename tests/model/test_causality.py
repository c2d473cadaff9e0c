"""No variant lets a position see the future: logits at positions <= t ignore tokens after t."""

from __future__ import annotations

import pytest
import torch

from tests.model.helpers import tiny_model, tokens

LOOP = dict(loop_start=1, loop_end=2, num_loops=2)

VARIANTS = {
    "baseline": {},
    "partial_rope_ntk": dict(rope_dims=8, rope_train_seq_len=8),
    "xsa": dict(xsa_last_n=4),
    "window": dict(window_size=3),
    "attn_gate_dense": dict(attn_gate="dense"),
    "attn_gate_sparse": dict(attn_gate="sparse", attn_gate_width=4),
    "smear_v1": dict(smear_gate="v1"),
    "smear_v2": dict(smear_gate="v2"),
    "smear_v2_no_bos_fix": dict(smear_gate="v2", smear_bos_fix=False),
    "bigram": dict(bigram_vocab=32, bigram_dim=16),
    "value_embed": dict(ve_dim=16, ve_layers=[0, 3]),
    "skip_gates": dict(skip_gates=True),
    "recurrence": LOOP,
    "gptj": dict(parallel_residual="gptj", parallel_start_layer=1),
    "two_lane": dict(parallel_residual="two_lane", parallel_start_layer=2),
    "two_lane_recurrence": dict(parallel_residual="two_lane", parallel_start_layer=1, **LOOP),
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=list(VARIANTS))
@pytest.mark.parametrize("t", [0, 6])
def test_causality_future_tokens_do_not_change_past_logits(overrides, t):
    """Changing tokens after position t leaves logits at 0..t unchanged (and does change later ones)."""
    model = tiny_model(looping=True, **overrides)
    ids = tokens(seq_len=16)
    ids[:, 3] = 1  # a BOS in the prefix
    other = ids.clone()
    other[:, t + 1 :] = tokens(seq_len=15 - t, seed=7)
    other[:, t + 1] = (ids[:, t + 1] + 1) % 64  # certainly different right after t
    with torch.no_grad():
        a, b = model(ids), model(other)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-4

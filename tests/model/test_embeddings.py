"""Embedding-side modules follow their formulas (#549/#1019 bigram and value embedding, SmearGate v1 and
v2), including the #1851 SmearGate BOS fix."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.data.tokenizer import BOS_ID
from pgolf_core.model.embeddings import SmearGate, SmearGateV2, bigram_buckets
from tests.model.helpers import tiny_model, tokens


def test_bigram_buckets_match_formula():
    """Bucket i > 0 is (36313 t_i XOR 27191 t_{i-1}) mod (V_b - 1); bucket 0 is V_b - 1."""
    ids = tokens(batch=3, seq_len=12, vocab=8192, seed=4)
    got = bigram_buckets(ids, 1536)
    for b in range(3):
        assert got[b, 0] == 1535
        for i in range(1, 12):
            cur, prev = int(ids[b, i]), int(ids[b, i - 1])
            assert got[b, i] == ((36313 * cur) ^ (27191 * prev)) % 1535
    assert got.min() >= 0 and got.max() < 1536


def test_smear_v1_mixes_previous_position():
    """v1: x_t <- (1 - s) x_t + s x_{t-1} with s = sigmoid(g) per dim and x_{-1} = 0."""
    smear = SmearGate(8)
    with torch.no_grad():
        smear.gate.copy_(torch.linspace(-2, 2, 8))
    x = torch.randn(2, 5, 8)
    s = torch.sigmoid(smear.gate)
    prev = torch.cat((torch.zeros(2, 1, 8), x[:, :-1]), dim=1)
    torch.testing.assert_close(smear(x), (1 - s) * x + s * prev)


def test_smear_v2_is_identity_at_init_and_matches_formula():
    """v2: identity at init; then x_t <- x_t + lam sigmoid(w . x_t[:W]) x_{t-1} for t >= 1."""
    smear = SmearGateV2(width=4, bos_fix=False)
    x, ids = torch.randn(2, 6, 8), tokens(batch=2, seq_len=6)
    torch.testing.assert_close(smear(x, ids), x)
    with torch.no_grad():
        smear.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
        smear.lam.fill_(0.7)
    gate = torch.sigmoid(x[..., :4] @ smear.weight)[..., None]
    expected = x.clone()
    expected[:, 1:] += 0.7 * gate[:, 1:] * x[:, :-1]
    torch.testing.assert_close(smear(x, ids), expected)


@pytest.mark.parametrize("bos_fix", [True, False])
def test_smear_v2_bos_fix_stops_leak_into_bos(bos_fix):
    """With the fix the smeared embedding at a BOS ignores the previous token; without it, it does not."""
    smear = SmearGateV2(width=4, bos_fix=bos_fix)
    with torch.no_grad():
        smear.weight.fill_(0.3)
        smear.lam.fill_(1.0)
    ids = tokens(batch=1, seq_len=8)
    ids[0, 5] = BOS_ID
    ids[0, 4] = 7
    x = torch.randn(1, 8, 8)
    x_changed = x.clone()
    x_changed[0, 4] += 1.0  # a different previous token embedding
    leaked = not torch.allclose(smear(x, ids)[0, 5], smear(x_changed, ids)[0, 5])
    assert leaked != bos_fix


@pytest.mark.parametrize("bos_fix", [True, False])
def test_smear_v2_bos_fix_in_model_embedding(bos_fix):
    """In the model, x0 at a BOS position depends on the previous token only without the fix."""
    model = tiny_model(embeddings={"smear": {"kind": "v2", "bos_fix": bos_fix}})
    ids = tokens(seq_len=10)
    ids[:, 6] = BOS_ID
    other = ids.clone()
    other[:, 5] = (ids[:, 5] + 1) % 64
    with torch.no_grad():
        a, b = model.embed(ids), model.embed(other)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    leaked = not torch.allclose(a[:, 6], b[:, 6])
    assert leaked != bos_fix


def test_value_embedding_is_added_only_in_its_layers():
    """The VE term reaches V only in embeddings.value.layers, scaled by the shared and the layer's scalar."""
    model = tiny_model(embeddings={"value": {"dim": 16, "layers": [1, 3]}})
    ve = model.value_embed
    base = ve(tokens())
    assert ve.for_layer(base, 0) is None and ve.for_layer(base, 2) is None
    torch.testing.assert_close(ve.for_layer(base, 3), base * ve.layer_scales[1])
    expected = (ve.table(tokens()) @ ve.proj.weight.T) * ve.scale
    torch.testing.assert_close(base, expected)

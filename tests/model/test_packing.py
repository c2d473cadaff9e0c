"""Packed rows: with varlen attention and every shift feature BOS-safe, a document's logits do not depend
on what precedes it in the row (the #1797 leak, #1851 fix); each feature's fix is needed on its own."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.model.embeddings import SmearGate, bigram_buckets
from tests.model.helpers import tiny_model

BOS = 1
LOOP = {"residual.loops.start": 1, "residual.loops.end": 2, "residual.loops.count": 1}

# Every feature that reads the previous token, with its BOS fix on.
SHIFT_FEATURES = {
    "smear_v1": {"embeddings.smear": {"kind": "v1", "bos_fix": True}},
    "smear_v2": {"embeddings.smear": {"kind": "v2", "width": 4}},  # bos_fix on by default for v2
    "bigram": {"embeddings.bigram": {"buckets": 32, "dim": 16, "bos_fix": True}},
    "key_offset": {"attention.key_offset": {"enabled": True, "layers": [1, 3]}},
}
# The same features as the records ran them (no fix), the leak each BOS fix removes.
UNFIXED = {
    "smear_v1": {"embeddings.smear": {"kind": "v1"}},  # #549 default: no fix
    "smear_v2": {"embeddings.smear": {"kind": "v2", "width": 4, "bos_fix": False}},
    "bigram": {"embeddings.bigram": {"buckets": 32, "dim": 16}},  # #549/#1019 default: no fix
    "key_offset": {"attention.key_offset": {"enabled": True, "layers": [1, 3], "bos_fix": False}},
}
# The rest of the model: every per-token or attention feature, so all of them are covered.
REST = {
    "rotary.dims": 8,
    "attention.xsa_last_n": 4,
    "attention.window": {"size": 5, "layers": [0, 2]},
    "attention.gate.kind": "sparse",
    "attention.gate.width": 4,
    "embeddings.value": {"dim": 16, "layers": [1, 3]},
    "residual.ln_scale": True,
    "residual.skip_gates": True,
    "residual.parallel": {"kind": "two_lane", "start_layer": 2},
    "mlp.activation": "leaky_relu2",
    **LOOP,
}


def varlen(max_doc_len: int = 64) -> dict:
    return {"attention.varlen": {"enabled": True, "max_doc_len": max_doc_len}}


def all_fixed(**extra):
    overrides = {**REST, **extra}
    for case in SHIFT_FEATURES.values():
        overrides.update(case)
    return overrides


def packed_row(lengths: list[int], lead: int, seed: int = 0) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """One row: ``lead`` tokens of a document cut off at the row start, then [BOS, ...] documents of
    ``lengths``; returns the row and the (start, end) of every document (the lead included)."""
    g = torch.Generator().manual_seed(seed)
    parts, spans, t = [], [], 0
    if lead:
        parts.append(torch.randint(2, 64, (lead,), generator=g))
        spans.append((0, lead))
        t = lead
    for n in lengths:
        doc = torch.randint(2, 64, (n,), generator=g)
        doc[0] = BOS
        parts.append(doc)
        spans.append((t, t + n))
        t += n
    return torch.cat(parts)[None], spans


@pytest.mark.parametrize("max_doc_len", [64, 5])
def test_packed_row_logits_equal_each_document_run_alone(max_doc_len):
    """Varlen + BOS-safe shift features: each document (and the leading partial one) scores as if alone,
    also when max_doc_len cuts a long document (the cuts fall at the same offsets in both runs)."""
    model = tiny_model(loops_on=True, **all_fixed(**varlen(max_doc_len)))
    row, spans = packed_row([7, 12, 3, 9], lead=4)
    with torch.no_grad():
        packed = model(row)
        for s, e in spans:
            torch.testing.assert_close(packed[:, s:e], model(row[:, s:e]), atol=2e-5, rtol=1e-5)


def test_two_packed_rows_are_independent_and_match_single_rows():
    """A batch of two packed rows gives each row's own logits (row starts are segment starts)."""
    model = tiny_model(loops_on=True, **all_fixed(**varlen()))
    a, _ = packed_row([6, 10], lead=3, seed=1)
    b, _ = packed_row([9, 5], lead=5, seed=2)
    with torch.no_grad():
        both = model(torch.cat((a, b)))
        torch.testing.assert_close(both[:1], model(a), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(both[1:], model(b), atol=2e-5, rtol=1e-5)


def changed_at_and_after_bos(model, row: torch.Tensor, bos: int) -> torch.Tensor:
    """Per position >= bos: max |logit change| when the previous document's last token changes."""
    other = row.clone()
    other[0, bos - 1] = (row[0, bos - 1] + 1 - 2) % 62 + 2  # another non-BOS token
    with torch.no_grad():
        return (model(row) - model(other))[0, bos:].abs().amax(-1)


@pytest.mark.parametrize("feature", list(SHIFT_FEATURES))
def test_each_shift_feature_is_bos_safe_with_its_fix(feature):
    """With varlen attention and the feature's fix, the previous document's last token changes nothing
    at or after the BOS; without the fix it changes the new document's logits (the leak; for the key
    offset from BOS + 1 on, since a query at the BOS sees the BOS key alone)."""
    row, spans = packed_row([8, 10], lead=0)
    bos = spans[1][0]
    fixed = tiny_model(**REST, **varlen(), **SHIFT_FEATURES[feature])
    assert changed_at_and_after_bos(fixed, row, bos).max() == 0
    leaky = tiny_model(**REST, **varlen(), **UNFIXED[feature])
    assert changed_at_and_after_bos(leaky, row, bos)[:2].max() > 1e-4


def test_without_varlen_attention_crosses_documents():
    """The fixes alone do not isolate documents: attention over the whole row still reads the previous
    document (varlen is what makes the packed-equals-alone test hold)."""
    row, spans = packed_row([8, 10], lead=0)
    model = tiny_model(**all_fixed())
    assert changed_at_and_after_bos(model, row, spans[1][0]).max() > 1e-4


def test_bigram_bos_fix_gives_a_bos_the_stream_start_bucket():
    """With the fix a BOS maps to the reserved bucket V_b - 1 (as position 0); other positions keep the
    (36313 cur XOR 27191 prev) mod (V_b - 1) hash."""
    ids = torch.tensor([[7, 9, BOS, 4, 5]])
    fixed, plain = bigram_buckets(ids, 32, bos_fix=True), bigram_buckets(ids, 32)
    assert fixed[0, 2] == 31 and plain[0, 2] == (36313 * BOS ^ 27191 * 9) % 31
    assert torch.equal(fixed[:, [0, 1, 3, 4]], plain[:, [0, 1, 3, 4]])


def test_smear_v1_bos_fix_treats_a_bos_like_position_0():
    """x_t <- (1 - s) x_t + s x_{t-1}, with x_{t-1} read as zero at a BOS (as it is at t = 0)."""
    torch.manual_seed(0)
    smear = SmearGate(8, bos_fix=True)
    with torch.no_grad():
        smear.gate.copy_(torch.linspace(-2, 2, 8))
    x, ids = torch.randn(1, 5, 8), torch.tensor([[7, 9, BOS, 4, 5]])
    s = torch.sigmoid(smear.gate)
    prev = torch.cat((torch.zeros(1, 1, 8), x[:, :-1]), dim=1)
    prev[:, 2] = 0
    torch.testing.assert_close(smear(x, ids), (1 - s) * x + s * prev)
    assert not torch.allclose(SmearGate(8)(x, ids)[:, 2], (1 - 0.5) * x[:, 2])  # unfixed: reads x_1

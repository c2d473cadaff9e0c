"""The long-context and short-document TTT levers (#1953, #2014): each changes what it should and
nothing else, and every target is scored exactly once with the tail on and off."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pgolf_core.compliance.causality import check_future_perturbation
from pgolf_core.config import ConfigError, config_from_dict
from pgolf_core.eval import stream_byte_counts
from pgolf_core.ttt import DocLoRAScorer, TTTInputs, doc_lora_ttt, phased_ttt
from pgolf_core.ttt.common import EvalSpec
from pgolf_core.ttt.doc_lora import DocLoRARunner, batch_chunk_tokens, scored_length
from tests.eval.helpers import (
    CPU,
    LENGTHS,
    LORA,
    ONE,
    PHASED,
    SPEC,
    OrderRecorder,
    doc_stream,
    luts,
    tiny_model,
    ttt_cfg,
)

SHORT = [[40, 4], [100, 8]]  # #2014's rule scaled to the test documents: <= 40 -> 4, <= 100 -> 8, else 16


def run(variant, tokens, events=None, spec=SPEC, **kw):
    base = LORA if variant is doc_lora_ttt else PHASED
    inputs = TTTInputs(tiny_model(), tokens, luts(), ttt_cfg(**{**base, **kw}), spec, ONE, CPU, True, events)
    return variant(inputs)


def test_no_qv_mask_puts_no_adapter_on_q_or_v():
    """#1953's TTT_MASK=no_qv: lora_targets [k, o, mlp, head]; q and v carry no adapter and no hook."""
    model = tiny_model()
    runner = DocLoRARunner(model, ttt_cfg(lora_targets=["k", "o", "mlp", "head"]), SPEC, None, CPU)
    assert sorted(runner.lora.adapters) == ["k0", "k1", "mlp0", "mlp1", "o0", "o1"]
    assert runner.lora.head is not None
    for block in model.blocks:
        assert not block.attn.q._forward_hooks and not block.attn.v._forward_hooks
        assert len(block.attn.k._forward_hooks) == 1
    tokens = doc_stream(LENGTHS)
    no_qv, default = (
        run(doc_lora_ttt, tokens, lora_targets=["k", "o", "mlp", "head"]),
        run(doc_lora_ttt, tokens),
    )
    assert no_qv.tokens == default.tokens and no_qv.loss != default.loss  # the mask changes what adapts


def test_local_lr_mult_scales_the_lora_lr_only():
    tokens = doc_stream(LENGTHS)
    half = run(doc_lora_ttt, tokens, lora_lr=0.1, local_lr_mult=0.5)
    same = run(doc_lora_ttt, tokens, lora_lr=0.05)
    full = run(doc_lora_ttt, tokens, lora_lr=0.1)
    assert half.info["lora_lr"] == 0.05
    np.testing.assert_array_equal(half.nll, same.nll)  # 0.1 x 0.5 is 0.05 exactly
    assert half.loss != full.loss
    # phased: the global SGD lr is untouched by the multiplier
    ph_half = run(phased_ttt, tokens, lora_lr=0.1, local_lr_mult=0.5)
    np.testing.assert_array_equal(ph_half.nll, run(phased_ttt, tokens, lora_lr=0.05).nll)


@pytest.mark.parametrize(
    ("longest", "chunk"), [(1, 8), (256, 8), (257, 24), (2000, 24), (2001, 48), (100_000, 48)]
)
def test_short_doc_chunk_rule_picks_by_the_longest_document(longest, chunk):
    """#2014's TTT_SHORT_SCORE_FIRST_STEPS=256:8,2000:24 with the default chunk 48."""
    ttt = ttt_cfg(lora_chunk_tokens=48, short_doc_chunks=[[256, 8], [2000, 24]])
    assert batch_chunk_tokens(longest, ttt) == chunk
    assert batch_chunk_tokens(longest, ttt_cfg(lora_chunk_tokens=48)) == 48  # off by default


def test_short_doc_chunks_set_each_batchs_steps():
    """Batches (longest first, 3 docs): [200, 180, 150] -> 16, [90, 60, 30] -> 8, [7] -> 4."""
    tokens = doc_stream(LENGTHS)
    rec = OrderRecorder(tokens.size)
    res = run(doc_lora_ttt, tokens, events=rec, short_doc_chunks=SHORT)
    assert res.info["chunk_batches"] == {"16": 1, "8": 1, "4": 1}
    # one step per chunk index while a batch-mate has a later chunk: ceil(longest / chunk) - 1 per batch
    want = (-(-200 // 16) - 1) + (-(-90 // 8) - 1) + (-(-7 // 4) - 1)
    assert res.info["steps"] == want
    assert not rec.violations and not rec.rescored and rec.is_scored[1:].all()
    plain = run(doc_lora_ttt, tokens)
    assert plain.info["chunk_batches"] == {"16": 3}
    assert res.loss != plain.loss


def test_context_len_sets_the_window_and_the_global_pass_length():
    tokens = doc_stream(LENGTHS)
    # lora: context_len replaces lora_window
    np.testing.assert_array_equal(
        run(doc_lora_ttt, tokens, lora_window=16, context_len=64).nll,
        run(doc_lora_ttt, tokens, lora_window=64).nll,
    )
    # phased: it is also the sequence length of the global SGD passes, apart from the eval seq len
    long_spec = EvalSpec(seq_len=64, stride=8, batch_seqs=8)
    via_ttt = run(phased_ttt, tokens, lora_window=16, context_len=64)
    via_eval = run(phased_ttt, tokens, spec=long_spec, lora_window=64)
    np.testing.assert_array_equal(via_ttt.nll, via_eval.nll)
    assert via_ttt.info["window"] == 64
    assert via_ttt.loss != run(phased_ttt, tokens, lora_window=64).loss  # passes of 32 differ


@pytest.mark.parametrize("variant", [doc_lora_ttt, phased_ttt], ids=["lora", "phased"])
@pytest.mark.parametrize("tail", [True, False], ids=["tail", "no_tail"])
def test_every_target_is_scored_exactly_once_with_the_tail_on_and_off(variant, tail):
    tokens = doc_stream(LENGTHS)  # 724 tokens: 723 targets, 22 whole 32-token contexts = 704
    n = tokens.size
    keep = n if tail else (n - 1) // 32 * 32 + 1
    assert keep == scored_length(n, ttt_cfg(include_tail=tail), 32) and (tail or keep < n)
    rec = OrderRecorder(n)
    res = run(variant, tokens, events=rec, include_tail=tail, short_doc_chunks=SHORT)
    assert not rec.rescored and not rec.violations
    np.testing.assert_array_equal(np.flatnonzero(rec.is_scored), np.arange(1, keep))
    assert res.tokens == keep - 1
    assert res.bytes == int(stream_byte_counts(tokens, luts())[:keep].sum())
    assert np.isfinite(res.nll[1:keep]).all() and np.isnan(res.nll[keep:]).all()
    assert res.byte_counts[keep:].sum() == 0
    # with the default chunking (documents independent), the documents before the cut score the same
    if not tail:
        cut, full = run(variant, tokens, include_tail=False), run(variant, tokens, include_tail=True)
        cut_doc = int(np.flatnonzero(tokens[:keep] == tokens[0])[-1])  # the BOS of the document cut
        np.testing.assert_array_equal(cut.nll[1:cut_doc], full.nll[1:cut_doc])
        assert cut_doc > 500


def test_the_tail_rule_uses_context_len_and_refuses_a_stream_shorter_than_one_context():
    assert scored_length(1000, ttt_cfg(include_tail=False, context_len=300), 32) == 901
    assert scored_length(1000, ttt_cfg(include_tail=True, context_len=300), 32) == 1000
    with pytest.raises(ValueError, match="do not fill one 2048-token context"):
        scored_length(1000, ttt_cfg(include_tail=False), 2048)


def test_defaults_leave_the_levers_off():
    ttt = ttt_cfg()
    assert (ttt.context_len, ttt.local_lr_mult, ttt.short_doc_chunks, ttt.include_tail) == (0, 1.0, [], True)


@pytest.mark.parametrize(
    ("ttt", "message"),
    [
        ({"short_doc_chunks": [[256, 8], [100, 24]]}, "entry [100, 24]"),
        ({"short_doc_chunks": [[256]]}, "entry [256]"),
        ({"short_doc_chunks": [[256, 0]]}, "entry [256, 0]"),
        ({"short_doc_chunks": [[4000, 2048]]}, "the document window (1024)"),
        ({"context_len": 100}, "ttt.context_len (100) must be 0 or at least ttt.lora_chunk_tokens (256)"),
        ({"local_lr_mult": 0.0}, "ttt.local_lr_mult"),
    ],
)
def test_lever_config_errors_name_the_key(ttt, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"ttt": ttt})
    assert config_from_dict({"ttt": {"context_len": 3072, "short_doc_chunks": [[256, 8], [2000, 24]]}})


def test_short_doc_chunks_read_where_the_document_ends_and_t1_sees_it():
    """#2014's rule picks the chunk from the document's length, i.e. from where a later BOS falls: the
    scores of a document's first targets change with its end. Score-first still holds (T5), but the
    future-perturbation check (T1) fails; with the rule off it passes."""
    tokens = doc_stream([30, 200])  # document 1: targets 1..31 (its 30 tokens and the next BOS)
    longer = tokens.copy()
    longer[31] = 5  # no BOS: document 1 now runs to the end of the stream (231 targets)
    one_doc = {"lora_batch_docs": 1}
    for rules, moved in (([], False), (SHORT, True)):
        a = run(doc_lora_ttt, tokens, short_doc_chunks=rules, **one_doc)
        b = run(doc_lora_ttt, longer, short_doc_chunks=rules, **one_doc)
        assert (not np.array_equal(a.nll[1:31], b.nll[1:31])) is moved
    spec = EvalSpec(seq_len=32, stride=8, batch_seqs=8, autocast=False)
    for rules, passed in (([], True), (SHORT, False)):
        scorer = DocLoRAScorer(tiny_model(), ttt_cfg(**{**LORA, **one_doc, "short_doc_chunks": rules}), spec)
        assert check_future_perturbation(scorer, tokens, cuts=[20], vocab_size=64).passed is passed


@pytest.mark.parametrize(("phases", "passes"), [(1, [5]), (2, [2, 5])])
def test_phase_count_sets_the_global_passes(phases, passes):
    """#2014 runs one phase (one global SGD pass after the prefix documents), #1953 three."""
    res = run(phased_ttt, doc_stream(LENGTHS), phased_phases=phases)
    assert [p["docs"] for p in res.info["passes"]] == passes

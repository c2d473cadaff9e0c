"""Per-document LoRA TTT (LORA0, #1530) and phased TTT (#1610, #1626)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf_core.eval import ScoreSums, device_tokens, evaluate_sliding
from pgolf_core.ttt import DocLoRAScorer, PhasedTTTScorer, TTTInputs, doc_lora_ttt, find_documents, phased_ttt
from pgolf_core.ttt.common import working_copy
from pgolf_core.ttt.doc_lora import DocLoRARunner, doc_chunk
from pgolf_core.ttt.lora import TARGETS, LoRASet
from pgolf_core.ttt.phased import phase_boundaries
from tests.eval.helpers import (
    CPU,
    LENGTHS,
    LORA,
    ONE,
    PHASED,
    SPEC,
    BOS,
    OrderRecorder,
    doc_stream,
    luts,
    random_stream,
    tiny_model,
    ttt_cfg,
)


def lora_run(tokens, model=None, events=None, **kw):
    return doc_lora_ttt(
        TTTInputs(
            model or tiny_model(),
            tokens,
            luts(),
            ttt_cfg(**{**LORA, **kw}),
            SPEC,
            dist=ONE,
            device=CPU,
            return_streams=True,
            events=events,
        )
    )


def phased_run(tokens, model=None, events=None, **kw):
    return phased_ttt(
        TTTInputs(
            model or tiny_model(),
            tokens,
            luts(),
            ttt_cfg(**{**PHASED, **kw}),
            SPEC,
            dist=ONE,
            device=CPU,
            return_streams=True,
            events=events,
        )
    )


def test_documents_cover_every_target_once():
    tokens = doc_stream(LENGTHS)
    docs = find_documents(tokens)
    assert len(docs) == len(LENGTHS) and (tokens[docs.starts] == BOS).all()
    covered = np.concatenate([np.arange(s + 1, e + 1) for s, e in zip(docs.starts, docs.ends)])
    np.testing.assert_array_equal(covered, np.arange(1, len(tokens)))
    assert (tokens[docs.ends[:-1]] == BOS).all()  # a document predicts the next one's BOS
    cut = find_documents(tokens[5:])  # a stream cut mid-document starts with a partial one
    assert cut.starts[0] == 0 and len(cut) == len(LENGTHS)


def test_doc_chunk_windows_stay_in_the_document_and_depend_on_the_prefix_only():
    for i in range(8):
        ws, length, first, end = doc_chunk(100, 180, i, 16, 40)
        if first > 180:
            break
        assert ws >= 100 and length <= 40 and first - ws - 1 >= 0 and ws + length == end - 1
        assert doc_chunk(100, 10**9, i, 16, 40)[0] == ws  # where the document ends does not move the window


@pytest.mark.parametrize("targets", [list(TARGETS), ["q", "v", "head"]])
def test_zero_adapters_are_an_exact_no_op(targets):
    model = tiny_model()
    x = torch.from_numpy(random_stream(40).astype(np.int64)).view(2, 20)
    base = model.logits(x)
    lora = LoRASet(model, targets, rank=4, alpha=8.0, slots=2)
    lora.slot_index = torch.tensor([1, 0])
    assert torch.equal(lora.logits(x), base)
    with torch.no_grad():
        lora.head.B.add_(0.1) if lora.head is not None else lora.adapters["q0"].B.add_(0.1)
    assert not torch.equal(lora.logits(x), base)
    lora.reset()
    assert torch.equal(lora.logits(x), base)
    lora.remove()


def test_score_first_order_and_each_documents_first_chunk_uses_the_base_model():
    tokens = doc_stream(LENGTHS)
    events = OrderRecorder(len(tokens))
    model = tiny_model()
    res = lora_run(tokens, model, events)
    assert events.updates and not events.violations and not events.rescored and events.is_scored[1:].all()
    assert res.tokens == len(tokens) - 1
    docs = find_documents(tokens)
    x = torch.from_numpy(tokens.astype(np.int64))
    for s, e in zip(docs.starts, docs.ends):
        ws, length, first, end = doc_chunk(int(s), int(e), 0, 16, 32)
        with torch.no_grad():
            base = model.nll(x[None, ws : ws + length], x[None, ws + 1 : ws + length + 1])[0].numpy()
        np.testing.assert_allclose(res.nll[first:end], base[first - ws - 1 :], atol=1e-6)
        # the last chunk of a document is scored but never stepped on
        last_first = int(s) + 1 + ((int(e) - int(s) - 1) // 16) * 16
        assert not np.isin(np.arange(last_first, int(e) + 1), events.updated_positions()).any()


def test_adapters_reset_per_document_and_batching_changes_nothing():
    """The same document twice scores identically (reset); one document at a time equals batches of 3."""
    one = doc_stream([70])
    twice = np.concatenate([one, one])
    res = lora_run(twice, lora_batch_docs=2)
    np.testing.assert_allclose(res.nll[len(one) + 1 :], res.nll[1 : len(one)], atol=1e-6)
    tokens = doc_stream(LENGTHS)
    np.testing.assert_allclose(
        lora_run(tokens, lora_batch_docs=1).nll[1:], lora_run(tokens).nll[1:], atol=1e-6
    )


def test_base_weights_stay_frozen_and_lora_ttt_helps():
    tokens = doc_stream(LENGTHS)
    model = tiny_model()
    work = working_copy(model)
    runner = DocLoRARunner(work, ttt_cfg(**LORA), SPEC, device_tokens(tokens, CPU), CPU)
    docs = find_documents(tokens)
    runner.score(docs, np.arange(len(docs)), ScoreSums(len(tokens), CPU, False), None, None, None)
    assert runner.steps > 0
    for (k, v), w in zip(model.state_dict().items(), work.state_dict().values()):
        assert torch.equal(v, w), k
    plain = evaluate_sliding(model, tokens, luts(), seq_len=32, stride=8, batch_seqs=8, dist=ONE, device=CPU)
    assert lora_run(tokens, model).bpb < plain.bpb - 0.2


def test_phase_boundaries():
    assert phase_boundaries(2000, 3, 50_000) == [666, 1333, 2000]
    assert phase_boundaries(2500, 3, 50_000) == [833, 1666, 2500]
    assert phase_boundaries(2000, 3, 1500) == [666, 1333]
    assert phase_boundaries(2, 3, 10) == [1, 2]


class PassRecorder(OrderRecorder):
    """Also snapshots, at the start of each global pass, which positions were scored and what the pass
    trains on."""

    def __init__(self, n_tokens: int):
        super().__init__(n_tokens)
        self.passes: list[dict] = []
        self.last = None

    def scored(self, positions):
        super().scored(positions)
        self.last = "scored"

    def updated(self, positions, kind):
        super().updated(positions, kind)
        if kind == "global_sgd":
            if self.last != "global_sgd":
                self.passes.append({"scored": self.is_scored.copy(), "trained": []})
            self.passes[-1]["trained"].append(np.asarray(positions))
        self.last = kind


def test_phased_global_pass_sees_only_already_scored_documents():
    """At boundary b every rank has scored exactly documents 0..b-1, and the pass trains on exactly them."""
    tokens = doc_stream(LENGTHS)
    events = PassRecorder(len(tokens))
    res = phased_run(tokens, events=events)
    assert not events.violations and not events.rescored and events.is_scored[1:].all()
    docs = find_documents(tokens)
    assert res.info["boundaries"] == [2, 5] and len(events.passes) == 2
    for boundary, record in zip([2, 5], events.passes):
        last = int(docs.ends[boundary - 1])
        assert record["scored"][1 : last + 1].all() and not record["scored"][last + 1 :].any()
        np.testing.assert_array_equal(np.unique(np.concatenate(record["trained"])), np.arange(1, last + 1))


def test_phased_equals_lora_before_the_first_boundary_and_differs_after():
    tokens = doc_stream(LENGTHS)
    docs = find_documents(tokens)
    lora, phased = lora_run(tokens), phased_run(tokens)
    before = slice(1, int(docs.ends[1]) + 1)  # documents 0 and 1 are scored before the first pass
    np.testing.assert_allclose(phased.nll[before], lora.nll[before], atol=2e-5)
    after = slice(int(docs.starts[2]) + 1, None)
    assert np.abs(phased.nll[after] - lora.nll[after]).max() > 1e-3


@pytest.mark.parametrize("cls,kw", [(DocLoRAScorer, LORA), (PhasedTTTScorer, PHASED)])
def test_future_tokens_never_change_earlier_scores(cls, kw):
    """T1 in miniature: randomizing every token after t leaves the NLLs at positions <= t unchanged."""
    tokens = doc_stream(LENGTHS)
    scorer = cls(tiny_model(), ttt_cfg(**kw), SPEC)
    base = scorer.score_stream(tokens).nll
    for t in (100, 333):
        other = tokens.copy()
        other[t + 1 :] = random_stream(len(tokens) - t - 1, seed=t)
        np.testing.assert_allclose(scorer.score_stream(other).nll[: t + 1], base[: t + 1], atol=1e-6)
    positions = [3, 170, 400]
    probs = scorer.predictive(tokens, positions)
    np.testing.assert_allclose(-np.log(probs[np.arange(3), tokens[positions]]), base[positions], atol=1e-5)

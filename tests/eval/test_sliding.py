"""Standard and sliding-window evaluation against slow, obvious references (one forward per target)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf_core.data.tokenizer_bytes import stream_bytes
from pgolf_core.dist import DistInfo
from pgolf_core.eval import (
    EvalResult,
    SlidingScorer,
    StandardScorer,
    evaluate_sliding,
    evaluate_standard,
    window_plan,
)
from pgolf_core.scoring import ScoreEvents
from tests.eval.helpers import luts, random_stream, tiny_model

CPU = torch.device("cpu")
ONE = DistInfo()


def reference_start(j: int, seq_len: int, stride: int) -> int:
    """The window that scores target j, by the documented rule: the first window (start 0) scores
    1..seq_len; the window at k * stride scores (k stride + seq_len - stride, k stride + seq_len]."""
    if j <= seq_len:
        return 0
    return -(-(j - seq_len) // stride) * stride


@torch.no_grad()
def reference_nll(
    model, tokens: np.ndarray, seq_len: int, stride: int, temperature: float = 1.0
) -> np.ndarray:
    """One forward per target: the window x[start : j] alone, the NLL of x[j] at its last position."""
    x = torch.from_numpy(tokens.astype(np.int64))
    out = np.full(len(tokens), np.nan)
    for j in range(1, len(tokens)):
        start = reference_start(j, seq_len, stride)
        assert 1 <= j - start <= seq_len
        logits = model.logits(x[None, start:j])[0, -1] / temperature
        out[j] = -F.log_softmax(logits, dim=-1)[x[j]].item()
    return out


class Recorder(ScoreEvents):
    """Keeps every ``scored`` call."""

    def __init__(self):
        self.log: list[np.ndarray] = []

    def scored(self, positions):
        self.log.append(np.asarray(positions))


COMBOS = [  # (seq_len, stride, stream length): ragged tails, stride 1, a stream shorter than one window
    (16, 4, 101),
    (16, 16, 100),
    (16, 5, 83),
    (32, 8, 257),
    (16, 1, 40),
    (16, 4, 11),
    (8, 7, 64),
]


@pytest.mark.parametrize("seq_len,stride,n", COMBOS)
def test_sliding_window_matches_one_window_per_token_reference(seq_len, stride, n):
    """Every target's NLL equals a forward over its own window, ending at it, alone (within 1e-5)."""
    model, tokens = tiny_model(), random_stream(n, seed=n)
    res = evaluate_sliding(
        model,
        tokens,
        luts(),
        seq_len=seq_len,
        stride=stride,
        batch_seqs=3,
        dist=ONE,
        device=CPU,
        return_streams=True,
    )
    ref = reference_nll(model, tokens, seq_len, stride)
    assert np.isnan(res.nll[0])
    np.testing.assert_allclose(res.nll[1:], ref[1:], atol=1e-5, rtol=0)
    assert res.loss == pytest.approx(ref[1:].mean(), abs=1e-6)
    assert res.tokens == n - 1 and res.bytes == stream_bytes(tokens, luts())
    assert res.bpb == pytest.approx(np.nansum(ref) / (math.log(2) * res.bytes), rel=1e-6)


def test_stride_one_reference_is_the_longest_context_window():
    """With stride 1 every target j is scored by the window of length min(j, seq_len) ending at it."""
    for j in range(1, 60):
        assert j - reference_start(j, 16, 1) == min(j, 16)


@pytest.mark.parametrize("seq_len,stride,n", COMBOS + [(16, 3, 2), (4, 4, 5)])
def test_window_plan_scores_every_target_exactly_once(seq_len, stride, n):
    """The scored ranges partition 1..N-1, in order, with at least seq_len - stride + 1 context after the
    first window."""
    plan = window_plan(n, seq_len, stride)
    positions = plan.scored_positions(np.arange(plan.num_windows))
    np.testing.assert_array_equal(positions, np.arange(1, n))
    assert (plan.lengths <= seq_len).all() and (plan.starts + plan.lengths <= n - 1).all()
    context = plan.first_scored - plan.starts  # the first scored target of each window sees this many inputs
    assert (context[1:] >= seq_len - stride + 1).all()
    np.testing.assert_array_equal(
        plan.window_of(positions),
        np.repeat(np.arange(plan.num_windows), plan.last_scored - plan.first_scored + 1),
    )


def test_window_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no target"):
        window_plan(1, 16, 4)
    with pytest.raises(ValueError, match="stride"):
        window_plan(100, 16, 17)


def test_every_scored_position_is_reported_once_and_counts_match_the_stream():
    """ScoreEvents.scored sees each target exactly once; token and byte counts equal the stream's (T4)."""
    events = Recorder()
    tokens = random_stream(203, seed=3)
    scorer = SlidingScorer(tiny_model(), seq_len=16, stride=6, batch_seqs=4)
    score = scorer.score_stream(tokens, events)
    seen = np.concatenate(events.log)
    np.testing.assert_array_equal(np.sort(seen), np.arange(1, 203))
    np.testing.assert_array_equal(score.scored, np.arange(1, 203))
    res = evaluate_sliding(
        tiny_model(),
        tokens,
        luts(),
        seq_len=16,
        stride=6,
        batch_seqs=4,
        dist=ONE,
        device=CPU,
        return_streams=True,
    )
    assert res.tokens == 202 and res.bytes == stream_bytes(tokens, luts()) == int(res.byte_counts.sum())
    np.testing.assert_allclose(score.nll[1:], res.nll[1:].astype(np.float64), atol=1e-6)


@pytest.mark.parametrize("n", [161, 170])
def test_stride_equal_to_seq_len_is_standard_evaluation(n):
    """stride == seq_len gives the standard evaluation, position by position (ragged tail included)."""
    model, tokens = tiny_model(), random_stream(n, seed=1)
    std = evaluate_standard(
        model.nll, tokens, luts(), seq_len=16, batch_tokens=64, dist=ONE, device=CPU, return_streams=True
    )
    sw = evaluate_sliding(
        model, tokens, luts(), seq_len=16, stride=16, batch_seqs=5, dist=ONE, device=CPU, return_streams=True
    )
    np.testing.assert_allclose(std.nll[1:], sw.nll[1:], atol=1e-6)
    assert (std.tokens, std.bytes) == (sw.tokens, sw.bytes) == (n - 1, stream_bytes(tokens, luts()))
    assert std.loss == pytest.approx(sw.loss, abs=1e-7)
    np.testing.assert_allclose(std.nll[1:], reference_nll(model, tokens, 16, 16)[1:], atol=1e-5)


def test_temperature_one_equals_the_plain_path_and_other_temperatures_match_a_reference():
    model, tokens = tiny_model(), random_stream(90, seed=4)
    kw = {"seq_len": 16, "stride": 4, "batch_seqs": 4, "dist": ONE, "device": CPU, "return_streams": True}
    plain = evaluate_sliding(model.nll, tokens, luts(), **kw)
    t1 = evaluate_sliding(model, tokens, luts(), temperature=1.0, **kw)
    np.testing.assert_array_equal(plain.nll, t1.nll)
    assert plain.loss == t1.loss and plain.bpb == t1.bpb
    for temperature in (0.7, 1.6):
        res = evaluate_sliding(model, tokens, luts(), temperature=temperature, **kw)
        np.testing.assert_allclose(
            res.nll[1:], reference_nll(model, tokens, 16, 4, temperature)[1:], atol=1e-5
        )
        # A logits function works the same way.
        res2 = evaluate_sliding(lambda x, y: model.logits(x), tokens, luts(), temperature=temperature, **kw)
        np.testing.assert_allclose(res2.nll[1:], res.nll[1:], atol=1e-6)
        std = evaluate_standard(
            model, tokens, luts(), seq_len=16, batch_tokens=64, dist=ONE, device=CPU, temperature=temperature
        )
        assert std.loss != plain.loss
    with pytest.raises(ValueError, match="needs logits"):
        evaluate_sliding(model.nll, tokens, luts(), temperature=0.5, **kw)


def test_result_as_dict_is_json_and_streams_are_compact():
    model, tokens = tiny_model(), random_stream(70)
    res = evaluate_sliding(
        model, tokens, luts(), seq_len=16, stride=8, batch_seqs=4, dist=ONE, device=CPU, return_streams=True
    )
    d = json.loads(json.dumps(res.as_dict()))
    assert set(d) == {"loss", "bpb", "tokens", "bytes", "seconds", "bytes_source"}
    assert d["bytes_source"] == "luts"
    assert res.nll.dtype == np.float32 and res.byte_counts.dtype == np.int16 and res.nll.shape == (70,)
    record = res.stage_record("q_sw", artifact_bytes=123)
    assert record.compliant and record.val_bpb == res.bpb and record.tokens == 69


def test_result_from_a_stream_is_the_evaluation_that_produced_the_stream():
    """EvalResult.from_stream over the per-position NLLs and the stream's bytes reproduces the
    evaluation's own loss and bpb (the sums differ only in summation order), keeps JSON-scalar info,
    and refuses an empty stream."""
    model, tokens = tiny_model(), random_stream(90, seed=2)
    kw = {"seq_len": 16, "stride": 4, "batch_seqs": 3, "dist": ONE, "device": CPU, "return_streams": True}
    res = evaluate_sliding(model, tokens, luts(), **kw)
    score = res.stream_score()
    score.info.update(matched_frac=0.25, weights={"a": 1.0}, table=np.zeros(3))
    again = EvalResult.from_stream(score, int(res.byte_counts.sum()), seconds=1.5)
    assert (again.tokens, again.bytes, again.seconds) == (89, res.bytes, 1.5)
    assert again.loss == pytest.approx(res.loss, rel=1e-12) and again.bpb == pytest.approx(res.bpb, rel=1e-12)
    assert again.bpb == pytest.approx(again.loss * again.tokens / (math.log(2) * again.bytes), rel=1e-15)
    assert again.info == {"matched_frac": 0.25, "weights": {"a": 1.0}}
    score.nll[:] = np.nan
    with pytest.raises(ValueError, match="no scored position"):
        EvalResult.from_stream(score, 10, seconds=0.0)


@pytest.mark.parametrize("cls,kw", [(StandardScorer, {}), (SlidingScorer, {"stride": 5})])
def test_scorer_predictive_is_the_distribution_that_was_scored(cls, kw):
    """predictive(): a normalised distribution whose -log at the realised token is the scored NLL."""
    model, tokens = tiny_model(), random_stream(120, seed=5)
    scorer = cls(model, seq_len=16, temperature=0.9, **kw)
    score = scorer.score_stream(tokens)
    positions = [1, 2, 15, 16, 17, 40, 77, 119]
    probs = scorer.predictive(tokens, positions)
    assert probs.shape == (len(positions), 64)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(
        -np.log(probs[np.arange(len(positions)), tokens[positions]]), score.nll[positions], atol=1e-5
    )

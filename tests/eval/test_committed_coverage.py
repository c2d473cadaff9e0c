"""T4 from what the evaluation committed: every evaluation path records, per target position, how many
times its NLL entered the loss sum, and the pipeline's "T4 full" judges that record, not a count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf_core.dist import DistInfo
from pgolf_core.eval import (
    EvalResult,
    ScoreSums,
    evaluate_plan,
    evaluate_sliding,
    evaluate_standard,
    window_plan,
)
from pgolf_core.eval.windows import WindowPlan
from pgolf_core.pipeline.verdicts import coverage_verdict
from pgolf_core.scoring import StreamScore
from pgolf_core.ttt import TTTInputs, run_ttt
from tests.eval.helpers import doc_stream, luts, random_stream, run_cfg, tiny_model

CPU, ONE = torch.device("cpu"), DistInfo()


def constant_nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.full(y.shape, 2.0)


def overlap_and_gap(n: int, seq_len: int) -> WindowPlan:
    """Standard windows with two bugs that cancel in the count: window 2 starts one token early, so it
    scores the last target of window 1 again (one overlap) and leaves its own last target to nobody
    (one gap)."""
    p = window_plan(n, seq_len, seq_len)
    starts = p.starts.copy()
    starts[2] -= 1
    return WindowPlan(n, seq_len, seq_len, starts, p.lengths, p.score_from)


def test_a_plan_with_one_overlap_and_one_gap_has_the_right_count_and_fails_t4():
    n, T = 1025, 128
    plan = overlap_and_gap(n, T)
    res = evaluate_plan(constant_nll, random_stream(n), luts(), plan, batch_seqs=3, dist=ONE, device=CPU)
    assert res.tokens == n - 1  # what the count-based check compared: it passed this plan
    overlap, gap = 2 * T, 3 * T  # position 256 scored by windows 1 and 2; 384 by none
    assert res.committed[overlap] == 2 and res.committed[gap] == 0 and res.committed[0] == 0
    assert np.flatnonzero(res.committed != 1).tolist() == [0, overlap, gap]
    v = coverage_verdict(res, n)
    assert v.check == "T4 full" and v.passed is False
    assert (
        f"1 of {n - 1} positions scored more than once (up to 2 times, the first at position {overlap})"
        in v.reason
    )
    assert f"1 of {n - 1} positions never scored (the first at position {gap})" in v.reason


@pytest.mark.parametrize("stride", [0, 16, 48])
def test_standard_and_sliding_evaluation_commit_every_target_once(stride):
    n, T = 1000, 64  # 999 targets: a short last window, and for sliding a tail
    tokens = random_stream(n, seed=2)
    kw = {"dist": ONE, "device": CPU, "autocast": False}
    if stride:
        res = evaluate_sliding(constant_nll, tokens, luts(), seq_len=T, stride=stride, batch_seqs=5, **kw)
    else:
        res = evaluate_standard(constant_nll, tokens, luts(), seq_len=T, batch_tokens=3 * T, **kw)
    assert res.committed.dtype == np.int32 and res.committed.shape == (n,)
    assert res.committed[0] == 0 and (res.committed[1:] == 1).all()
    v = coverage_verdict(res, n)
    assert v.passed is True and "checked per position, not by count" in v.reason


@pytest.mark.parametrize(
    "ttt",
    [
        {"mode": "chunk", "chunk_tokens": 64, "epochs": 1, "batch_seqs": 4},
        {"mode": "lora", "lora_chunk_tokens": 16, "lora_window": 32, "lora_batch_docs": 2},
    ],
)
def test_ttt_results_carry_the_committed_record(ttt):
    cfg = run_cfg(eval={"stride": 8, "seq_len": 32, "sliding_batch_seqs": 8}, ttt={"enabled": True, **ttt})
    tokens = doc_stream([60, 90, 40, 70])
    res, _ = run_ttt(TTTInputs.from_config(tiny_model(), tokens, luts(), cfg, dist=ONE, device=CPU))
    assert res.committed[0] == 0 and (res.committed[1:] == 1).all()
    assert coverage_verdict(res, len(tokens)).passed is True


def test_repeats_within_one_batch_are_counted_and_a_commit_without_positions_leaves_no_record():
    sums = ScoreSums(8, CPU, streams=False)
    sums.add(torch.tensor([3, 3, 4]), torch.ones(3), None)  # the same position twice in one batch
    assert sums.committed.tolist() == [0, 0, 0, 2, 1, 0, 0, 0]
    sums.add(None, torch.ones(2), None)
    res = sums.finish(np.zeros(8, dtype=np.int64), None, ONE, 0.0)
    assert res.committed is None and res.tokens == 5
    # Judged by its count only: a right count is n/a (an overlap and a gap would cancel), a wrong one fails.
    assert (
        coverage_verdict(res, 6).passed is None
        and "no per-position record" in coverage_verdict(res, 6).reason
    )
    assert coverage_verdict(res, 8).passed is False


def test_a_stream_result_records_its_scored_positions_and_a_gap_fails():
    nll = np.full(10, 1.5)
    nll[0] = np.nan
    whole = EvalResult.from_stream(StreamScore(nll.copy()), 20, 0.1)
    assert whole.committed.tolist() == [0] + [1] * 9 and coverage_verdict(whole, 10).passed is True
    nll[6] = np.nan
    holed = EvalResult.from_stream(StreamScore(nll), 20, 0.1)
    v = coverage_verdict(holed, 10)
    assert v.passed is False and "1 of 9 positions never scored (the first at position 6)" in v.reason


def test_a_record_that_disagrees_with_the_loss_count_fails():
    res = EvalResult.from_sums(9.0, 8, 20, 0.1, committed=np.array([0] + [1] * 9, dtype=np.int32))
    v = coverage_verdict(res, 10)
    assert v.passed is False and "holds 9 commits but the loss averaged over 8 targets" in v.reason

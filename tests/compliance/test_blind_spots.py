"""The scorer checks' blind spots, each closed against an adversary written for it (tests/compliance/
adversaries.py): reading the future late or sparsely (T1), state across calls (T1c, T3's second pass),
a predictive row built around the committed number (T1b on T2's positions), coverage from what was
committed (T4), and non-determinism that is not cheating (the noise floor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf_core.compliance import (
    NOISE_CAP,
    NoiseFloor,
    check_coverage,
    check_cross_call,
    check_exactly_once,
    check_future_perturbation,
    check_noise,
    check_normalization,
    check_target_independence,
    deterministic_algorithms,
    future_cuts,
    probe_positions,
    run_scorer_checks,
)
from tests.compliance.adversaries import (
    FACTORIES,
    CountsScorer,
    DedupTail,
    LateFuture,
    MemoLeak,
    SparseFuture,
    adversary_verdicts,
    overlap_gap_plan,
    stream,
)

N = 2048
# The four fixed cuts T1 used before (one near the start, then n/4, n/2, 3n/4): a scorer that reads the
# future only after 3n/4, or only between these cuts, passed them.
OLD_CUTS = [17, N // 4 + 1, N // 2, 3 * N // 4 - 1]


def failed(name: str) -> set[str]:
    return {k for k, v in adversary_verdicts(name).items() if v.passed is False}


def test_the_legal_base_of_the_adversaries_passes_everything():
    vs = adversary_verdicts("counts")
    assert all(v.passed for v in vs.values()), [v.reason for v in vs.values() if not v.passed]
    assert vs["noise"].measured == 0.0 and vs["T1"].measured == 0.0 and vs["T1c"].measured == 0.0


# --------------------------------------------------------------------------------------------------
# T1: cuts over the whole probe, its last positions included, seeded and reported
# --------------------------------------------------------------------------------------------------


def test_future_cuts_are_stratified_seeded_and_include_the_last_target():
    cuts = future_cuts(N)
    assert len(cuts) == 16 and cuts[-1] == N - 2 and cuts == sorted(set(cuts))
    stratum = (N - 3) / 15
    assert all(1 + i * stratum <= c < 1 + (i + 1) * stratum + 1 for i, c in enumerate(cuts[:-1]))
    assert future_cuts(N, seed=0) == cuts and future_cuts(N, seed=1) != cuts
    assert future_cuts(N, n_cuts=4, seed=3)[-1] == N - 2 and len(future_cuts(N, n_cuts=4, seed=3)) == 4


@pytest.mark.parametrize("name", ["late_future", "sparse_future"])
def test_readers_of_the_future_passed_the_old_fixed_cuts(name):
    """The blind spot itself: with the cuts T1 used before, neither adversary is seen."""
    v = check_future_perturbation(FACTORIES[name](), stream(), cuts=OLD_CUTS)
    assert v.passed is True and v.measured == 0.0


def test_a_scorer_that_reads_the_future_only_late_is_caught_with_the_seed_reported():
    v = adversary_verdicts("late_future")["T1"]
    assert v.passed is False and v.measured > 0.1 and "depend on future tokens" in v.reason
    assert f"16 cuts (seed 0) {future_cuts(N)}" in v.reason
    pos = int(v.reason.split("at position ")[1].split()[0])
    assert pos >= int(0.8 * N)  # where it reads the future, after every old cut
    for seed in (1, 2, 3):  # not a lucky seed
        assert check_future_perturbation(LateFuture(), stream(), seed=seed).passed is False


def test_a_scorer_that_reads_the_future_at_sparse_positions_is_caught():
    v = adversary_verdicts("sparse_future")["T1"]
    assert v.passed is False and "depend on future tokens" in v.reason
    pos = int(v.reason.split("at position ")[1].split()[0])
    assert pos % 29 == 0  # one of the positions where it peeks at the next 8 tokens
    assert (
        sum(check_future_perturbation(SparseFuture(), stream(), seed=s).passed is False for s in range(4))
        >= 3
    )


def test_the_last_cut_compares_every_position_but_the_last_target():
    """Cut n - 2 replaces only the last token: a scorer reading one token ahead anywhere is seen."""

    class OneAhead(CountsScorer):
        def extra(self, tokens, j):
            return (
                self.p_model[:, tokens[j + 1]] / self.p_model[:, tokens[j + 1]].sum() if j == N - 2 else None
            )

    v = check_future_perturbation(OneAhead(), stream(), cuts=[N - 2])
    assert v.passed is False and f"at position {N - 2}" in v.reason


# --------------------------------------------------------------------------------------------------
# T1c: state across calls
# --------------------------------------------------------------------------------------------------


def test_memory_of_an_earlier_pass_is_caught_by_cross_call_and_the_second_uniform_pass():
    """It scores honestly on a stream it has not seen, so T1 to T2 pass; scoring the same stream again
    (T1c) and a second pass over the uniform stream (T3) show the memory."""
    vs = adversary_verdicts("memo_leak")
    assert failed("memo_leak") == {"T1c", "T3"}
    assert "the same stream scored again after" in vs["T1c"].reason and vs["T1c"].measured > 1
    assert "carries state across calls" in vs["T1c"].reason
    assert (
        "second pass over the same stream" in vs["T3"].reason
        and "remembers the first pass" in vs["T3"].reason
    )


def test_cross_call_check_alone_with_an_instance_or_a_factory():
    tokens = stream()
    assert check_cross_call(CountsScorer(), tokens).passed is True
    assert check_cross_call(CountsScorer, tokens).passed is True
    v = check_cross_call(MemoLeak, tokens)
    assert v.passed is False and "the same stream scored again" in v.reason
    v = check_cross_call(FACTORIES["never_reset"](), tokens)
    assert v.passed is False


def test_a_cache_left_for_later_instances_is_caught_by_the_new_scorer_comparison():
    """One instance is consistent with itself; only a scorer built after the others differs."""
    vs = adversary_verdicts("persisted_cache")
    assert failed("persisted_cache") == {"T1c"}
    assert "a new scorer from the factory, built after these calls" in vs["T1c"].reason


def test_state_on_the_class_is_not_mistaken_for_noise():
    """Memory every instance shares makes the second fresh scorer systematically better: the noise
    verdict says it is not noise, and the other checks get no allowance from it."""
    vs = adversary_verdicts("shared_memo")
    assert {"noise", "T1c", "T3"} <= failed("shared_memo")
    assert "differs systematically" in vs["noise"].reason and "not noise" in vs["noise"].reason
    assert "noise allowance" not in vs["T1c"].reason


def test_a_cache_never_reset_is_caught_by_t1_t1c_and_t3():
    assert {"T1", "T1c", "T3"} <= failed("never_reset")


# --------------------------------------------------------------------------------------------------
# T1b and T2 on the same positions
# --------------------------------------------------------------------------------------------------


def test_t1b_and_t2_read_the_same_32_or_more_positions():
    pos = probe_positions(N)
    assert pos.size >= 32 and pos[0] == 1 and pos[-1] == N - 1
    vs = adversary_verdicts("counts")
    where = f"{pos.size} positions 1..{N - 1} (seed 0)"
    assert where in vs["T1b"].reason and where in vs["T2"].reason


def test_a_row_built_around_the_committed_number_passes_t2_and_fails_t1b_there():
    """At gated positions the committed NLL is an oracle min and ``predictive`` returns a normalized
    row holding exactly that number: T2 (sums, consistency) cannot see it; T1b on the same positions
    sees the row move with x_t. Four positions off the gated residue (as T1b once sampled) pass."""
    tokens = stream()
    adv = FACTORIES["built_around_committed"]
    assert check_normalization(adv(), tokens).passed is True
    assert check_target_independence(adv(), tokens, positions=[553, 1046, 1739, 1303]).passed is True
    vs = adversary_verdicts("built_around_committed")
    assert failed("built_around_committed") == {"T1b"}
    t = int(vs["T1b"].reason.split("at position ")[1].split()[0])
    assert t % 3 == 0 and t in probe_positions(N) and "reads the target" in vs["T1b"].reason


# --------------------------------------------------------------------------------------------------
# T4 from the committed positions
# --------------------------------------------------------------------------------------------------


def test_a_plan_with_one_overlap_and_one_gap_has_the_right_count_but_fails_coverage():
    spans = overlap_gap_plan(N)
    committed = np.concatenate(spans)
    assert committed.size == N - 1  # what a count comparison sees: nothing wrong
    v = check_coverage(positions=committed, expected=range(1, N))
    assert v.passed is False and v.check == "T4 full"
    assert "1 of 2047 positions scored more than once (up to 2 times, the first at position 200)" in v.reason
    assert "1 of 2047 positions never scored (the first at position 501)" in v.reason
    counts = np.bincount(committed, minlength=N)
    assert check_coverage(counts=counts, expected=(1, N)).reason == v.reason


def test_a_rescored_tail_with_deduplicated_events_passes_t4_on_events_but_not_on_commits():
    tokens = stream()
    scorer = DedupTail()
    ev = scorer.evaluate(tokens)
    assert ev["tokens"] == N - 1 and check_exactly_once(scorer, tokens).passed is True
    v = check_coverage(positions=ev["committed"], expected=range(1, N))
    assert v.passed is False
    assert (
        "64 of 2047 positions scored more than once (up to 4 times, the first at position 1984)" in v.reason
    )


def test_coverage_passes_exactly_once_and_flags_positions_outside_the_range():
    ok = check_coverage(positions=np.arange(1, N)[::-1], expected=range(1, N))
    assert ok.passed is True and ok.measured == ok.limit == N - 1
    bad = check_coverage(positions=np.arange(0, N), expected=range(1, N))
    assert bad.passed is False and "1 commits outside 1..2047 (the first at position 0)" in bad.reason
    with pytest.raises(ValueError, match="exactly one of positions= or counts="):
        check_coverage(expected=range(1, N))


# --------------------------------------------------------------------------------------------------
# Non-determinism is not cheating
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jitter", "shuffled"])
def test_a_legal_non_deterministic_scorer_is_not_accused(name):
    """Unseeded noise moves every NLL between calls (jitter ~1e-5 nats, float32 order ~1e-7): T1, T1b
    and T2 compared with a strict tolerance once said it read the future; now the noise floor is its
    own verdict and the comparisons allow ten times it."""
    vs = adversary_verdicts(name)
    assert not failed(name), [v.reason for v in vs.values() if v.passed is False]
    noise = vs["noise"]
    assert noise.passed is None and noise.reason.startswith("non-deterministic (noise ")
    assert 0 < noise.measured < NOISE_CAP


def test_a_noisy_scorer_that_reads_the_future_is_still_caught():
    vs = adversary_verdicts("late_future_jitter")
    assert vs["noise"].passed is None and failed("late_future_jitter") == {"T1", "T1b"}
    assert "noise allowance" in vs["T1"].reason and vs["T1"].measured > 100 * vs["T1"].limit


def test_noise_verdicts():
    assert check_noise(NoiseFloor(0.0, "m")).passed is True
    too = check_noise(NoiseFloor(0.05, "m"))
    assert too.passed is False and "cannot resolve a leak smaller than 0.5 nats" in too.reason
    assert NoiseFloor(1e-5, "m").tolerance(1e-6) == pytest.approx(1e-4)
    assert NoiseFloor(1e-5, "m", bias=-1e-5, z=-50.0).tolerance(1e-6) == 1e-6  # systematic: no allowance


def test_probes_run_with_deterministic_algorithms_and_restore_the_setting():
    seen = []

    class Probe(CountsScorer):
        def score_stream(self, tokens, events=None):
            seen.append(torch.are_deterministic_algorithms_enabled())
            return super().score_stream(tokens, events)

    before = torch.are_deterministic_algorithms_enabled()
    run_scorer_checks(Probe, stream()[:300], uniform_tokens=300, n_cuts=2, n_probe=4)
    assert seen and all(seen) and torch.are_deterministic_algorithms_enabled() == before
    torch.use_deterministic_algorithms(True)  # a strict setting stays strict inside and after
    try:
        with deterministic_algorithms():
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_timings_report_seconds_per_check():
    t: dict[str, float] = {}
    run_scorer_checks(CountsScorer, stream()[:300], uniform_tokens=300, n_cuts=2, n_probe=4, timings=t)
    assert set(t) == {"base", "noise", "T1", "T1b", "T1c", "T2", "T3", "T4", "T5"}
    assert all(s >= 0 for s in t.values())

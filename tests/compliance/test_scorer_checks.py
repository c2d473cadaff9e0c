"""T1-T5 through the Scorer interface: every legal path passes, every known illegal pattern is caught
by the check that targets it, with the measured value in the verdict."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from pgolf_core.compliance import (
    check_exactly_once,
    check_normalization,
    run_scorer_checks,
)
from pgolf_core.model import build_model
from pgolf_core.ngram import ModelScorer, NgramScorer, UniformModel, WindowedTorchModel
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore
from pgolf_core.stages import Verdict
from tests.compliance.illegal import (
    HashedTargetCache,
    OracleGate,
    PrequantTTT,
    TailRescore,
    TwoPass,
    tiny_gpt_config,
)
from tests.ngram.helpers import ngram_cfg, phrase_stream, random_model

V = 1024
LN_V = math.log(V)


def _tiny_gpt_scorer() -> Scorer:
    torch.manual_seed(0)
    return ModelScorer(
        WindowedTorchModel(build_model(tiny_gpt_config(64), device="cpu"), seq_len=64), name="tiny_gpt"
    )


LEGAL = {
    "ngram_fixed": lambda: NgramScorer(random_model(V), ngram_cfg(alpha_rule="fixed", alpha=0.3)),
    "ngram_entropy": lambda: NgramScorer(random_model(V), ngram_cfg(alpha_rule="entropy")),
    "ngram_hedge": lambda: NgramScorer(random_model(V), ngram_cfg(alpha_rule="hedge")),
    "ngram_hedge_full_rows": lambda: NgramScorer(
        UniformModel(V), ngram_cfg(alpha_rule="hedge"), full_rows=True
    ),
    "model_uniform": lambda: ModelScorer(UniformModel(V)),
    "model_random": lambda: ModelScorer(random_model(V)),
    "model_tiny_gpt": _tiny_gpt_scorer,
}

ILLEGAL = {
    # #909 at about its real per-rank load on the 20k-token uniform stream (20k / 8192 buckets = 2.4)
    "hashed_target_909": lambda: HashedTargetCache(UniformModel(V), buckets=1 << 13),
    "prequant_ttt": lambda: PrequantTTT(64),
    "oracle_gate_selected": lambda: OracleGate(UniformModel(V), ngram_cfg(), mode="selected"),
    "oracle_gate_max": lambda: OracleGate(UniformModel(V), ngram_cfg(), mode="max"),
    "two_pass": lambda: TwoPass(UniformModel(V), ngram_cfg(alpha_rule="fixed", alpha=0.5)),
    "tail_rescore": lambda: TailRescore(V),
}


# Pre-quant TTT fine-tunes for every pass: fewer cuts and probed positions keep it to seconds (any cut
# and any position shows it, since it trains on the whole stream).
FEWER = {"prequant_ttt": {"n_cuts": 4, "n_probe": 8}}


@functools.cache
def verdicts(name: str) -> dict[str, Verdict]:
    make = {**LEGAL, **ILLEGAL}[name]
    if make().vocab_size == 64:  # the tiny GPTs: a shorter stream keeps each fine-tune cheap
        tokens, n_uniform = phrase_stream(1024, 64, seed=1), 4096
    else:
        tokens, n_uniform = phrase_stream(4096, V, seed=1), 20000
    checks = run_scorer_checks(make, tokens, uniform_tokens=n_uniform, **FEWER.get(name, {}))
    return {v.check: v for v in checks}


@pytest.mark.parametrize("name", sorted(LEGAL))
def test_legal_scorers_pass_every_scorer_check(name):
    """The legal cache with each mixer (and its full-row path) and plain model scoring pass T1-T5."""
    vs = verdicts(name)
    assert list(vs) == ["noise", "T1", "T1b", "T1c", "T2", "T3", "T4", "T5"]
    assert all(v.passed for v in vs.values()), "\n".join(f"{v.check}: {v.reason}" for v in vs.values())
    assert vs["noise"].measured == vs["T1"].measured == vs["T1b"].measured == vs["T1c"].measured == 0.0
    assert vs["T2"].measured <= 1e-6
    assert vs["T4"].measured == vs["T4"].limit


def test_hashed_target_cache_caught_by_normalization_and_uniform_floor():
    """#909: its 'distribution' sums far above 1 (T2) and it scores uniform noise far below ln V (T3);
    its timing is causal, so T1, T4 and T5 pass (T1 alone does not catch it)."""
    vs = verdicts("hashed_target_909")
    assert vs["T2"].passed is False and vs["T2"].measured > 10 and "not a distribution" in vs["T2"].reason
    assert vs["T3"].passed is False and vs["T3"].measured < LN_V - 2 and "below the floor" in vs["T3"].reason
    assert vs["T1"].passed and vs["T4"].passed and vs["T5"].passed


def test_prequant_ttt_caught_by_future_perturbation_and_score_before_update():
    """Fine-tuning on the whole stream before scoring it: later tokens move early scores (T1), and the
    reported ttt_step updates precede every score (T5)."""
    vs = verdicts("prequant_ttt")
    assert (
        vs["T1"].passed is False and vs["T1"].measured > 1e-3 and "depend on future tokens" in vs["T1"].reason
    )
    assert vs["T5"].passed is False and "'ttt_step' used position 1" in vs["T5"].reason
    assert vs["T5"].measured == 8 * 960  # 8 steps on targets 1..960 (15 windows of 64), none scored yet
    assert vs["T4"].passed


def test_oracle_gate_caught_by_target_independence():
    """#659: the distribution the gate picks depends on x_t (T1b); min-NLL scoring also undercuts the
    uniform floor (T3). Its rows are normalized, so T2 passes."""
    vs = verdicts("oracle_gate_selected")
    assert vs["T1b"].passed is False and vs["T1b"].measured > 1e-4 and "reads the target" in vs["T1b"].reason
    assert vs["T3"].passed is False and vs["T3"].measured < LN_V
    assert vs["T2"].passed and vs["T1"].passed


def test_oracle_gate_max_caught_by_normalization():
    """Read counterfactually, the gate scores max(p_model(v), p_mix(v)), which sums above 1 (T2)."""
    vs = verdicts("oracle_gate_max")
    assert vs["T2"].passed is False and vs["T2"].measured > 1e-3
    assert vs["T3"].passed is False


def test_two_pass_caught_by_exactly_once_and_future_perturbation():
    """Rescoring with a cache that has seen the whole stream: every position is scored twice (T4) and
    early scores depend on later tokens (T1)."""
    vs = verdicts("two_pass")
    assert (
        vs["T4"].passed is False
        and "4095 of 4095 positions scored more than once (up to 2 times, the first at position 1)"
        in vs["T4"].reason
    )
    assert vs["T1"].passed is False and vs["T1"].measured > 0.1
    assert vs["T3"].passed is False and vs["T3"].measured < LN_V - 1


def test_tail_rescore_caught_by_exactly_once_only():
    """The sliding-window tail bug re-scores the last 64 positions; with a static model nothing else
    shows it, so T4 is the check that must exist (``check_coverage`` is its form for an evaluation's
    committed positions)."""
    vs = verdicts("tail_rescore")
    tail = "64 of 4095 positions scored more than once (up to 4 times, the first at position 4032)"
    assert vs["T4"].passed is False and tail in vs["T4"].reason
    assert all(vs[c].passed for c in ("noise", "T1", "T1b", "T1c", "T2", "T3", "T5"))


class _Liar(Scorer):
    """Reports a normalized distribution but scores a lower NLL than it implies."""

    name, vocab_size = "liar", 16

    def score_stream(self, tokens, events=None):
        nll = np.full(len(tokens), math.log(16) - 0.5)
        nll[0] = np.nan
        (events or ScoreEvents()).scored(np.arange(1, len(tokens)))
        return StreamScore(nll)

    def predictive(self, tokens, positions):
        return np.full((len(positions), 16), 1 / 16)


def test_normalization_check_requires_scores_read_from_the_checked_distribution():
    """A scorer cannot pass T2 with one distribution and score with another: the NLL must be -ln p_t(x_t)."""
    v = check_normalization(_Liar(), np.arange(100) % 16)
    assert (
        v.passed is False and "not read from the checked distribution" in v.reason and "gap 0.5" in v.reason
    )


def test_exactly_once_fails_when_nothing_is_reported():
    """A scorer that reports no scored events cannot be verified, so T4 fails rather than passes."""

    class Silent(_Liar):
        def score_stream(self, tokens, events=None):
            return super().score_stream(tokens, None)

    v = check_exactly_once(Silent(), np.arange(100) % 16)
    assert v.passed is False and "no scored events" in v.reason

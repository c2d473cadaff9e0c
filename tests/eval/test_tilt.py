"""The token-only n-gram tilt (#2135): hints equal a slow sequential reference, the tilt is a normalized
distribution whose closed-form NLL equals the explicit one, hints are causal, and the scorer passes the
compliance checks while the target-gated ablation of #2130 is caught."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pgolf_core import compliance
from pgolf_core.eval.tilt import (
    BETA,
    TiltScorer,
    build_hints,
    reference_hints,
    tilted_distribution,
    tilted_nll,
)
from tests.ngram.helpers import phrase_stream, random_model


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_hints_equal_the_sequential_reference(seed):
    rng = np.random.default_rng(seed)
    V, order = int(rng.integers(2, 8)), int(rng.integers(2, 7))
    x = phrase_stream(4000, V, phrases=5, phrase_len=6, repeat=0.8, seed=seed)
    fast, slow = build_hints(x, order, 0.6), reference_hints(x, order, 0.6)
    np.testing.assert_array_equal(fast.hint, slow.hint)
    np.testing.assert_allclose(fast.confidence, slow.confidence, rtol=0, atol=0)
    np.testing.assert_array_equal(fast.gated, slow.gated)
    assert fast.gated_count > 100  # the streams repeat, so hints do fire


def test_hints_on_a_hand_worked_stream():
    # order 3: context = the previous 2 tokens. "1 2 5 | 1 2 6 | 1 2 5 | 1 2 ?"
    x = np.array([1, 2, 5, 1, 2, 6, 1, 2, 5, 1, 2, 7])
    h = reference_hints(x, 3, 0.5)
    assert h.hint[2] == -1  # context (1, 2) first seen here
    assert h.hint[5] == 5 and h.confidence[5] == 1.0  # seen once, followed by 5
    assert h.hint[8] == 5 and h.confidence[8] == 0.5  # 5 and 6 tie at 1: the first to reach 1 leads
    assert h.hint[11] == 5 and h.confidence[11] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(build_hints(x, 3, 0.5).hint, h.hint)


def test_hints_are_causal():
    x = phrase_stream(3000, 6, phrases=4, phrase_len=5, repeat=0.9, seed=3)
    base = build_hints(x)
    rng = np.random.default_rng(0)
    for t in (20, 500, 1700, 2999):
        y = x.copy()
        y[t:] = rng.integers(0, 6, x.size - t)
        other = build_hints(y)
        np.testing.assert_array_equal(other.hint[: t + 1], base.hint[: t + 1])
        np.testing.assert_array_equal(other.gated[: t + 1], base.gated[: t + 1])


def test_tilted_distribution_sums_to_one_and_the_closed_form_matches():
    rng = np.random.default_rng(1)
    for _ in range(50):
        V = int(rng.integers(2, 300))
        z = rng.standard_normal(V) * 3
        p = np.exp(z - z.max())
        p /= p.sum()
        h, y = int(rng.integers(V)), int(rng.integers(V))
        pt = tilted_distribution(p, h)
        assert abs(pt.sum() - 1.0) < 1e-12
        explicit = -math.log(pt[y])
        closed = tilted_nll(
            np.array([-math.log(p[y])]), np.array([math.log(p[h])]), np.array([y == h]), np.array([True])
        )[0]
        assert closed == pytest.approx(explicit, abs=1e-12)
        # with the target as the hint, the tilt helps exactly when p(h) < 1
        if y == h:
            assert closed < -math.log(p[y])
    ungated = tilted_nll(np.array([1.25]), np.array([-0.1]), np.array([True]), np.array([False]), BETA)
    assert ungated[0] == 1.25


def test_tilt_scorer_lowers_the_loss_on_repetitive_text_and_passes_the_checks():
    V = 16
    model = random_model(V, seed=2)
    x = phrase_stream(3000, V, phrases=6, phrase_len=20, repeat=0.9, seed=5)
    scorer = TiltScorer(model, order=8, threshold=0.8)
    tilted = scorer.score_stream(x)
    plain = compliance.record_run(TiltScorer(model, order=8, threshold=1.1), x)  # 1.1: never gated
    assert tilted.info["gated"] > 500
    assert tilted.mean_nll() < np.nanmean(plain.score.nll) - 0.05
    verdicts = {v.check: v for v in compliance.run_scorer_checks(scorer, x, uniform_tokens=4000)}
    assert all(v.passed for v in verdicts.values()), [v.reason for v in verdicts.values() if not v.passed]


def test_the_target_gated_ablation_is_caught():
    V = 16
    model = random_model(V, seed=2)
    x = phrase_stream(3000, V, phrases=6, phrase_len=20, repeat=0.9, seed=5)
    starts_word = np.arange(V) % 2 == 0  # a stand-in "starts a new word" flag per token
    scorer = TiltScorer(model, order=8, threshold=0.8, target_gate_ablation=starts_word)
    assert "NON-COMPLIANT" in scorer.name
    verdicts = {v.check: v for v in compliance.run_scorer_checks(scorer, x, uniform_tokens=4000)}
    failed = sorted(k for k, v in verdicts.items() if v.passed is False)
    # T2 reads the committed NLL against -ln p'(x_t) of the checked distribution: at positions whose
    # target flag is off the score is untilted while p' is tilted. The other checks cannot see it: the
    # hint and the gate depend on the prefix only (T1, T1b, T1c pass), and on i.i.d. uniform tokens no
    # order-8 context repeats, so nothing is tilted (T3 passes).
    assert failed == ["T2"], failed
    assert "not read from the checked distribution" in verdicts["T2"].reason

"""The legal n-gram cache: normalized over the full vocabulary, equal to a slow dict-of-Counters
reference, updated only after scoring (the legal shape: context-only rows, score before update)."""

from __future__ import annotations

import inspect
import math
from collections import Counter

import numpy as np
import pytest

from pgolf_core.config import NgramConfig
from pgolf_core.ngram import (
    HEDGE_LOGW_FLOOR,
    NgramCache,
    NgramScorer,
    UniformModel,
    context_row,
    context_rows,
    entropy_alpha,
)
from pgolf_core.scoring import ScoreEvents
from tests.ngram.helpers import ngram_cfg, phrase_stream, random_model

MIXERS = ("fixed", "entropy", "hedge")


def reference_scores(tokens: np.ndarray, cfg: NgramConfig, model) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Slow reference: one Counter per (order, row), a Python loop over tokens, the recursion written
    out per vocabulary entry, updates after each segment, the mixer formulas by hand."""
    V, N = model.vocab_size, tokens.size
    lp = model.fn(tokens)
    kappa = cfg.smoothing * V
    tables: dict[tuple[int, int], Counter] = {}
    logw = np.full(3, -math.log(3))
    nll, dists = np.full(N, np.nan), {}
    seg = cfg.segment_tokens
    for a in range(1, N, seg):
        span = range(a, min(a + seg, N))
        expert_ll = []
        for j in span:
            q = np.full(V, 1.0 / V)
            matched = False
            for w in range(1, cfg.max_order):
                if j < w:
                    continue
                c = tables.get((w, context_row(tokens[j - w : j].tolist(), cfg.table_rows, V)), Counter())
                n = sum(c.values())
                if n >= cfg.min_count:
                    matched = True
                    q = (np.array([c[v] for v in range(V)], dtype=np.float64) + kappa * q) / (n + kappa)
            pm = np.exp(lp[j]).astype(np.float64)
            h = -float(np.sum(pm * lp[j]))
            a_ent = cfg.alpha_min + (cfg.alpha_max - cfg.alpha_min) / (
                1 + math.exp(-cfg.entropy_slope * (h - cfg.entropy_center))
            )
            if cfg.alpha_rule == "fixed":
                p = pm + cfg.alpha * matched * (q - pm)
            elif cfg.alpha_rule == "entropy":
                p = pm + a_ent * matched * (q - pm)
            else:
                experts = [pm, pm + a_ent * matched * (q - pm), q]
                wts = np.exp(logw - logw.max())
                wts /= wts.sum()
                p = sum(wi * e for wi, e in zip(wts, experts, strict=True))
                expert_ll.append([math.log(e[tokens[j]]) for e in experts])
            nll[j], dists[j] = -math.log(p[tokens[j]]), p
        for j in span:
            for w in range(1, cfg.max_order):
                if j >= w:
                    key = (w, context_row(tokens[j - w : j].tolist(), cfg.table_rows, V))
                    tables.setdefault(key, Counter())[int(tokens[j])] += 1
        if cfg.alpha_rule == "hedge":
            logw = logw + cfg.hedge_beta * np.mean(expert_ll, axis=0)
            logw = np.maximum(logw - logw.max(), HEDGE_LOGW_FLOOR)
    return nll, dists


@pytest.mark.parametrize("rule", MIXERS)
def test_cache_matches_dict_counter_reference(rule):
    """Every NLL (target-entry and full-row paths) and the full distribution at sampled positions equal
    the slow reference (hashed rows included: orders 3 and 4 do not fit 512 rows at V = 48)."""
    V = 48
    cfg = ngram_cfg(alpha_rule=rule, table_rows=512, smoothing=0.05, segment_tokens=16, alpha=0.3)
    tokens = phrase_stream(1200, V, phrases=12, seed=3)
    model = random_model(V, seed=1)
    ref_nll, ref_dists = reference_scores(tokens, cfg, model)
    for full_rows in (False, True):
        scorer = NgramScorer(model, cfg, full_rows=full_rows)
        got = scorer.score_stream(tokens).nll
        # float32 where the scorer chose it: the model's entropy, the full-row path's rows
        tol = 1e-10 if rule == "fixed" and not full_rows else 1e-6
        assert np.nanmax(np.abs(got - ref_nll)) < tol
        assert np.isnan(got[0]) and not np.isnan(got[1:]).any()
    probes = [1, 2, 3, 17, 100, 640, 1199]
    P = NgramScorer(model, cfg).predictive(tokens, probes)
    assert np.abs(P - np.stack([ref_dists[j] for j in probes])).max() < (1e-12 if rule == "fixed" else 1e-7)
    # ...and the reference really exercised the cache: it beats the model alone by > 0.3 nats.
    model_nll = -model.fn(tokens)[np.arange(1, tokens.size), tokens[1:]]
    assert np.nanmean(ref_nll) < model_nll.mean() - 0.3


@pytest.mark.parametrize("rule", MIXERS)
def test_ngram_distribution_is_normalized_over_full_vocab(rule):
    """At 200 positions of a 6k-token stream (V = 1024): every p > 0 and |sum - 1| <= 1e-6 (measured
    ~1e-15: the model rows are exact here, the cache rows are normalized by construction)."""
    V = 1024
    cfg = ngram_cfg(alpha_rule=rule, max_order=4, table_rows=2048)
    tokens = phrase_stream(6000, V, seed=5)
    scorer = NgramScorer(random_model(V, seed=2), cfg)
    positions = np.unique(np.linspace(1, tokens.size - 1, 200).astype(int))
    P = scorer.predictive(tokens, positions)
    assert P.shape == (positions.size, V) and P.min() > 0
    assert np.abs(P.sum(axis=1) - 1).max() < 1e-6
    nll = scorer.score_stream(tokens).nll[positions]
    np.testing.assert_allclose(
        -np.log(P[np.arange(positions.size), tokens[positions]]), nll, rtol=0, atol=1e-12
    )


def test_cache_rows_sum_to_one_and_stored_sums_stay_exact():
    """The cache's own rows (before mixing) sum to 1 within 1e-12, and every stored row sum equals the
    sum of its counts after a scoring run (the invariant the target-entry path relies on)."""
    V = 1024
    tokens = np.random.default_rng(0).integers(0, V, 30000)
    scorer = NgramScorer(UniformModel(V), ngram_cfg(table_rows=512))
    scorer.score_stream(tokens)
    cache = scorer.cache
    assert cache.row_sums_consistent()
    rows = cache.rows(tokens, 20000, 20300)
    q, matched = cache.distribution(rows)
    assert matched.all() and np.abs(q.sum(axis=1) - 1).max() < 1e-12 and q.min() > 0
    # target entries read through target_prob are the same numbers as the materialized rows
    qt, _ = cache.target_prob(rows, tokens[20000:20300])
    assert np.abs(qt - q[np.arange(300), tokens[20000:20300]]).max() < 1e-15


def test_context_rows_match_scalar_reference():
    """Vectorized row indices equal the scalar ``context_row`` (exact radix and hashed, any row count)."""
    rng = np.random.default_rng(1)
    for V, rows in ((48, 512), (48, 1000), (1024, 16384), (1024, 3)):
        tokens = rng.integers(0, V, 300)
        for w in (1, 2, 3, 5):
            got = context_rows(tokens, 10, 300, w, rows, V)
            want = [context_row(tokens[j - w : j].tolist(), rows, V) for j in range(10, 300)]
            assert got.tolist() == want and got.max() < rows
    # exact while V^w fits: the bigram rows at V = 1024 are the previous token itself
    assert context_rows(tokens, 1, 300, 1, 16384, 1024).tolist() == tokens[:299].tolist()


def test_cache_rows_depend_on_the_context_only():
    """Changing x_j leaves row j unchanged; changing x_{j-1} moves it."""
    tokens = phrase_stream(500, 1024)
    cache = NgramCache(1024, max_order=4, table_rows=1000)
    base = cache.rows(tokens, 100, 101)
    alt = tokens.copy()
    alt[100] = (alt[100] + 1) % 1024
    assert (cache.rows(alt, 100, 101) == base).all()
    alt[99] = (alt[99] + 1) % 1024
    assert (cache.rows(alt, 100, 101) != base).all()


class StateProbe(ScoreEvents):
    """Records (event, first, last, counts in the tables at that moment)."""

    def __init__(self, cache: NgramCache):
        self.cache, self.log = cache, []

    def scored(self, positions):
        self.log.append(("scored", int(positions[0]), int(positions[-1]), int(self.cache.rowsum.sum())))

    def updated(self, positions, kind):
        self.log.append((kind, int(positions[0]), int(positions[-1]), int(self.cache.rowsum.sum())))


@pytest.mark.parametrize("rule", MIXERS)
def test_cache_updates_only_after_scoring(rule):
    """Per segment: scored, then cache (then mixer for Hedge); when a segment is scored the tables hold
    exactly the positions before it, never one of its own."""
    cfg = ngram_cfg(alpha_rule=rule, max_order=4, segment_tokens=64)
    tokens = phrase_stream(1000, 1024)
    scorer = NgramScorer(UniformModel(1024), cfg)
    probe = StateProbe(scorer.cache)
    scorer.score_stream(tokens, probe)
    kinds = ["scored", "cache"] + (["mixer"] if rule == "hedge" else [])
    assert [e[0] for e in probe.log] == kinds * math.ceil(999 / 64)

    def inserted_before(a):  # (position, order) pairs with a full context and position < a
        return sum(max(0, a - max(w, 1)) for w in (1, 2, 3))

    for k in range(0, len(probe.log), len(kinds)):
        (_, a, b, at_score), (_, a2, b2, after) = probe.log[k], probe.log[k + 1]
        assert (a, b) == (a2, b2) and a == 1 + 64 * (k // len(kinds))
        assert at_score == inserted_before(a) and after == inserted_before(b + 1)


def test_cache_segments_do_not_see_each_other_within_a_segment():
    """A repeated token gets no credit for earlier copies in its own segment; in the next segment it does."""
    V = 1024
    tokens = np.zeros(200, dtype=np.int64)  # context (0,) -> 0, over and over
    cfg = ngram_cfg(alpha_rule="fixed", alpha=1.0, max_order=2, min_count=1, segment_tokens=64)
    nll = NgramScorer(UniformModel(V), cfg).score_stream(tokens).nll
    assert np.allclose(nll[1:65], math.log(V))  # first segment: tables empty, alpha has no match
    # second segment: row (0,) holds 64 zeros, q(0) = (64 + 0.01 * 1024 / 1024) / (64 + 10.24)
    assert nll[65] == pytest.approx(-math.log((64 + 0.01) / (64 + 10.24)), rel=1e-12)


def test_default_table_bytes_stay_under_300mb():
    """Orders 2..4 x 16,385 rows x 1,025 uint32 (counts + row sums) = 201.5 MB at V = 1024."""
    cfg = NgramConfig()
    est = NgramCache.estimate_table_bytes(1024, cfg.max_order, cfg.table_rows)
    cache = NgramCache.from_config(cfg, 1024)  # np.zeros: pages are mapped lazily, so this is cheap
    assert cache.table_bytes == est == 201_535_500 and est < 300e6


def test_entropy_alpha_follows_the_config_curve():
    """alpha is alpha_min..alpha_max, the midpoint at the centre, rising with the model's entropy."""
    cfg = NgramConfig(alpha_min=0.05, alpha_max=0.6, entropy_center=3.0, entropy_slope=2.0)
    a = entropy_alpha(np.array([-50.0, 3.0, 6.93, 50.0]), cfg)
    assert a[0] == pytest.approx(0.05) and a[1] == pytest.approx(0.325) and a[3] == pytest.approx(0.6)
    assert a[2] == pytest.approx(0.05 + 0.55 / (1 + math.exp(-2 * 3.93)))


def test_hedge_weights_favour_the_cache_on_repetitive_text_and_the_model_on_noise():
    """Hedge picks what the already-scored text rewards: the cache side on phrase text, the model on
    i.i.d. uniform tokens (where every cache row is noise)."""
    V = 1024
    cfg = ngram_cfg(alpha_rule="hedge", table_rows=4096)
    scorer = NgramScorer(UniformModel(V), cfg)
    text = scorer.score_stream(phrase_stream(20000, V, seed=7))
    noise = scorer.score_stream(np.random.default_rng(7).integers(0, V, 20000))
    w_text, w_noise = text.info["hedge_weights"], noise.info["hedge_weights"]
    assert w_text["model"] < 1e-6 and w_text["mix"] + w_text["cache"] > 0.999
    assert w_noise["model"] > 0.999
    assert text.mean_nll() < 3.0 < math.log(V) <= noise.mean_nll() + 1e-3


@pytest.mark.parametrize("rule", MIXERS)
def test_cache_beats_the_model_on_repetitive_text(rule):
    """On phrase text the mixture is well below the uniform model's ln V; on uniform noise it stays
    at or above ln V - 4 SE (T3 by hand)."""
    V = 1024
    cfg = ngram_cfg(alpha_rule=rule, alpha=0.5, table_rows=4096)
    scorer = NgramScorer(UniformModel(V), cfg)
    assert scorer.score_stream(phrase_stream(20000, V, seed=9)).mean_nll() < math.log(V) - 1.5
    nll = scorer.score_stream(np.random.default_rng(9).integers(0, V, 20000)).nll[1:]
    assert nll.mean() >= math.log(V) - 4 * nll.std() / math.sqrt(nll.size)


def test_cache_defaults_are_the_config_defaults():
    """NgramCache's keyword defaults are NgramConfig's: NgramCache(V) builds what
    NgramCache.from_config(NgramConfig(), V) builds."""
    params = inspect.signature(NgramCache).parameters
    cfg = NgramConfig()
    for name in ("max_order", "table_rows", "min_count", "smoothing"):
        assert params[name].default == getattr(cfg, name), name

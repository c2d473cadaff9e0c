"""Scorer checks T1-T5, through the ``pgolf_core.scoring.Scorer`` interface alone.

    T1   future perturbation   scores at positions <= t do not move when every token after t changes
    T1b  target independence   p_t(.) is the same whether x_t = a or x_t = b
    T2   normalization         p_t >= 0, |sum_v p_t(v) - 1| <= 1e-6, and the scored NLL is -ln p_t(x_t)
    T3   uniform floor         on i.i.d. uniform tokens, mean NLL >= ln V - 4 SE
    T4   exactly once          the scored positions are exactly {1, ..., N-1}, once each
    T5   score before update   every position a state update uses was already scored

    verdicts = run_scorer_checks(scorer, tokens)           # T1, T1b, T2, T3, T4, T5

A scorer that passes a check is not proven legal; what each check cannot see is in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pgolf_core.compliance.events import ScoredRun, _run_for, _vocab, record_run
from pgolf_core.scoring import Scorer
from pgolf_core.stages import Verdict

NORM_TOL = 1e-6  # T2: |sum_v p(v) - 1|
Z_FLOOR = 4.0  # T3: mean NLL >= ln V - 4 SE


def default_cuts(n: int) -> list[int]:
    """Cut points for T1: one near the start, then spread, off any power-of-two grid."""
    cuts = {min(17, n - 2), n // 4 + 1, n // 2, (3 * n) // 4 - 1}
    return sorted(c for c in cuts if 1 <= c <= n - 2)


def check_future_perturbation(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    cuts: Sequence[int] | None = None,
    seed: int = 0,
    atol: float = 1e-6,
    run: ScoredRun | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T1: for each cut t, replace every token after t by a different random token and rescore from
    scratch; the NLLs at positions 1..t must not move by more than ``atol`` nats.

    Catches pre-eval TTT, two-pass rescoring, caches updated before scoring, any lookahead. It does not catch the hashed-target cache: its timing is causal.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    base = _run_for(scorer, tokens, run).score.nll
    cuts = [int(c) for c in cuts] if cuts is not None else default_cuts(tokens.size)
    rng = np.random.default_rng(seed)
    worst = (0.0, -1, -1)  # (|delta|, cut, position)
    for t in cuts:
        alt = tokens.copy()
        alt[t + 1 :] = (tokens[t + 1 :] + rng.integers(1, V, tokens.size - t - 1)) % V
        nll = scorer.score_stream(alt).nll
        d = np.abs(nll[1 : t + 1] - base[1 : t + 1])
        d = np.where(np.isnan(nll[1 : t + 1]) & np.isnan(base[1 : t + 1]), 0.0, d)
        d = np.where(np.isnan(d), np.inf, d)
        k = int(np.argmax(d))
        if d[k] > worst[0]:
            worst = (float(d[k]), t, k + 1)
    delta, t, pos = worst
    if delta <= atol:
        return Verdict(
            "T1",
            True,
            f"NLLs at positions <= t unchanged when every later token is replaced, "
            f"cuts {cuts}: max |delta| {delta:.3g} nats <= {atol:g}",
            delta,
            atol,
        )
    return Verdict(
        "T1",
        False,
        f"replacing the tokens after position {t} moved the NLL at position {pos} "
        f"by {delta:.4g} nats (limit {atol:g}): scores depend on future tokens",
        delta,
        atol,
    )


def check_target_independence(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    positions: Sequence[int] | None = None,
    n_positions: int = 4,
    seed: int = 0,
    atol: float = 1e-9,
    vocab_size: int | None = None,
) -> Verdict:
    """T1b: p_t(.) from ``predictive`` with x_t = a and with x_t = b (all else equal) must agree.

    Catches x_t-dependent gating (oracle gates #659, boundary flags of the target #1420 before
    its #1437 fix) and any distribution built after looking at the target.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    rng = np.random.default_rng(seed)
    if positions is None:
        positions = sorted(
            rng.choice(
                np.arange(1, tokens.size), size=min(n_positions, tokens.size - 1), replace=False
            ).tolist()
        )
    positions = [int(t) for t in positions]
    worst = (0.0, -1)
    for t in positions:
        alt = tokens.copy()
        alt[t] = (tokens[t] + int(rng.integers(1, V))) % V
        p_a = scorer.predictive(tokens, [t])[0]
        p_b = scorer.predictive(alt, [t])[0]
        d = float(np.max(np.abs(p_a - p_b)))
        if not d <= worst[0]:
            worst = (d if not math.isnan(d) else math.inf, t)
    delta, t = worst
    if delta <= atol:
        return Verdict(
            "T1b",
            True,
            f"p_t(.) identical for two values of x_t at positions {list(positions)}: "
            f"max |delta p| {delta:.3g} <= {atol:g}",
            delta,
            atol,
        )
    return Verdict(
        "T1b",
        False,
        f"the predictive distribution at position {t} changed by up to {delta:.4g} "
        f"(limit {atol:g}) when only x_{t} changed: it reads the target",
        delta,
        atol,
    )


def check_normalization(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    positions: Sequence[int] | None = None,
    n_positions: int = 32,
    seed: int = 0,
    tol: float = NORM_TOL,
    consistency_atol: float = 1e-5,
    run: ScoredRun | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T2: at sampled positions p_t(v) >= 0 for every v, |sum_v p_t(v) - 1| <= tol over the full
    vocabulary, and the NLL that ``score_stream`` reported equals -ln p_t(x_t) (within
    ``consistency_atol`` nats), so the scored number is an entry of that normalized distribution.

    Catches target-keyed hashed caches (#909: sums 1.17..346) and max-over-experts oracle gates (C2).
    The consistency part keeps ``predictive`` honest: a scorer cannot check one distribution and score
    another.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    rng = np.random.default_rng(seed)
    if positions is None:
        k = min(n_positions, tokens.size - 1)
        positions = np.unique(np.concatenate([[1, tokens.size - 1], rng.integers(1, tokens.size, k)]))
    positions = np.asarray(positions, dtype=np.int64)
    P = np.asarray(scorer.predictive(tokens, positions), dtype=np.float64)
    if P.shape != (positions.size, V):
        return Verdict(
            "T2",
            False,
            f"predictive returned shape {P.shape}, expected {(positions.size, V)} "
            f"(a distribution over the full vocabulary)",
            None,
            tol,
        )
    if not np.isfinite(P).all() or (P < 0).any():
        bad = int(np.flatnonzero(~(np.isfinite(P) & (P >= 0)).all(axis=1))[0])
        return Verdict(
            "T2", False, f"p_t has negative or non-finite entries at position {positions[bad]}", None, tol
        )
    sums = P.sum(axis=1)
    err = np.abs(sums - 1.0)
    i = int(np.argmax(err))
    if err[i] > tol:
        return Verdict(
            "T2",
            False,
            f"p_t sums to {sums.min():.6g}..{sums.max():.6g} over the {V}-token "
            f"vocabulary at {positions.size} positions (worst {sums[i]:.6g} at position "
            f"{positions[i]}; limit |sum - 1| <= {tol:g}): not a distribution",
            float(err[i]),
            tol,
        )
    nll = _run_for(scorer, tokens, run).score.nll[positions]
    with np.errstate(divide="ignore"):
        gap = np.abs(nll + np.log(P[np.arange(positions.size), tokens[positions]]))
    gap = np.where(np.isnan(gap), np.inf, gap)
    g = int(np.argmax(gap))
    if gap[g] > consistency_atol:
        with np.errstate(divide="ignore"):
            lp = -math.log(P[g, tokens[positions[g]]]) if P[g, tokens[positions[g]]] > 0 else math.inf
        return Verdict(
            "T2",
            False,
            f"rows sum to 1 (max error {err[i]:.2g}) but the scored NLL at position "
            f"{positions[g]} is {nll[g]:.6g} nats while -ln p_t(x_t) = {lp:.6g} (gap {gap[g]:.4g} > "
            f"{consistency_atol:g}): the score is not read from the checked distribution",
            float(err[i]),
            tol,
        )
    return Verdict(
        "T2",
        True,
        f"p_t >= 0 and |sum - 1| <= {err[i]:.2g} over all {V} tokens at "
        f"{positions.size} positions (limit {tol:g}); scored NLL = -ln p_t(x_t) within "
        f"{gap[g]:.2g} nats",
        float(err[i]),
        tol,
    )


def check_uniform_floor(
    scorer: Scorer,
    *,
    vocab_size: int | None = None,
    n_tokens: int = 20000,
    seed: int = 0,
    z: float = Z_FLOOR,
    tokens: np.ndarray | None = None,
) -> Verdict:
    """T3: score i.i.d. uniform tokens; require mean NLL >= ln V - z * SE.

    For any causal scorer whose scores come from normalized distributions, E[NLL_t | past] =
    ln V + KL(uniform || p_t) >= ln V, so a mean significantly below ln V proves leakage or missing
    normalization, whatever the mechanism (a #909-style cache at its real per-rank load scores
    about 4.24 nats on uniform tokens of V = 1024, against ln V = 6.93).
    """
    V = _vocab(scorer, vocab_size)
    if tokens is None:
        tokens = np.random.default_rng(seed).integers(0, V, n_tokens)
    nll = scorer.score_stream(np.asarray(tokens, dtype=np.int64)).nll
    vals = nll[~np.isnan(nll)]
    if vals.size < 2:
        return Verdict("T3", False, "fewer than two positions were scored on the uniform stream", None, None)
    mean = float(vals.mean())
    se = float(vals.std(ddof=1) / math.sqrt(vals.size))
    floor = math.log(V) - z * se
    zscore = (mean - math.log(V)) / se if se > 0 else 0.0
    ok = mean >= floor - 1e-12 * math.log(V)  # 1e-12: float rounding of a constant ln V stream
    what = "at or above" if ok else "below"
    return Verdict(
        "T3",
        ok,
        f"mean NLL {mean:.5f} nats on {vals.size} i.i.d. uniform tokens is {what} the floor "
        f"ln {V} - {z:g} SE = {floor:.5f} (SE {se:.2g}, z = {zscore:+.1f})"
        + ("" if ok else ": scores below chance on unpredictable data"),
        mean,
        floor,
    )


def check_exactly_once(scorer: Scorer, tokens: np.ndarray, *, run: ScoredRun | None = None) -> Verdict:
    """T4: the positions reported through ``ScoreEvents.scored`` form exactly {1..N-1}, each once, and
    the returned NLLs cover exactly those positions. Catches two-pass rescoring, reporting a later
    epoch, and the tail re-scoring of the common sliding-window schedule (it re-scores the last
    ``stride`` positions once per truncated tail window)."""
    run = _run_for(scorer, np.asarray(tokens, dtype=np.int64), run)
    counts = run.log.scored_count
    n = counts.size - 1
    if run.log.scored_events == 0:
        return Verdict(
            "T4",
            False,
            "the scorer reported no scored events; coverage cannot be verified "
            "(report ScoreEvents.scored as NLLs are committed)",
            0.0,
            float(n),
        )
    missing = int((counts[1:] == 0).sum())
    repeated = int((counts[1:] > 1).sum())
    extra = int(counts[0])
    covered = np.flatnonzero(~np.isnan(run.score.nll))
    nll_ok = covered.size == n and (covered == np.arange(1, n + 1)).all()
    if missing or repeated or extra or not nll_ok:
        parts = []
        if repeated:
            parts.append(f"{repeated} of {n} positions scored more than once (up to {counts.max()} times)")
        if missing:
            parts.append(f"{missing} positions never scored")
        if extra:
            parts.append("position 0 scored")
        if not nll_ok:
            parts.append(f"the NLL array covers {covered.size} positions")
        return Verdict(
            "T4",
            False,
            "; ".join(parts) + f" (expected each of 1..{n} exactly once)",
            float(counts[1:].sum()),
            float(n),
        )
    return Verdict(
        "T4",
        True,
        f"each of the {n} positions 1..{n} scored exactly once ({run.log.scored_events} scored events)",
        float(n),
        float(n),
    )


def check_score_before_update(scorer: Scorer, tokens: np.ndarray, *, run: ScoredRun | None = None) -> Verdict:
    """T5: every position named in an ``updated`` event had been scored when the update happened.

    Sees only the updates a scorer reports; unreported adaptation is caught by T1 instead."""
    run = _run_for(scorer, np.asarray(tokens, dtype=np.int64), run)
    log = run.log
    kinds = ", ".join(f"{k} x{c}" for k, c in sorted(log.update_kinds.items())) or "none"
    if log.violations:
        kind, pos, count = log.violations[0]
        total = sum(v[2] for v in log.violations)
        return Verdict(
            "T5",
            False,
            f"{len(log.violations)} update events used positions not yet scored "
            f"({total} position uses in all); first: '{kind}' used position {pos} and {count - 1} "
            f"more before they were scored (updates: {kinds})",
            float(total),
            0.0,
        )
    if not log.update_kinds:
        return Verdict(
            "T5",
            True,
            "no state updates reported (a static scorer; unreported adaptation is T1's to catch)",
            0.0,
            0.0,
        )
    return Verdict(
        "T5", True, f"every update used only already-scored positions (updates: {kinds})", 0.0, 0.0
    )


def run_scorer_checks(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    vocab_size: int | None = None,
    cuts: Sequence[int] | None = None,
    n_probe: int = 32,
    n_target_probe: int = 4,
    uniform_tokens: int = 20000,
    seed: int = 0,
) -> list[Verdict]:
    """T1, T1b, T2, T3, T4, T5 on any ``Scorer``; one scoring pass of ``tokens`` is shared.

    Cost: 1 + len(cuts) passes over ``tokens`` (T1), 2 * n_target_probe prefix passes (T1b), one
    prefix pass (T2) and one pass over ``uniform_tokens`` (T3). A tiny CPU config with a few
    thousand tokens finishes in seconds.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    run = record_run(scorer, tokens)
    return [
        check_future_perturbation(scorer, tokens, cuts=cuts, seed=seed, run=run, vocab_size=V),
        check_target_independence(scorer, tokens, n_positions=n_target_probe, seed=seed, vocab_size=V),
        check_normalization(scorer, tokens, n_positions=n_probe, seed=seed, run=run, vocab_size=V),
        check_uniform_floor(scorer, vocab_size=V, n_tokens=uniform_tokens, seed=seed + 1),
        check_exactly_once(scorer, tokens, run=run),
        check_score_before_update(scorer, tokens, run=run),
    ]

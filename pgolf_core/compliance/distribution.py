"""What is scored is an honest distribution: T1b, T2 (on the same positions) and T3.

    T1b  target independence  p_t(.) from ``predictive`` is unchanged when x_t and every later token change
    T2   normalization        p_t >= 0, |sum_v p_t(v) - 1| <= 1e-6, and the scored NLL is -ln p_t(x_t)
    T3   uniform floor        on i.i.d. uniform tokens, mean NLL >= ln V - 4 SE, also on a second pass

T1b and T2 read the same rows at the same positions (``probes.probe_positions``, 32 or more): a
``predictive`` that builds its row around the committed number at some positions is normalized and
consistent there (T2) but reads x_t to do it (T1b), so no position escapes by being checked by only one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pgolf_core.compliance.events import ScoredRun, _run_for, _vocab
from pgolf_core.compliance.probes import (
    PROBE_POSITIONS,
    NoiseFloor,
    deterministic_algorithms,
    probe_positions,
)
from pgolf_core.scoring import Scorer
from pgolf_core.stages import Verdict

NORM_TOL = 1e-6  # T2: |sum_v p(v) - 1|
Z_FLOOR = 4.0  # T3: mean NLL >= ln V - 4 SE


@dataclass
class PredictiveProbe:
    """``predictive(tokens, positions)`` of one call, shared by T1b (reference rows) and T2."""

    positions: np.ndarray  # int64 [P]
    rows: np.ndarray  # float64 as returned ([P, V] when well formed)


def predictive_probe(scorer: Scorer, tokens: np.ndarray, positions: Sequence[int]) -> PredictiveProbe:
    positions = np.asarray(positions, dtype=np.int64)
    with deterministic_algorithms():
        rows = np.asarray(scorer.predictive(np.asarray(tokens, dtype=np.int64), positions), dtype=np.float64)
    return PredictiveProbe(positions, rows)


def _probe_for(scorer, tokens, positions, n_positions, seed, probe) -> PredictiveProbe:
    if positions is None:
        positions = (
            probe.positions
            if probe is not None
            else probe_positions(tokens.size, n_positions=n_positions, seed=seed)
        )
    positions = np.asarray(positions, dtype=np.int64)
    if probe is not None and np.array_equal(probe.positions, positions):
        return probe
    return predictive_probe(scorer, tokens, positions)


def _where(positions: np.ndarray, seed: int) -> str:
    return f"{positions.size} positions {positions.min()}..{positions.max()} (seed {seed})"


def check_target_independence(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    positions: Sequence[int] | None = None,
    n_positions: int = PROBE_POSITIONS,
    seed: int = 0,
    atol: float = 1e-9,
    noise: NoiseFloor | None = None,
    probe: PredictiveProbe | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T1b: at each probed position t, p_t(.) must be the same when x_t and every later token are
    replaced: the distribution may depend on x_<t only.

    The reference rows come from one ``predictive`` call on the real stream (the rows T2 checks);
    each position's counterfactual from its own call on the changed stream. Catches x_t-dependent
    gating (oracle gates #659, boundary flags of the target #1420 before its #1437 fix), a row built
    around the committed number, and a ``predictive`` that reads the future.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    tol = (noise or NoiseFloor(0.0, "")).tolerance(atol)
    probe = _probe_for(scorer, tokens, positions, n_positions, seed, probe)
    pos, rows = probe.positions, probe.rows
    if rows.shape != (pos.size, V):
        return Verdict(
            "T1b", False, f"predictive returned shape {rows.shape}, expected {(pos.size, V)}", None, tol
        )
    rng = np.random.default_rng([seed, 2])
    worst = (0.0, -1)
    with deterministic_algorithms():
        for i, t in enumerate(pos.tolist()):
            alt = tokens.copy()
            alt[t:] = (tokens[t:] + rng.integers(1, V, tokens.size - t)) % V
            p_b = np.asarray(scorer.predictive(alt, [t]), dtype=np.float64)[0]
            d = float(np.max(np.abs(rows[i] - p_b)))
            d = math.inf if math.isnan(d) else d
            if d > worst[0]:
                worst = (d, t)
    delta, t = worst
    allowance = "" if tol == atol else f" (noise allowance; atol {atol:g})"
    if delta <= tol:
        return Verdict(
            "T1b",
            True,
            f"p_t(.) unchanged when x_t and every later token change, at {_where(pos, seed)}: "
            f"max |delta p| {delta:.3g} <= {tol:.3g}{allowance}",
            delta,
            tol,
        )
    return Verdict(
        "T1b",
        False,
        f"the predictive distribution at position {t} changed by up to {delta:.4g} (limit {tol:.3g}"
        f"{allowance}) when x_{t} and the tokens after it changed: it reads the target (or the future)",
        delta,
        tol,
    )


def check_normalization(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    positions: Sequence[int] | None = None,
    n_positions: int = PROBE_POSITIONS,
    seed: int = 0,
    tol: float = NORM_TOL,
    consistency_atol: float = 1e-5,
    noise: NoiseFloor | None = None,
    run: ScoredRun | None = None,
    probe: PredictiveProbe | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T2: at the probed positions p_t(v) >= 0 for every v, |sum_v p_t(v) - 1| <= tol over the full
    vocabulary, and the NLL that ``score_stream`` committed equals -ln p_t(x_t) of the same row
    (within ``consistency_atol`` nats, or the noise allowance), so the scored number is an entry of
    that normalized distribution.

    Catches target-keyed hashed caches (#909: sums 1.17..346) and max-over-experts oracle gates. The
    consistency part keeps ``predictive`` honest: a scorer cannot check one distribution and score
    another; T1b on the same rows keeps it from building each row around the committed number.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    probe = _probe_for(scorer, tokens, positions, n_positions, seed, probe)
    positions, P = probe.positions, probe.rows
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
    ctol = (noise or NoiseFloor(0.0, "")).tolerance(consistency_atol)
    with deterministic_algorithms():
        nll = _run_for(scorer, tokens, run).score.nll[positions]
    with np.errstate(divide="ignore"):
        gap = np.abs(nll + np.log(P[np.arange(positions.size), tokens[positions]]))
    gap = np.where(np.isnan(gap), np.inf, gap)
    g = int(np.argmax(gap))
    if gap[g] > ctol:
        with np.errstate(divide="ignore"):
            lp = -math.log(P[g, tokens[positions[g]]]) if P[g, tokens[positions[g]]] > 0 else math.inf
        return Verdict(
            "T2",
            False,
            f"rows sum to 1 (max error {err[i]:.2g}) but the scored NLL at position "
            f"{positions[g]} is {nll[g]:.6g} nats while -ln p_t(x_t) = {lp:.6g} (gap {gap[g]:.4g} > "
            f"{ctol:.3g}): the score is not read from the checked distribution",
            float(err[i]),
            tol,
        )
    return Verdict(
        "T2",
        True,
        f"p_t >= 0 and |sum - 1| <= {err[i]:.2g} over all {V} tokens at {_where(positions, seed)} "
        f"(limit {tol:g}); scored NLL = -ln p_t(x_t) within {gap[g]:.2g} nats",
        float(err[i]),
        tol,
    )


def _floor(nll: np.ndarray, V: int, z: float) -> tuple[bool, float, float, float, int] | None:
    """(ok, mean, floor, z-score, count) of one pass, or None if fewer than two positions were scored."""
    vals = nll[~np.isnan(nll)]
    if vals.size < 2:
        return None
    mean = float(vals.mean())
    se = float(vals.std(ddof=1) / math.sqrt(vals.size))
    floor = math.log(V) - z * se
    zscore = (mean - math.log(V)) / se if se > 0 else 0.0
    return mean >= floor - 1e-12 * math.log(V), mean, floor, zscore, vals.size  # 1e-12: float rounding


def check_uniform_floor(
    scorer: Scorer,
    *,
    vocab_size: int | None = None,
    n_tokens: int = 20000,
    seed: int = 0,
    z: float = Z_FLOOR,
    tokens: np.ndarray | None = None,
    repeat: bool = True,
) -> Verdict:
    """T3: score i.i.d. uniform tokens; require mean NLL >= ln V - z * SE, and (``repeat``) the same
    of a second pass over the same stream by the same scorer.

    For any causal scorer whose scores come from normalized distributions, E[NLL_t | past] =
    ln V + KL(uniform || p_t) >= ln V, so a mean significantly below ln V proves leakage or missing
    normalization, whatever the mechanism (a #909-style cache at its real per-rank load scores
    about 4.24 nats on uniform tokens of V = 1024, against ln V = 6.93). On the second pass a scorer
    that remembers the first (a table never reset, a stored earlier pass) scores below chance too.
    """
    V = _vocab(scorer, vocab_size)
    if tokens is None:
        tokens = np.random.default_rng(seed).integers(0, V, n_tokens)
    tokens = np.asarray(tokens, dtype=np.int64)
    with deterministic_algorithms():
        passes = [_floor(scorer.score_stream(tokens).nll, V, z) for _ in range(2 if repeat else 1)]
    if any(p is None for p in passes):
        return Verdict("T3", False, "fewer than two positions were scored on the uniform stream", None, None)
    ok, mean, floor, zscore, count = passes[0]
    what = "at or above" if ok else "below"
    reason = (
        f"mean NLL {mean:.5f} nats on {count} i.i.d. uniform tokens is {what} the floor "
        f"ln {V} - {z:g} SE = {floor:.5f} (SE {(math.log(V) - floor) / z:.2g}, z = {zscore:+.1f})"
    )
    if not ok:
        return Verdict("T3", False, reason + ": scores below chance on unpredictable data", mean, floor)
    if repeat:
        ok2, mean2, floor2, zscore2, _ = passes[1]
        if not ok2:
            return Verdict(
                "T3",
                False,
                f"{reason}, but a second pass over the same stream scores {mean2:.5f} nats, below its "
                f"floor {floor2:.5f} (z = {zscore2:+.1f}): the scorer remembers the first pass",
                mean2,
                floor2,
            )
        reason += f"; a second pass over the same stream: {mean2:.5f} (z = {zscore2:+.1f})"
    return Verdict("T3", True, reason, mean, floor)

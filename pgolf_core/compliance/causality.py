"""Causality in time: T1 (no score reads a later token) and T1c (no score depends on earlier calls).

    T1   for each cut t, every token after t replaced: the NLLs at positions 1..t do not move
    T1c  the same stream scored again after other streams, a copy perturbed after a cut, and a new
         scorer built after all of that: the NLLs match a fresh scorer's first pass

Both compare NLLs across calls, so both allow the scorer's own noise floor (``probes.NoiseFloor``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pgolf_core.compliance.events import ScoredRun, ScorerSource, _run_for, _vocab
from pgolf_core.compliance.probes import (
    T1_CUTS,
    NoiseFloor,
    deterministic_algorithms,
    future_cuts,
    max_abs_diff,
)
from pgolf_core.scoring import Scorer
from pgolf_core.stages import Verdict


def _perturb_after(tokens: np.ndarray, t: int, V: int, rng: np.random.Generator) -> np.ndarray:
    """``tokens`` with every token after index t replaced by a different random one."""
    alt = tokens.copy()
    alt[t + 1 :] = (tokens[t + 1 :] + rng.integers(1, V, tokens.size - t - 1)) % V
    return alt


def _cuts_text(cuts: Sequence[int], seed: int | None) -> str:
    where = f"{len(cuts)} cuts" + ("" if seed is None else f" (seed {seed})")
    return f"{where} {list(cuts)}"


def check_future_perturbation(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    cuts: Sequence[int] | None = None,
    n_cuts: int = T1_CUTS,
    seed: int = 0,
    atol: float = 1e-6,
    noise: NoiseFloor | None = None,
    run: ScoredRun | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T1: for each cut t, replace every token after t by a different random token and rescore; the
    NLLs at every position 1..t must not move by more than ``atol`` nats (or the noise allowance).

    The cuts (``probes.future_cuts``: seeded, one per stratum of the stream, and n - 2 so the last
    target is compared too) are reported. Catches pre-eval TTT, two-pass rescoring, caches updated
    before scoring, any lookahead, also when it happens only late or only at some positions (as long
    as a cut falls between such a position and the token it reads). It does not catch the
    hashed-target cache: its timing is causal.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    tol = (noise or NoiseFloor(0.0, "")).tolerance(atol)
    explicit = cuts is not None
    cuts = [int(c) for c in cuts] if explicit else future_cuts(tokens.size, n_cuts=n_cuts, seed=seed)
    rng = np.random.default_rng(seed)
    with deterministic_algorithms():
        base = _run_for(scorer, tokens, run).score.nll
        worst = (0.0, -1, -1)  # (|delta|, cut, position)
        for t in cuts:
            nll = scorer.score_stream(_perturb_after(tokens, t, V, rng)).nll
            d, k = max_abs_diff(nll[1 : t + 1], base[1 : t + 1])
            if d > worst[0]:
                worst = (d, t, k + 1)
    delta, t, pos = worst
    where = _cuts_text(cuts, None if explicit else seed)
    allowance = "" if tol == atol else f" (noise allowance; atol {atol:g})"
    if delta <= tol:
        return Verdict(
            "T1",
            True,
            f"NLLs at every position <= t unchanged when every later token is replaced, {where}: "
            f"max |delta| {delta:.3g} nats <= {tol:.3g}{allowance}",
            delta,
            tol,
        )
    return Verdict(
        "T1",
        False,
        f"replacing the tokens after position {t} moved the NLL at position {pos} by {delta:.4g} nats "
        f"(limit {tol:.3g}{allowance}; {where}): scores depend on future tokens",
        delta,
        tol,
    )


def check_cross_call(
    scorer: Scorer | Callable[[], Scorer],
    tokens: np.ndarray,
    *,
    source: ScorerSource | None = None,
    baseline: np.ndarray | None = None,
    other: np.ndarray | None = None,
    scored_before: str | None = None,
    cut: int | None = None,
    seed: int = 0,
    atol: float = 1e-6,
    noise: NoiseFloor | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T1c: a scorer's NLLs do not depend on what it scored in earlier calls.

    ``baseline``: a fresh scorer's first-pass NLLs over ``tokens`` (scored here by a fresh scorer when
    not given). Then the scorer under test, which may have scored anything before, scores ``other``
    (a seeded uniform stream when not given; nothing when ``scored_before`` says what it has already
    scored besides ``tokens``), ``tokens`` again, and ``tokens`` with every token after
    ``cut`` replaced (cut seeded in the second half when not given); finally, given a factory, a new
    scorer scores ``tokens``. Every pass must match the baseline (the perturbed one at positions
    1..cut), within ``atol`` or the noise allowance.

    Catches a cache or table never reset between calls, memory of an earlier pass over the same stream
    (a warm-up pass that leaves the future behind), and state kept on the class or module, which a
    new instance inherits. ``scorer`` may be a ``Scorer`` (assumed unused when the check starts if no
    baseline is given) or a factory; ``source`` passes one already made (``run_scorer_checks``).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    source = source or ScorerSource(scorer, twin=False)
    s = source.scorer
    V = _vocab(s, vocab_size)
    n = tokens.size
    tol = (noise or NoiseFloor(0.0, "")).tolerance(atol)
    rng = np.random.default_rng([seed, 3])
    if cut is None:
        cut = int(rng.integers(n // 2, n - 1)) if n >= 4 else max(n - 2, 1)
    if other is None and scored_before is None:
        other = rng.integers(0, V, n)
    alt = _perturb_after(tokens, cut, V, rng)
    checks: list[tuple[str, float, int]] = []  # (what, |delta|, position)
    with deterministic_algorithms():
        if baseline is None:
            baseline = s.score_stream(tokens).nll  # the first call: this scorer is still fresh
        if other is not None:
            s.score_stream(np.asarray(other, dtype=np.int64))
        history = scored_before or f"another stream of {len(other)} tokens"
        d, k = max_abs_diff(s.score_stream(tokens).nll, baseline)
        checks.append((f"the same stream scored again after {history}", d, k))
        d, k = max_abs_diff(s.score_stream(alt).nll[1 : cut + 1], baseline[1 : cut + 1])
        checks.append((f"the stream perturbed after position {cut}, scored after the original", d, k + 1))
        late = source.new()
        if late is not None:
            d, k = max_abs_diff(late.score_stream(tokens).nll, baseline)
            checks.append(("a new scorer from the factory, built after these calls", d, k))
    worst = max(checks, key=lambda c: c[1])
    what, delta, pos = worst
    allowance = "" if tol == atol else f" (noise allowance; atol {atol:g})"
    done = "; ".join(c[0] for c in checks) + ("" if late is not None else " (no factory: no new scorer)")
    if delta <= tol:
        return Verdict(
            "T1c",
            True,
            f"NLLs equal a fresh scorer's first pass for {done} (cut seed {seed}): max |delta| "
            f"{delta:.3g} nats <= {tol:.3g}{allowance}",
            delta,
            tol,
        )
    return Verdict(
        "T1c",
        False,
        f"{what} moved the NLL at position {pos} by {delta:.4g} nats from a fresh scorer's first pass "
        f"(limit {tol:.3g}{allowance}): the scorer carries state across calls (a cache not reset, or "
        f"memory of an earlier pass)",
        delta,
        tol,
    )

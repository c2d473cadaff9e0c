"""All scorer checks on one scorer, sharing what can be shared: ``run_scorer_checks``.

    noise  identical input scored by two fresh scorers: deterministic, or its noise floor
    T1     future perturbation   (causality.py)     T1c  state across calls       (causality.py)
    T1b    target independence   (distribution.py)  T2   normalization, same rows (distribution.py)
    T3     uniform floor, twice  (distribution.py)  T4   exactly once             (coverage.py)
    T5     score before update   (coverage.py)

    verdicts = run_scorer_checks(make_scorer, tokens)      # a factory, or a Scorer instance

A scorer that passes is not proven legal; what each check cannot see is in its docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from pgolf_core.compliance.causality import check_cross_call, check_future_perturbation
from pgolf_core.compliance.coverage import check_exactly_once, check_score_before_update
from pgolf_core.compliance.distribution import (
    check_normalization,
    check_target_independence,
    check_uniform_floor,
    predictive_probe,
)
from pgolf_core.compliance.events import ScorerSource, _vocab, record_run
from pgolf_core.compliance.probes import (
    NOISE_CAP,
    PROBE_POSITIONS,
    T1_CUTS,
    check_noise,
    deterministic_algorithms,
    future_cuts,
    measure_noise,
    probe_positions,
)
from pgolf_core.scoring import Scorer
from pgolf_core.stages import Verdict


def run_scorer_checks(
    scorer: Scorer | Callable[[], Scorer],
    tokens: np.ndarray,
    *,
    vocab_size: int | None = None,
    cuts: Sequence[int] | None = None,
    n_cuts: int = T1_CUTS,
    n_probe: int = PROBE_POSITIONS,
    uniform_tokens: int = 20000,
    seed: int = 0,
    noise_cap: float = NOISE_CAP,
    timings: dict[str, float] | None = None,
) -> list[Verdict]:
    """noise, T1, T1b, T1c, T2, T3, T4, T5 on any scorer, under deterministic torch algorithms.

    ``scorer``: a factory that builds a fresh scorer (preferred: what the pipeline has for each stage)
    or a ``Scorer`` (then the noise twin is a copy taken before its first use). The first pass over
    ``tokens`` is a fresh scorer's and is shared (T1's baseline, T2's consistency, T4, T5, T1c); a
    second fresh scorer gives the noise floor that T1, T1b, T1c and T2 allow. T1b and T2 read the same
    ``n_probe`` (+ both ends) positions; T1 cuts ``n_cuts`` times (seeded, reported); T1c runs last,
    after the scorer has scored everything else. ``timings`` (a dict) receives seconds per check.

    Cost in passes over ``tokens``: 2 (base, noise) + n_cuts (T1) + 3 (T1c), ``n_probe + 3``
    ``predictive`` calls (T1b, T2), and two passes over ``uniform_tokens`` (T3).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    clock: dict[str, float] = {} if timings is None else timings
    source = ScorerSource(scorer)
    s = source.scorer
    V = _vocab(s, vocab_size)

    def timed(name: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        out = fn()
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0
        return out

    with deterministic_algorithms():
        run = timed("base", lambda: record_run(s, tokens))
        noise = timed("noise", lambda: measure_noise(source, tokens, run.score.nll))
        t1 = timed(
            "T1",
            lambda: check_future_perturbation(
                s, tokens, cuts=cuts, n_cuts=n_cuts, seed=seed, noise=noise, run=run, vocab_size=V
            ),
        )
        positions = probe_positions(tokens.size, n_positions=n_probe, seed=seed)
        probe = timed("T2", lambda: predictive_probe(s, tokens, positions))
        t1b = timed(
            "T1b",
            lambda: check_target_independence(s, tokens, seed=seed, noise=noise, probe=probe, vocab_size=V),
        )
        t2 = timed(
            "T2",
            lambda: check_normalization(
                s, tokens, seed=seed, noise=noise, run=run, probe=probe, vocab_size=V
            ),
        )
        t3 = timed("T3", lambda: check_uniform_floor(s, vocab_size=V, n_tokens=uniform_tokens, seed=seed + 1))
        t4 = timed("T4", lambda: check_exactly_once(s, tokens, run=run))
        t5 = timed("T5", lambda: check_score_before_update(s, tokens, run=run))
        n_t1 = len(cuts) if cuts is not None else len(future_cuts(tokens.size, n_cuts=n_cuts, seed=seed))
        history = f"{n_t1} perturbed copies (T1) and a uniform stream twice (T3)"
        t1c = timed(
            "T1c",
            lambda: check_cross_call(
                s,
                tokens,
                source=source,
                baseline=run.score.nll,
                scored_before=history,
                seed=seed,
                noise=noise,
                vocab_size=V,
            ),
        )
    return [check_noise(noise, cap=noise_cap), t1, t1b, t1c, t2, t3, t4, t5]

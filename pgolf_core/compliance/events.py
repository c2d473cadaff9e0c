"""Recording what a scorer reports: per-position score counts and score-before-update violations.

``record_run`` runs ``score_stream`` once with an ``EventLog``; the scorer checks share that run (T1's
baseline, T2's consistency, T4's coverage, T5's order) instead of scoring the stream again each.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore


class EventLog(ScoreEvents):
    """Records ``scored`` / ``updated`` events: per-position score counts and score-before-update
    violations (an update using a position that had not been scored at that moment)."""

    def __init__(self, num_tokens: int):
        self.scored_count = np.zeros(num_tokens, dtype=np.int64)
        self.scored_events = 0
        self.update_kinds: Counter[str] = Counter()
        self.violations: list[tuple[str, int, int]] = []  # (kind, first unscored position, how many)

    def scored(self, positions: np.ndarray) -> None:
        np.add.at(self.scored_count, np.asarray(positions, dtype=np.int64), 1)
        self.scored_events += 1

    def updated(self, positions: np.ndarray, kind: str) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        self.update_kinds[kind] += 1
        unscored = positions[self.scored_count[positions] == 0]
        if unscored.size:
            self.violations.append((kind, int(unscored.min()), int(unscored.size)))


@dataclass
class ScoredRun:
    """One ``score_stream`` pass with its events, shared by T1 (baseline), T2 (consistency), T4, T5."""

    tokens: np.ndarray
    score: StreamScore
    log: EventLog


def record_run(scorer: Scorer, tokens: np.ndarray) -> ScoredRun:
    tokens = np.asarray(tokens, dtype=np.int64)
    log = EventLog(tokens.size)
    return ScoredRun(tokens, scorer.score_stream(tokens, log), log)


def _run_for(scorer: Scorer, tokens: np.ndarray, run: ScoredRun | None) -> ScoredRun:
    if run is not None and np.array_equal(run.tokens, tokens):
        return run
    return record_run(scorer, tokens)


def _vocab(scorer: Scorer, vocab_size: int | None) -> int:
    V = int(getattr(scorer, "vocab_size", 0) or 0)
    if vocab_size is not None and V and vocab_size != V:
        raise ValueError(f"vocab_size {vocab_size} differs from the scorer's {V}")
    if not (vocab_size or V):
        raise ValueError("the scorer has no vocab_size; pass vocab_size=")
    return int(vocab_size or V)


class ScorerSource:
    """A scorer under test, and where fresh ones come from.

    ``scorer`` is a ``Scorer`` or a zero-argument factory that builds one (how the pipeline makes each
    stage's scorer). A fresh scorer is needed twice: to measure the noise floor (identical input, no
    history) and to tell state carried across calls (T1c) from what a new scorer does. With a factory
    each ``fresh()`` builds one; with an instance, copies are taken before its first use (``None`` if
    it cannot be copied). Class-level or module-level state is shared by copies and new instances
    alike, which is what T1c's last comparison looks for.
    """

    def __init__(self, scorer: Scorer | Callable[[], Scorer], *, copies: int = 2):
        if not isinstance(scorer, type) and hasattr(scorer, "score_stream"):  # an instance, not a class
            self.factory: Callable[[], Scorer] | None = None
            self.scorer: Scorer = scorer
            self._copies: list[Scorer] = []
            try:
                self._copies = [copy.deepcopy(scorer) for _ in range(copies)]
            except Exception:  # noqa: BLE001 - a scorer holding unpicklable handles: no copies, said so
                self._copies = []
            self.fresh_method = "two copies of the unused scorer"
        elif callable(scorer):
            self.factory = scorer
            self.scorer = scorer()
            # the noise twin is built now, before anything is scored: state a scorer leaves on its
            # class at scoring time must not reach the twin through its constructor
            self._copies = [scorer()]
            self.fresh_method = "two fresh scorers from the factory"
        else:
            raise TypeError(f"expected a Scorer or a function that returns one, got {type(scorer).__name__}")

    def fresh(self) -> Scorer | None:
        """A scorer that has scored nothing: the ones made up front first, then (factory) new ones."""
        if self._copies:
            return self._copies.pop(0)
        return self.factory() if self.factory is not None else None

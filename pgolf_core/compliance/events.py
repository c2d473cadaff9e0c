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

    ``scorer`` is a ``Scorer`` or a zero-argument factory that builds one (preferred: how the pipeline
    makes each stage's scorer). Fresh scorers serve twice: a twin scores the identical input for the
    noise floor, and T1c compares with a scorer built after all the other calls (state a new instance
    inherits from its class or module). The twin is made up front, before anything is scored: by the
    factory, or as a copy of the unused instance (``None`` if it cannot be copied; the copy is the
    one extra memory a scorer given as an instance costs). ``new()`` needs a factory.
    """

    def __init__(self, scorer: Scorer | Callable[[], Scorer], *, twin: bool = True):
        self._twin: Scorer | None = None
        if not isinstance(scorer, type) and hasattr(scorer, "score_stream"):  # an instance, not a class
            self.factory: Callable[[], Scorer] | None = None
            self.scorer: Scorer = scorer
            if twin:
                try:
                    self._twin = copy.deepcopy(scorer)
                except Exception:  # noqa: BLE001 - unpicklable handles: no twin, and the reason says so
                    self._twin = None
            self.noise_method = "the scorer and a copy made before its first use"
        elif callable(scorer):
            self.factory = scorer
            self.scorer = scorer()
            # built now, before anything is scored: state a scorer leaves on its class at scoring
            # time must not reach the twin through its constructor
            self._twin = scorer() if twin else None
            self.noise_method = "two fresh scorers from the factory"
        else:
            raise TypeError(f"expected a Scorer or a function that returns one, got {type(scorer).__name__}")

    def twin(self) -> Scorer | None:
        """The scorer made up front that has scored nothing (once; None after, or if there is none)."""
        out, self._twin = self._twin, None
        return out

    def new(self) -> Scorer | None:
        """A scorer built now by the factory (None without one)."""
        return self.factory() if self.factory is not None else None

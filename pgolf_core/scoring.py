"""The scorer interface: what every evaluation path implements so compliance checks can run on it.

A *scorer* turns a token stream x[0..N-1] into one NLL per target position j = 1..N-1 (the NLL of x[j]
given x[:j] and whatever state the scorer has built from already-scored tokens). Standard and
sliding-window evaluation, score-first TTT, the n-gram mixture, and any scorer a user writes all
implement it; ``pgolf_core.compliance`` runs the mechanical tests (T1 future
perturbation, T1b target independence, T2 normalization, T3 uniform floor, T4 exactly-once, T5
score-before-update) through these two methods alone.

Conventions:
- positions are indices into the stream of the token being predicted (1..N-1); position 0 is never
  scored;
- ``score_stream`` returns ``nll`` of length N, float64, ``nan`` at position 0;
- a scorer reports what it does through ``ScoreEvents``: ``scored(positions)`` when NLLs are committed,
  ``updated(positions, kind)`` when state changes using those positions' tokens (an optimizer step, a
  cache insert, a mixer-weight update). Compliance hooks subclass ``ScoreEvents``;
- ``predictive(tokens, positions)`` returns, for each requested position j, the full distribution over
  the vocabulary the scorer would use to score x[j], with its state exactly as it would be at that
  moment of ``score_stream(tokens)``; it must not read x[j] (T1b checks that it does not).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class ScoreEvents:
    """Observer of a scoring run. The default does nothing; compliance checks record and assert."""

    def scored(self, positions: np.ndarray) -> None:
        """NLLs of ``positions`` were committed (they can no longer change)."""

    def updated(self, positions: np.ndarray, kind: str) -> None:
        """State was changed using the tokens at ``positions`` (kind: "ttt_step", "cache", "mixer", ...)."""


@dataclass
class StreamScore:
    """Per-position NLLs of one scoring pass (nats; nan where a position was not scored)."""

    nll: np.ndarray  # float64 [N]
    info: dict = field(default_factory=dict)  # anything worth reporting (timings, weights, counts)

    @property
    def scored(self) -> np.ndarray:
        return np.flatnonzero(~np.isnan(self.nll))

    def mean_nll(self) -> float:
        return float(np.nanmean(self.nll))


class Scorer(ABC):
    """An evaluation path, as the compliance checks see it."""

    #: short name used in reports ("sliding", "ttt_chunk", "ngram_hedge", ...)
    name: str = "scorer"
    #: vocabulary size of the distributions this scorer forms
    vocab_size: int

    @abstractmethod
    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        """Score every target of ``tokens`` once, left to right, reporting to ``events``."""

    @abstractmethod
    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        """[len(positions), vocab] probabilities used for each position, state as during scoring."""

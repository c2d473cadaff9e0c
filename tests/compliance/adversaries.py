"""Adversarial scorers written for the blind spots of the scorer checks (not the fixtures of illegal.py).

All share one legal base, ``CountsScorer``: a fixed random bigram model mixed half and half with a
Dirichlet-smoothed trigram count table built from already-scored tokens (score position j, then add
x_j to the table). Each adversary changes one thing:

- ``LateFuture``: from 80% of the stream on, the row also mixes in a distribution read off the next
  64 tokens (which tokens tend to precede them).
- ``SparseFuture``: the same from the next 8 tokens, at every 29th position only.
- ``BuiltAroundCommitted``: at every 3rd position whose context was seen before (almost never on
  uniform noise), an oracle gate commits min(mixture NLL, counts NLL) on the true token; ``predictive``
  returns a normalized row built around that number, so T2's consistency holds there.
- ``MemoLeak``: a stream scored before is scored again with the table of the earlier pass preloaded.
- ``NeverReset``: the table is never reset between calls.
- ``PersistedCache``: each new instance starts from a table left by all earlier instances (a cache
  file kept between runs); one instance is consistent with itself.
- ``SharedMemo``: ``MemoLeak`` with the memory on the class, so a second fresh scorer inherits it.
- ``Jitter`` (legal): unseeded noise of ~1e-5 nats on every NLL and row (non-deterministic kernels).
- ``Shuffled`` (legal): rows normalized in float32, adding one entry at a time in an unseeded order.
- ``LateFutureJitter``: ``LateFuture`` with ``Jitter``'s noise; illegal and noisy.

``overlap_gap_plan`` and ``DedupTail`` are the coverage adversaries (T4 from committed positions).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from pgolf_core.compliance import run_scorer_checks
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore
from pgolf_core.stages import Verdict

V = 256


class CountsScorer(Scorer):
    """Legal: p_j = 0.5 p_model(. | x_{j-1}) + 0.5 q_j, q_j = (c(x_{j-2}, x_{j-1}, .) + 1/V) / (n + 1)
    from positions < j (p_model alone where j < 2). NLLs and events are committed per position."""

    name = "counts"

    def __init__(self, vocab_size: int = V, *, seed: int = 0):
        self.vocab_size = vocab_size
        rng = np.random.default_rng(seed)
        logits = rng.standard_normal((vocab_size, vocab_size)) * 1.5
        self.p_model = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        self.table: dict[tuple[int, int], np.ndarray] = {}

    # --- hooks the adversaries override -----------------------------------------------------------
    def start(self, tokens: np.ndarray) -> None:
        """Called before each pass: the legal scorer forgets everything."""
        self.table = {}

    def extra(self, tokens: np.ndarray, j: int) -> np.ndarray | None:
        """A distribution mixed in at position j (None: nothing). Legal: nothing."""
        return None

    def commit(self, tokens: np.ndarray, j: int, row: np.ndarray) -> float:
        return float(-np.log(row[tokens[j]]))

    def shown(self, tokens: np.ndarray, j: int, row: np.ndarray, nll: float) -> np.ndarray:
        """The row ``predictive`` returns for position j (legal: the row scored)."""
        return row

    # --- the scorer ---------------------------------------------------------------------------------
    def counts_row(self, tokens: np.ndarray, j: int) -> np.ndarray:
        """q_j: the smoothed counts of what followed (x_{j-2}, x_{j-1}) before position j."""
        c = self.table.get((int(tokens[j - 2]), int(tokens[j - 1])))
        if c is None:
            return np.full(self.vocab_size, 1.0 / self.vocab_size)
        return (c + 1.0 / self.vocab_size) / (c.sum() + 1.0)

    def row(self, tokens: np.ndarray, j: int) -> np.ndarray:
        pm = self.p_model[tokens[j - 1]]
        if j < 2:
            return pm
        p = 0.5 * pm + 0.5 * self.counts_row(tokens, j)
        e = self.extra(tokens, j)
        return p if e is None else 0.5 * p + 0.5 * e

    def _run(self, tokens, events, want=()):
        tokens = np.asarray(tokens, dtype=np.int64)
        self.start(tokens)
        nll = np.full(tokens.size, np.nan)
        rows = {}
        stop = tokens.size if not want else max(want) + 1
        for j in range(1, stop):
            r = self.row(tokens, j)
            nll[j] = self.commit(tokens, j, r)
            if j in want:
                rows[j] = self.shown(tokens, j, r, nll[j])
            events.scored(np.array([j]))
            if j >= 2:
                key = (int(tokens[j - 2]), int(tokens[j - 1]))
                self.table.setdefault(key, np.zeros(self.vocab_size))[tokens[j]] += 1
                events.updated(np.array([j]), "cache")
        return nll, rows

    def score_stream(self, tokens, events=None):
        return StreamScore(self._run(tokens, events or ScoreEvents())[0])

    def predictive(self, tokens, positions):
        positions = [int(p) for p in positions]
        rows = self._run(tokens, ScoreEvents(), set(positions))[1]
        return np.stack([rows[p] for p in positions])


def _from_future(p_model: np.ndarray, future: np.ndarray) -> np.ndarray:
    """q(v) proportional to sum_k p_model(future[k] | v): which tokens tend to precede what comes next.
    It moves whenever any of the future tokens changes."""
    q = p_model[:, future].sum(axis=1) if future.size else np.ones(p_model.shape[0])
    return q / q.sum()


class LateFuture(CountsScorer):
    name = "late_future"

    def extra(self, tokens, j):
        if j < int(0.8 * tokens.size):
            return None
        return _from_future(self.p_model, tokens[j + 1 : j + 65])


class SparseFuture(CountsScorer):
    name = "sparse_future"

    def extra(self, tokens, j):
        return _from_future(self.p_model, tokens[j + 1 : j + 9]) if j % 29 == 0 else None


class BuiltAroundCommitted(CountsScorer):
    name = "built_around_committed"

    def _gated(self, tokens, j):
        return j % 3 == 0 and j >= 2 and (int(tokens[j - 2]), int(tokens[j - 1])) in self.table

    def commit(self, tokens, j, row):
        x = tokens[j]
        nll = -np.log(row[x])
        if self._gated(tokens, j):  # reads x_j to choose between the mixture and the counts alone
            nll = min(nll, -np.log(self.counts_row(tokens, j)[x]))
        return float(nll)

    def shown(self, tokens, j, row, nll):
        if not self._gated(tokens, j):
            return row
        x, p = tokens[j], float(np.exp(-nll))
        out = row * (1.0 - p) / (1.0 - row[x])  # the rest of the mass, in proportion
        out[x] = p
        return out


class MemoLeak(CountsScorer):
    name = "memo_leak"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.memory: dict[bytes, dict] = {}

    def _memory(self) -> dict[bytes, dict]:
        return self.memory

    def start(self, tokens):
        key = tokens.tobytes()
        mem = self._memory()
        if key in mem:  # scored before: start from the table the earlier pass ended with
            self.table = {k: v.copy() for k, v in mem[key].items()}
        else:
            self.table = {}
        self._key = key

    def _run(self, tokens, events, want=()):
        out = super()._run(tokens, events, want)
        if not want:
            self._memory()[self._key] = {k: v.copy() for k, v in self.table.items()}
        return out

    def predictive(self, tokens, positions):  # honest: computed as a first pass would be
        honest = CountsScorer(self.vocab_size)
        honest.p_model = self.p_model
        return honest.predictive(tokens, positions)


class SharedMemo(MemoLeak):
    """The memory lives on the class: every instance, a fresh one included, reads it."""

    name = "shared_memo"
    shared: ClassVar[dict[bytes, dict]] = {}

    def _memory(self):
        return SharedMemo.shared


class NeverReset(CountsScorer):
    name = "never_reset"

    def start(self, tokens):
        pass  # the table built by every earlier call is kept


class PersistedCache(CountsScorer):
    """A new instance starts from the table all earlier instances left behind (as if read from a file
    written by earlier runs); each pass of one instance starts from that same snapshot."""

    name = "persisted_cache"
    store: ClassVar[dict[tuple[int, int], np.ndarray]] = {}

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.snapshot = {k: v.copy() for k, v in PersistedCache.store.items()}

    def start(self, tokens):
        self.table = {k: v.copy() for k, v in self.snapshot.items()}

    def _run(self, tokens, events, want=()):
        out = super()._run(tokens, events, want)
        for k, v in self.table.items():  # what this pass learnt is written back for later runs
            PersistedCache.store[k] = v.copy()
        return out


class _JitterMixin:
    SIGMA = 1e-5

    def start(self, tokens):
        super().start(tokens)
        self._rng = np.random.default_rng()  # unseeded on purpose: differs on every call

    def commit(self, tokens, j, row):
        return super().commit(tokens, j, row) + float(self._rng.normal(0, self.SIGMA))

    def shown(self, tokens, j, row, nll):
        r = super().shown(tokens, j, row, nll) * np.exp(self._rng.normal(0, self.SIGMA, row.size))
        return r / r.sum()


class Jitter(_JitterMixin, CountsScorer):
    name = "jitter"


class LateFutureJitter(_JitterMixin, LateFuture):
    name = "late_future_jitter"


class Shuffled(CountsScorer):
    """Normalizes each row in float32, summing over an unseeded permutation of the vocabulary."""

    name = "shuffled"

    def start(self, tokens):
        super().start(tokens)
        self._rng = np.random.default_rng()

    def row(self, tokens, j):
        r = super().row(tokens, j).astype(np.float32)
        z = np.cumsum(r[self._rng.permutation(r.size)], dtype=np.float32)[-1]  # one add at a time
        return (r / z).astype(np.float64)


def overlap_gap_plan(n: int, width: int = 100) -> list[np.ndarray]:
    """Scored ranges of a window plan over targets 1..n-1 with one bug each way: the third window starts
    one position early (position 200 scored twice) and the sixth one late (position 501 never). The
    total count is exactly n - 1."""
    spans, lo = [], 1
    while lo < n:
        hi = min(lo + width, n)
        spans.append(np.arange(lo, hi))
        lo = hi
    spans[2] = np.arange(spans[2][0] - 1, spans[2][-1] + 1)
    spans[5] = spans[5][1:]
    return spans


class DedupTail(CountsScorer):
    """The sliding schedule's tail bug with the evidence removed: the last ``tail`` positions enter the
    loss sum ``repeats`` times, but each is reported to ``ScoreEvents`` once and the count is n - 1."""

    name = "dedup_tail"

    def __init__(self, *a, tail: int = 64, repeats: int = 4, **k):
        super().__init__(*a, **k)
        self.tail, self.repeats = tail, repeats

    def evaluate(self, tokens) -> dict:
        """What an evaluator reports: loss sum, target count, and the positions it actually summed."""
        nll = self.score_stream(tokens).nll
        n = tokens.size
        committed = np.concatenate([np.arange(1, n)] + [np.arange(n - self.tail, n)] * (self.repeats - 1))
        return {"loss_sum": float(nll[committed].sum()), "tokens": n - 1, "committed": committed}


N_TOKENS, N_UNIFORM = 2048, 4096
#: the adversaries' factories, by name
FACTORIES = {
    cls.name: cls
    for cls in (
        CountsScorer,
        LateFuture,
        SparseFuture,
        BuiltAroundCommitted,
        MemoLeak,
        SharedMemo,
        NeverReset,
        PersistedCache,
        Jitter,
        Shuffled,
        LateFutureJitter,
    )
}


def stream() -> np.ndarray:
    from tests.ngram.helpers import phrase_stream

    return phrase_stream(N_TOKENS, V, seed=1)


@functools.cache
def adversary_verdicts(name: str) -> dict[str, Verdict]:
    """run_scorer_checks on adversary ``name`` (given as its factory) with the default settings."""
    PersistedCache.store.clear()
    SharedMemo.shared.clear()
    return {v.check: v for v in run_scorer_checks(FACTORIES[name], stream(), uniform_tokens=N_UNIFORM)}

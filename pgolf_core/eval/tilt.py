"""The token-only n-gram tilt (#2130 -> #2135, leaderboard #1 at 1.05651; worth about -0.001 bpb).

A *hint* for target position j is the token that most often followed the same 15-token context
(order 16) earlier in the scored stream. Where the hint is confident (its share of that context's
continuations is at least ``threshold``), the model's distribution p is tilted toward it:

    p'(a) = p(a) * exp(beta * [a == h]) / Z,    Z = 1 + p(h) * (exp(beta) - 1)

so the scored loss becomes NLL' = NLL - beta * [y == h] + log1p(p(h) * (exp(beta) - 1)). p' is a proper
distribution over the whole vocabulary and h depends on x[:j] only, so it is legal (the #1514
precedent); #2130's word-start and within-word experts, which read the *target* token to decide
whether to emit a hint, are not (#1967): they are not built here.

The hint builder is one vectorized pass (two stable sorts) instead of the records' sequential hash
table: at occurrence k of a context, the hint is the continuation that first reached the highest pair
count among occurrences 0..k-1 (a running arg-max with strict improvement), and its confidence is that
count / k. ``reference_hints`` is the slow dictionary version the tests compare against. Contexts
seen only once are filtered out before the sorts (``_repeated``). bench/tilt.py on 10M tokens, one
core of the shared 2-core VM at load ~5.5: 2.4-3.0M tokens/s (740k before the doubling hash and the
iterated filter); 1.08M tokens/s on 47.85M tokens (#2135's pod: 240k-290k).

Where the tilt applies: ``TiltScorer`` here tilts a fixed model's sliding-window log-probs (stage
q_tilt); the TTT variants apply the same term, ``tilt_delta`` (the torch twin of ``tilted_nll``), to
their scored loss inside their own scoring loops (``pgolf_core.ttt.tilt``, stage q_ttt_tilt: #2135's
score is phased TTT + the tilt).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore

ORDER = 16  # #2135 TOKEN_ORDER: the context is the previous ORDER - 1 tokens
THRESHOLD = 0.8  # #2135 TOKEN_THRESHOLD: tilt only where the hint's share is at least this
BETA = 2.625  # #2135 TOKEN_BOOST (3.0 measured 0.0002 bpb worse)

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio); wraps mod 2^64
# The singleton filter: bucket tables of about 2 x the survivors, between 2^16 and 2^26 int64 counts
# (512 MiB at most, one at a time); a fresh odd multiplier per pass re-draws the buckets.
_MIN_BUCKET_BITS, _MAX_BUCKET_BITS = 16, 26
_FILTER_MULTS = tuple(
    np.uint64(c)
    for c in (
        0xD6E8FEB86659FD93,
        0xA0761D6478BD642F,
        0xE7037ED1A0B428DB,
        0x8EBC6AF09C88C6E3,
        0x589965CC75374CC3,
        0x1D8E4E27C47D124F,
        0xC2B2AE3D27D4EB4F,
        0x94D049BB133111EB,
    )
)
_FILTER_STOP = 0.02  # stop filtering once a pass drops under 2% of the survivors


@dataclass(frozen=True)
class Hints:
    """Per-position hints of a stream of N tokens (position j predicts x[j])."""

    hint: np.ndarray  # int64 [N], -1 where the context was never seen before (or j < ORDER - 1)
    confidence: np.ndarray  # float64 [N], top pair count / earlier occurrences of the context; 0 if none
    gated: np.ndarray  # bool [N], hint present and confidence >= threshold

    @property
    def gated_count(self) -> int:
        return int(self.gated.sum())


def _context_hashes(tokens: np.ndarray, order: int) -> np.ndarray:
    """Position-sensitive hash of x[j-order+1 .. j-1] for j = order-1 .. N-1 (uint64, wrapping).

    The polynomial H_L[s] = sum_k (x[s+k] + 1) * MULT^(L-1-k) over the L = order - 1 context tokens,
    by doubling: H_2b[s] = H_b[s] * MULT^b + H_b[s+b], and the set bits of L joined the same way
    (H_a+b[s] = H_a[s] * MULT^b + H_b[s+a]), so about 2 log2(L) array passes instead of L. Arithmetic
    is mod 2^64, so this equals the token-by-token Horner loop exactly."""
    n_ctx = order - 1
    m = tokens.size - n_ctx  # contexts that predict a token: starts s = 0 .. N - 1 - n_ctx
    block = tokens.astype(np.uint64) + np.uint64(1)  # H_1
    width = 1  # block = H_width, of length N - width + 1
    acc, acc_len = None, 0
    with np.errstate(over="ignore"):
        for bit in range(n_ctx.bit_length()):
            if n_ctx >> bit & 1:
                right = block[acc_len : acc_len + m]
                acc = right.copy() if acc is None else acc * (_MULT ** np.uint64(width)) + right
                acc_len += width
            if (n_ctx >> (bit + 1)) == 0:
                break
            block = block[:-width] * (_MULT ** np.uint64(width)) + block[width:]  # H_2width
            width *= 2
        h = acc
        # a final avalanche (splitmix64 finalizer) so the sort below sees well-spread keys
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return h


def _repeated(ctx: np.ndarray) -> np.ndarray:
    """Indices of ``ctx`` that may occur more than once: all those that do, few that do not.

    Contexts seen once give no hint to anyone; on text almost every order-16 context is unique, so
    dropping them first leaves the sorts a small fraction of the stream. Each pass counts the
    survivors' buckets (a multiply-shift hash into about 2 buckets per survivor) and drops those
    alone in theirs: a repeated context always shares its bucket with its own copies, so it is never
    dropped; a unique one survives a pass only if another survivor shares its bucket."""
    keep = np.arange(ctx.size)
    cur = ctx
    with np.errstate(over="ignore"):
        for mult in _FILTER_MULTS:
            m = keep.size
            bits = min(max(int(m).bit_length() + 1, _MIN_BUCKET_BITS), _MAX_BUCKET_BITS)
            bucket = ((cur * mult) >> np.uint64(64 - bits)).astype(np.intp)
            shared = np.bincount(bucket, minlength=1 << bits)[bucket] > 1
            keep, cur = keep[shared], cur[shared]
            if m - keep.size < _FILTER_STOP * m:
                break
    return keep


def build_hints(tokens: np.ndarray, order: int = ORDER, threshold: float = THRESHOLD) -> Hints:
    """Hints for every position of ``tokens``, each from x[:j] only (vectorized; see module doc)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    N = tokens.size
    hint = np.full(N, -1, dtype=np.int64)
    conf = np.zeros(N, dtype=np.float64)
    first = order - 1  # first position with a full context
    if N <= first:
        return Hints(hint, conf, np.zeros(N, dtype=bool))
    ctx_all = _context_hashes(tokens, order)  # entry i is the context of position first + i
    keep = _repeated(ctx_all)  # in time order
    ctx = ctx_all[keep]
    y = tokens[first:][keep]
    m = ctx.size
    if m == 0:
        return Hints(hint, conf, np.zeros(N, dtype=bool))
    # Pair occurrences: sort by (context, next token), stable so each pair's run is in time order;
    # n[i] = how many times pair i's (context, token) has occurred up to and including i.
    with np.errstate(over="ignore"):
        pair = ctx * _MULT + y.astype(np.uint64)
    by_pair = np.argsort(pair, kind="stable")
    sp = pair[by_pair]
    run_start = np.r_[True, sp[1:] != sp[:-1]]
    idx = np.arange(m)
    n = np.empty(m, dtype=np.int64)
    n[by_pair] = idx - np.maximum.accumulate(np.where(run_start, idx, 0)) + 1
    # Context groups in time order.
    by_ctx = np.argsort(ctx, kind="stable")
    sc = ctx[by_ctx]
    g_start = np.r_[True, sc[1:] != sc[:-1]]
    g = np.cumsum(g_start) - 1  # group id of each sorted entry
    k = idx - np.maximum.accumulate(np.where(g_start, idx, 0))  # occurrence index within the group
    ns = n[by_ctx]
    # Segmented running max of the pair counts: offsetting each group by g * (m + 1) keeps a global
    # cumulative max from leaking across groups (counts are at most m).
    off = g.astype(np.int64) * (m + 1)
    run_max = np.maximum.accumulate(ns + off) - off
    prev_max = np.r_[0, run_max[:-1]]
    prev_max[g_start] = 0
    leads = ns > prev_max  # this occurrence's pair takes (or keeps, strictly improving) the lead
    leader = np.maximum.accumulate(np.where(leads, idx, -1))  # latest strict improvement so far
    # The hint of occurrence k comes from occurrences 0..k-1: the leader and max after entry k-1.
    has = ~g_start
    src = np.flatnonzero(has)
    pos = first + keep[by_ctx[src]]
    hint[pos] = y[by_ctx[leader[src - 1]]]
    conf[pos] = run_max[src - 1] / k[src]
    gated = (hint >= 0) & (conf >= threshold)
    return Hints(hint, conf, gated)


def reference_hints(tokens: Sequence[int], order: int = ORDER, threshold: float = THRESHOLD) -> Hints:
    """The obvious sequential version: a dictionary of continuation counts per context tuple, with a
    running arg-max that changes only on a strict improvement. Slow; for tests."""
    tokens = [int(t) for t in tokens]
    N = len(tokens)
    hint = np.full(N, -1, dtype=np.int64)
    conf = np.zeros(N, dtype=np.float64)
    table: dict[tuple[int, ...], list] = {}  # context -> [counts dict, best token, best count, total]
    for j in range(order - 1, N):
        key = tuple(tokens[j - order + 1 : j])
        entry = table.get(key)
        if entry is not None:
            hint[j] = entry[1]
            conf[j] = entry[2] / entry[3]
        else:
            entry = table[key] = [{}, -1, 0, 0]
        counts = entry[0]
        counts[tokens[j]] = counts.get(tokens[j], 0) + 1
        entry[3] += 1
        if counts[tokens[j]] > entry[2]:
            entry[1], entry[2] = tokens[j], counts[tokens[j]]
    return Hints(hint, conf, (hint >= 0) & (conf >= threshold))


def tilted_nll(
    nll: np.ndarray, logp_hint: np.ndarray, target_is_hint: np.ndarray, gated: np.ndarray, beta: float = BETA
) -> np.ndarray:
    """NLL' = NLL - beta*[y == h] + log1p(p(h)*(e^beta - 1)) where gated, NLL elsewhere (float64).

    ``logp_hint`` is log p(h) from the same distribution whose NLL is given (any value where not gated).
    """
    nll = np.asarray(nll, dtype=np.float64)
    q = np.exp(np.asarray(logp_hint, dtype=np.float64))
    tilt = -beta * np.asarray(target_is_hint, dtype=np.float64) + np.log1p(q * math.expm1(beta))
    return np.where(gated, nll + tilt, nll)


def tilt_delta(logp_hint: torch.Tensor, target_is_hint: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """NLL' - NLL at gated positions, float64 on the tensors' device: log1p(p(h)(e^beta - 1)) -
    beta*[y == h], the term ``tilted_nll`` adds (the TTT's scoring loops add it on the device)."""
    q = logp_hint.double().exp()
    return torch.log1p(q * math.expm1(beta)) - beta * target_is_hint.double()


def tilted_distribution(p: np.ndarray, hint: int, beta: float = BETA) -> np.ndarray:
    """p'(a) = p(a) e^{beta [a == h]} / Z for one [V] row (float64), explicitly renormalized."""
    w = np.asarray(p, dtype=np.float64).copy()
    w[hint] *= math.exp(beta)
    return w / w.sum()


class TiltScorer(Scorer):
    """A causal model's log-probabilities with the token-only tilt applied to the scored loss.

    Args:
        model: any object with ``vocab_size`` and ``logprobs(tokens, lo, hi) -> [hi - lo, V]`` (the
            ``ModelLogprobs`` protocol of the n-gram cache).
        order, threshold, beta: the tilt's knobs (#2135 defaults).
        block_tokens: positions whose model log-probs are fetched at once.

    The hints are built once per stream, each from x[:j] only; scoring commits each block of positions
    and then reports the block's pairs as entering the count table.
    """

    def __init__(
        self,
        model,
        *,
        order: int = ORDER,
        threshold: float = THRESHOLD,
        beta: float = BETA,
        block_tokens: int = 8192,
        target_gate_ablation: np.ndarray | None = None,
    ):
        self.model = model
        self.vocab_size = model.vocab_size
        self.order, self.threshold, self.beta = order, threshold, beta
        self.block_tokens = block_tokens
        # NON-COMPLIANT ablation of #2130's word-start channel: tilt only where a per-token flag of the
        # *target* (e.g. "starts a new word") is set. Deciding from the target breaks causality; the
        # compliance checks catch it (T1b, T2). It exists only to measure what the illegal channel buys.
        self.target_gate = None if target_gate_ablation is None else np.asarray(target_gate_ablation, bool)
        self.name = "ngram_tilt" if self.target_gate is None else "ngram_tilt_target_gate (NON-COMPLIANT)"

    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        tokens = np.asarray(tokens, dtype=np.int64)
        events = events or ScoreEvents()
        t0 = time.perf_counter()
        hints = build_hints(tokens, self.order, self.threshold)
        hint_seconds = time.perf_counter() - t0  # #2135 counts this precompute in the eval timer
        nll = np.full(tokens.size, np.nan)
        for lo in range(1, tokens.size, self.block_tokens):
            hi = min(lo + self.block_tokens, tokens.size)
            lp = np.asarray(self.model.logprobs(tokens, lo, hi))
            rows = np.arange(hi - lo)
            y, h = tokens[lo:hi], hints.hint[lo:hi]
            base = -lp[rows, y].astype(np.float64)
            lp_h = lp[rows, np.maximum(h, 0)].astype(np.float64)
            gated = hints.gated[lo:hi]
            if self.target_gate is not None:
                gated = gated & self.target_gate[y]  # reads the target: the illegal channel
            nll[lo:hi] = tilted_nll(base, lp_h, y == h, gated, self.beta)
            events.scored(np.arange(lo, hi))
            events.updated(np.arange(lo, hi), "tilt_counts")
        info = {
            "gated": hints.gated_count,
            "gated_frac": hints.gated_count / max(tokens.size - 1, 1),
            "hint_seconds": hint_seconds,
        }
        return StreamScore(nll=nll, info=info)

    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.empty((len(positions), self.vocab_size))
        for i, j in enumerate(positions):
            j = int(j)
            # the hint at j reads x[:j] only, so it is built from the prefix alone
            hints = build_hints(tokens[: j + 1], self.order, self.threshold)
            p = np.exp(np.asarray(self.model.logprobs(tokens, j, j + 1)[0], dtype=np.float64))
            p /= p.sum()
            out[i] = tilted_distribution(p, int(hints.hint[j]), self.beta) if hints.gated[j] else p
        return out

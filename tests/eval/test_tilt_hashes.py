"""The hint builder's fast parts against slow obvious references: the doubling context hash equals the
token-by-token Horner loop, the singleton filter never drops a repeated context, and the hints at the
record's order 16 equal the sequential dictionary version."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf_core.eval.tilt import _MULT, _context_hashes, _repeated, build_hints, reference_hints
from tests.ngram.helpers import phrase_stream


def horner_hashes(tokens: np.ndarray, order: int) -> np.ndarray:
    """sum_k (x[s+k] + 1) * MULT^(L-1-k) mod 2^64, one context at a time in Python ints, then the
    same splitmix64 finalizer."""
    L, mask = order - 1, (1 << 64) - 1
    out = []
    for s in range(tokens.size - L):
        h = 0
        for k in range(L):
            h = (h * int(_MULT) + int(tokens[s + k]) + 1) & mask
        h ^= h >> 31
        h = (h * 0xBF58476D1CE4E5B9) & mask
        h ^= h >> 29
        out.append(h)
    return np.array(out, dtype=np.uint64)


@pytest.mark.parametrize("order", [2, 3, 4, 5, 8, 9, 16, 17, 24, 33])
def test_doubling_hash_equals_the_horner_loop(order):
    x = np.random.default_rng(order).integers(0, 70_000, 90)
    np.testing.assert_array_equal(_context_hashes(x, order), horner_hashes(x, order))


def test_singleton_filter_keeps_every_repeated_context_and_drops_most_others():
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 2**63, 200_000, dtype=np.int64).astype(np.uint64)
    dup_src = rng.choice(ctx.size, 5_000, replace=False)
    dup_dst = rng.choice(ctx.size, 5_000, replace=False)
    ctx[dup_dst] = ctx[dup_src]
    _, inverse, counts = np.unique(ctx, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[inverse] > 1)
    kept = _repeated(ctx)
    assert np.all(np.diff(kept) > 0)  # in time order
    assert np.isin(repeated, kept).all()
    assert kept.size < repeated.size * 1.2  # the singletons are nearly all gone


def test_hints_at_order_16_equal_the_sequential_reference():
    x = phrase_stream(6000, 40, phrases=6, phrase_len=30, repeat=0.7, seed=11)
    fast, slow = build_hints(x), reference_hints(x)
    np.testing.assert_array_equal(fast.hint, slow.hint)
    np.testing.assert_array_equal(fast.confidence, slow.confidence)
    np.testing.assert_array_equal(fast.gated, slow.gated)
    assert 500 < fast.gated_count < x.size

"""The legal n-gram cache: hashed contexts select full rows of next-token counts, each row its own
distribution.

The PR #909 family scored a number read from a bucket addressed by the *target* (full_key = ctx_hash
XOR target * prime) divided by a count from a different bucket; over the vocabulary those numbers sum
to 1.17 up to 346 (measured on #909's own n-gram block, uniform tokens, V = 1024; #886 reports ~277),
which is why valerio-oai ruled the family out (#779, #982). Here a
hashed *context* selects a full row of V next-token counts, and the row is normalized by its own sum,
so collisions only merge contexts and every row stays a distribution.

Legend for array suffixes: n positions of a segment or block, V vocabulary, O orders (2..max_order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pgolf_core.config import NgramConfig

# splitmix64 constants: a context hash that mixes every context bit into the row index. #909's
# XOR-of-small-products hash kept only the low 22 bits and added structured collisions; collisions
# cannot break normalization here, but they do blur the statistics.
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_ONE = np.uint32(1)


def context_rows(
    tokens: np.ndarray, lo: int, hi: int, width: int, table_rows: int, vocab_size: int
) -> np.ndarray:
    """Row index of the ``width`` tokens before each position lo..hi-1 (context only, never x[j]).

    Exact mixed-radix index when V^width <= table_rows (the bigram table at V = 1024), else a
    splitmix64 hash of the context folded to ``table_rows``. Positions j < width get row 0 here; the
    caller marks them invalid. ``context_row`` is the scalar reference of the same function.
    """
    j = np.arange(lo, hi)
    if vocab_size**width <= table_rows:
        r = np.zeros(hi - lo, dtype=np.int64)
        for k in range(width):
            r = r * vocab_size + tokens[np.maximum(j - width + k, 0)]
        return r
    h = np.full(hi - lo, (width * int(_M1)) & _MASK64, dtype=np.uint64)
    for k in range(width):
        c = tokens[np.maximum(j - width + k, 0)].astype(np.uint64)
        h = (h ^ (c + np.uint64(1))) * _M1
    h ^= h >> np.uint64(31)
    h *= _M2
    h ^= h >> np.uint64(29)
    h *= _M3
    h ^= h >> np.uint64(32)
    return (h % np.uint64(table_rows)).astype(np.int64)


def context_row(context: Sequence[int], table_rows: int, vocab_size: int) -> int:
    """Scalar reference of ``context_rows`` for one context (oldest token first)."""
    width = len(context)
    if vocab_size**width <= table_rows:
        r = 0
        for c in context:
            r = r * vocab_size + int(c)
        return r
    m1, m2, m3 = int(_M1), int(_M2), int(_M3)
    h = (width * m1) & _MASK64
    for c in context:
        h = ((h ^ (int(c) + 1)) * m1) & _MASK64
    h ^= h >> 31
    h = (h * m2) & _MASK64
    h ^= h >> 29
    h = (h * m3) & _MASK64
    h ^= h >> 32
    return h % table_rows


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------


class NgramCache:
    """Hashed-context count rows for orders 2..max_order, interpolated into one distribution.

    Algorithm. Order o keeps ``table_rows`` rows of V uint32 counts plus each row's sum; the context
    x[j-o+1 : j] selects the row. The prediction is built from the lowest order up, starting from
    q_1 = uniform(V):

        q_o(v) = (c_o[row, v] + kappa * q_{o-1}(v)) / (n_o[row] + kappa),  kappa = smoothing * V,

    where n_o[row] = sum_v c_o[row, v]; an order whose row holds fewer than ``min_count`` counts (or
    whose context runs off the stream start) is skipped (q_o = q_{o-1}). With a single order this is
    plain additive smoothing; with several it is a hierarchical Dirichlet prior (each order backs off
    to the one below it): a Dirichlet posterior whose numerator and denominator come from the same
    row, so it stays normalized (the #900/#948/#986 "Dirichlet" caches took the denominator from a
    different, context-keyed bucket and were not).

    Invariants (tested):
    - normalized: if q_{o-1} sums to 1 over all V tokens and n_o = sum_v c_o, then q_o sums to 1;
      every entry is >= prod_o kappa / (n_o + kappa) / V > 0, so every token keeps mass;
    - context-only: the row, the order choice and the weights depend on x[:j] and the state, never
      on x[j]; reading only the target's entry is then the same number as building the row;
    - updated after scoring: ``update`` is called by ``NgramScorer`` only after the segment's NLLs
      are committed, so the state never contains a token before it is scored (score before update:
      the #461 definition adopted by #549, condition C3 of issue #1017).

    Memory: ``table_bytes`` = orders x (table_rows + 1) x V x 4 bytes (+ the row sums); the default
    (orders 2..4, 16,384 rows, V = 1024) is 201.5 MB of host RAM: built at evaluation time, so not
    artifact bytes (counts persisted from training would be).
    Row ``table_rows`` of each order is a dump row for positions without a full context.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        max_order: int = 4,
        table_rows: int = 16384,
        min_count: int = 2,
        smoothing: float = 0.01,
    ):
        if max_order < 2:
            raise ValueError(f"max_order must be >= 2, got {max_order}")
        self.vocab_size = vocab_size
        self.max_order = max_order
        self.table_rows = table_rows
        self.min_count = min_count
        self.smoothing = smoothing
        self.kappa = smoothing * vocab_size
        self.widths = tuple(range(1, max_order))  # context width of orders 2..max_order
        self.reset()

    @classmethod
    def from_config(cls, cfg: NgramConfig, vocab_size: int) -> NgramCache:
        return cls(
            vocab_size,
            max_order=cfg.max_order,
            table_rows=cfg.table_rows,
            min_count=cfg.min_count,
            smoothing=cfg.smoothing,
        )

    @property
    def num_orders(self) -> int:
        return len(self.widths)

    @property
    def table_bytes(self) -> int:
        return int(self.counts.nbytes + self.rowsum.nbytes)

    @staticmethod
    def estimate_table_bytes(vocab_size: int, max_order: int, table_rows: int) -> int:
        return (max_order - 1) * (table_rows + 1) * (vocab_size + 1) * 4

    def reset(self) -> None:
        """Empty tables (np.zeros maps pages lazily: untouched rows cost no RAM)."""
        rows = self.num_orders * (self.table_rows + 1)
        self.counts = np.zeros(rows * self.vocab_size, dtype=np.uint32)  # flat [O, rows + 1, V]
        self.rowsum = np.zeros(rows, dtype=np.uint32)
        self._scratch: dict = {}
        self._dump_rows = np.array(
            [o * (self.table_rows + 1) + self.table_rows for o in range(self.num_orders)]
        )

    def rows(self, tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """[O, n] global row index of every order's context for positions lo..hi-1 (context only)."""
        out = np.empty((self.num_orders, hi - lo), dtype=np.int64)
        j = np.arange(lo, hi)
        for o, w in enumerate(self.widths):
            r = context_rows(tokens, lo, hi, w, self.table_rows, self.vocab_size)
            r[j < w] = self.table_rows  # no full context: the dump row, never valid
            out[o] = r + o * (self.table_rows + 1)
        return out

    def _weights(self, rows_On: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per order and position: whether the order is used (its row holds >= min_count), 1 / (n + kappa)."""
        n_On = self.rowsum[rows_On]
        valid_On = n_On >= self.min_count
        inv_On = 1.0 / (n_On + self.kappa)
        return valid_On, inv_On

    def target_prob(self, rows_On: np.ndarray, targets_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q(x_j) for each position (float64 [n]) and whether any order was used ([n] bool).

        Reads c[row, x_j] and the row's own sum: the x_j entry of the normalized row.
        """
        valid_On, inv_On = self._weights(rows_On)
        c_On = self.counts[rows_On * self.vocab_size + targets_n]
        a_On = np.where(valid_On, c_On * inv_On, 0.0)
        b_On = np.where(valid_On, self.kappa * inv_On, 1.0)
        q_n = np.full(targets_n.shape, 1.0 / self.vocab_size)
        for o in range(self.num_orders):
            q_n = a_On[o] + b_On[o] * q_n
        return q_n, valid_On.any(axis=0)

    def distribution(
        self, rows_On: np.ndarray, dtype=np.float64, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The full next-token distributions ([n, V] of ``dtype``) and the matched flags ([n] bool).

        The recursion unrolled: q = prod_o b_o / V + sum_o A_o c_o[row, :], with b_o = kappa / (n_o +
        kappa) (1 where order o is skipped) and A_o = [order o used] / (n_o + kappa) * prod_{o' > o}
        b_o' (0 for a skipped order, so its row is read but weighs nothing). All O rows of a position
        are gathered in one np.take, converted once, and combined by a batched [1, O] @ [O, V]
        matmul. float64 for ``predictive`` and the checks; the full-row scoring path asks for float32
        and an ``out`` buffer. Measured per 64-position segment, 3 orders, this VM: 238 us for an
        order-by-order multiply-add with reused buffers, 167 us for this; fresh temporaries instead
        of reused ones cost 665 us (each 256 KB allocation is a new mmap that page-faults).
        """
        valid_On, inv_On = self._weights(rows_On)
        V, n_orders, n = self.vocab_size, self.num_orders, rows_On.shape[1]
        b_On = np.where(valid_On, self.kappa * inv_On, 1.0)
        after_On = np.ones_like(b_On)  # prod_{o' > o} b_o'
        for o in range(n_orders - 2, -1, -1):
            after_On[o] = after_On[o + 1] * b_On[o + 1]
        A_n1O = np.ascontiguousarray((np.where(valid_On, inv_On, 0.0) * after_On).T, dtype=dtype)[:, None, :]
        if out is None:
            raw_nOV, c_nOV, out = None, None, np.empty((n, V), dtype=dtype)
        else:
            key = (n, np.dtype(dtype).str)
            if key not in self._scratch:
                self._scratch = {
                    key: (np.empty((n, n_orders, V), np.uint32), np.empty((n, n_orders, V), dtype))
                }
            raw_nOV, c_nOV = self._scratch[key]
        raw = np.take(
            self.counts.reshape(-1, V),
            rows_On.T.ravel(),
            axis=0,
            out=None if raw_nOV is None else raw_nOV.reshape(-1, V),
        )
        # counts < 2^31, so the int32 view converts exactly, and int32 -> float has a SIMD path that
        # uint32 -> float lacks (14 us vs 21 us per [64, 1024], measured)
        c_nOV = (
            np.asarray(raw.view(np.int32).reshape(n, n_orders, V), dtype=dtype) if c_nOV is None else c_nOV
        )
        if raw_nOV is not None:
            np.copyto(c_nOV, raw_nOV.view(np.int32), casting="unsafe")
        np.matmul(A_n1O, c_nOV, out=out[:, None, :])
        out += (after_On[0] * b_On[0] / V).astype(dtype)[:, None]
        return out, valid_On.any(axis=0)

    def update(self, rows_On: np.ndarray, targets_n: np.ndarray) -> None:
        """Insert (context, x_j) for the given positions in every order; call only after scoring them."""
        # The increment must be a uint32 scalar: a Python int 1 sends ufunc.at down its casting path,
        # measured 29 us vs 4 us per 192-index call here (7x on the whole score loop).
        np.add.at(self.counts, (rows_On * self.vocab_size + targets_n).ravel(), _ONE)
        np.add.at(self.rowsum, rows_On.ravel(), _ONE)
        self.rowsum[self._dump_rows] = 0  # positions without a full context never count

    def row_sums_consistent(self) -> bool:
        """The normalization invariant: every stored row sum equals the sum of the row's counts."""
        sums = self.counts.reshape(-1, self.vocab_size).sum(axis=1, dtype=np.uint64)
        live = np.ones(sums.size, dtype=bool)
        live[self._dump_rows] = False
        return bool((sums[live] == self.rowsum[live]).all())

"""Legal n-gram eval cache mixed with the model (compliance.md 2.8), as a ``Scorer``.

The PR #909 family scored a number read from a bucket addressed by the *target* (full_key = ctx_hash XOR
target * prime) divided by a count from a different bucket; over the vocabulary those numbers sum to
2..346 (compliance.md 2.7, section 7), which is why valerio-oai ruled the family out (R2, R3). Here the
cache has the other accepted shape: a hashed *context* selects a full row of V next-token counts, and
the row is normalized by its own sum, so collisions only merge contexts and every row stays a
distribution. Mixing combines full distributions with weights that depend on the prefix alone.

Legend for array suffixes: N stream length, n positions of a segment or block, V vocabulary,
O orders (2..max_order), E experts.

    model = UniformModel(1024)                       # or WindowedTorchModel(gpt, seq_len=...)
    scorer = NgramScorer(model, cfg.ngram)           # a pgolf_core.scoring.Scorer
    result = scorer.score_stream(val_tokens)         # per-position NLLs, each scored once

Scoring reads p_t(x_t) from the full distribution without materializing the other V - 1 entries:
because every row's stored sum equals the sum of its counts, (c[x] + prior mass) / (sum + smoothing
mass) is exactly the x-entry of a normalized row (compliance.md 2.8, "reading only the target entry is
legitimate, because the sum is 1 by construction"). ``predictive`` materializes the full [n, V] rows in
float64 (what the compliance checks read); ``NgramScorer(full_rows=True)`` materializes every
segment's rows (float32) and mixture and reads the target from them. The tests and
``compliance.check_normalization`` assert that all paths give the same NLL (1e-12 nats for the target
path, ~3e-7 for the float32 rows).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from pgolf_core.config import NgramConfig
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore

# splitmix64 constants: a context hash that mixes every context bit into the row index. #909's
# XOR-of-small-products hash kept only the low 22 bits and added structured collisions (compliance.md
# 2.2); collisions cannot break normalization here, but they do blur the statistics.
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_ONE = np.uint32(1)

# Hedge log-weights are kept within [-20, 0] after each update, as in #909 (compliance.md 2.6): an
# expert's weight never drops below e^-20 ~ 2e-9, so it can come back when the text changes.
HEDGE_LOGW_FLOOR = -20.0
HEDGE_EXPERTS = ("model", "mix", "cache")


# --------------------------------------------------------------------------------------------------
# The model side: per-position log-probabilities, computed causally
# --------------------------------------------------------------------------------------------------


class ModelLogprobs(Protocol):
    """A causal model as the cache sees it: log p(x[j] = v | x[:j]) for positions lo..hi-1.

    Rows must be finite log-probabilities of normalized distributions over ``vocab_size`` tokens, and
    row j may depend on x[:j] only (the compliance checks test the scorer as a whole).
    """

    vocab_size: int

    def logprobs(self, tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """[hi - lo, V] float log-probabilities; row i is the distribution of x[lo + i]."""
        ...


class UniformModel:
    """p(v) = 1/V everywhere: the model that makes the uniform-floor test (T3) sharpest; the bench's."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        # float32, as a real model's log-softmax. The scorer exponentiates in float32, which rounds
        # back to exactly 1/1024 at V = 1024 (in float64 it would be (1 - 1.9e-8) / V).
        self._row = np.full((1, vocab_size), -math.log(vocab_size), dtype=np.float32)

    def logprobs(self, tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
        # A read-only broadcast view: the model costs nothing, so the bench times the cache and mixer
        # (the entropy step still reads all n x V entries).
        return np.broadcast_to(self._row, (hi - lo, self.vocab_size))


class UnigramModel:
    """A fixed distribution over the vocabulary (e.g. training-set unigram frequencies)."""

    def __init__(self, probs: np.ndarray):
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 1 or (probs <= 0).any() or abs(probs.sum() - 1.0) > 1e-9:
            raise ValueError("UnigramModel needs a positive 1-D distribution summing to 1")
        self.vocab_size = probs.size
        self._row = np.log(probs).astype(np.float32)[None, :]

    def logprobs(self, tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return np.broadcast_to(self._row, (hi - lo, self.vocab_size))


class FullStreamModel:
    """Adapter for a function ``fn(tokens) -> [N, V]`` log-probs (row j predicts x[j]; row 0 unused).

    The table is computed once per distinct token stream (keyed by a hash of its contents, so the
    perturbed streams of the compliance checks get their own).
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], vocab_size: int):
        self.fn = fn
        self.vocab_size = vocab_size
        self._key: bytes | None = None
        self._table: np.ndarray | None = None

    def logprobs(self, tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(tokens).view(np.uint8)).digest() + bytes(
            str(tokens.dtype), "ascii"
        )
        if key != self._key:
            self._table = np.asarray(self.fn(tokens))
            self._key = key
        return self._table[lo:hi]


class WindowedTorchModel:
    """A pgolf GPT's log-probabilities from the evaluation's own windows (``pgolf_core.eval``).

    ``stride == seq_len`` (the default) is standard evaluation (records E1); a smaller stride is the
    sliding window (E2), so the cache mixes with exactly the distributions q_sw scores. Position j is
    predicted by the window of ``window_plan`` that scores it, from x[start : j]; each window is one
    causal forward, so row j depends on x[:j] only.
    """

    def __init__(self, model, seq_len: int, batch_windows: int = 16, *, stride: int | None = None,
                 temperature: float = 1.0, autocast: bool = False):
        self.model = model
        self.seq_len, self.stride = seq_len, stride or seq_len
        self.batch_windows, self.temperature, self.autocast = batch_windows, temperature, autocast
        self.vocab_size = int(model.tok_emb.weight.shape[0])

    def logprobs(self, tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
        import torch

        from pgolf_core.eval import device_tokens, window_batch, window_plan
        from pgolf_core.runtime import autocast_context

        plan = window_plan(int(tokens.size), self.seq_len, self.stride)
        w0, w1 = (int(w) for w in plan.window_of([lo, hi - 1]))
        device = next(self.model.parameters()).device
        tokens_d = device_tokens(tokens, device)
        out = np.empty((hi - lo, self.vocab_size), dtype=np.float32)
        with torch.no_grad():
            for b in range(w0, w1 + 1, self.batch_windows):
                wid = np.arange(b, min(b + self.batch_windows, w1 + 1))
                x, _ = window_batch(tokens_d, plan.starts[wid], self.seq_len)
                with autocast_context(device, self.autocast):
                    logits_BTV = self.model.logits(x).float()
                lp_BTV = torch.log_softmax(logits_BTV / self.temperature, dim=-1).cpu().numpy()
                for i, w in enumerate(wid):
                    a = max(int(plan.first_scored[w]), lo)
                    z = min(int(plan.last_scored[w]), hi - 1)
                    if a > z:
                        continue
                    s = int(plan.starts[w])
                    out[a - lo : z - lo + 1] = lp_BTV[i, a - 1 - s : z - s]  # position p: input row p - 1 - s
        return out


# --------------------------------------------------------------------------------------------------
# Context rows
# --------------------------------------------------------------------------------------------------


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
    to the one below it), the "Dirichlet posterior, numerator and denominator from the same row"
    shape of compliance.md 2.8.

    Invariants (tested):
    - normalized: if q_{o-1} sums to 1 over all V tokens and n_o = sum_v c_o, then q_o sums to 1;
      every entry is >= prod_o kappa / (n_o + kappa) / V > 0, so every token keeps mass;
    - context-only: the row, the order choice and the weights depend on x[:j] and the state, never
      on x[j]; reading only the target's entry is then the same number as building the row;
    - updated after scoring: ``update`` is called by ``NgramScorer`` only after the segment's NLLs
      are committed, so the state never contains a token before it is scored (R12 / #1017 C3).

    Memory: ``table_bytes`` = orders x (table_rows + 1) x V x 4 bytes (+ the row sums); the default
    (orders 2..4, 16,384 rows, V = 1024) is 201.5 MB of host RAM, not artifact bytes (2.8 item 5).
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


# --------------------------------------------------------------------------------------------------
# Mixers: convex combinations of full distributions, weights from the prefix only
# --------------------------------------------------------------------------------------------------


def entropy_nats(lp_nV: np.ndarray, p_nV: np.ndarray | None = None) -> np.ndarray:
    """Shannon entropy (nats) of each row of log-probabilities, computed in float32; float64 [n].

    float32 because this is the costliest step of the entropy mixers (one exp per vocabulary entry):
    on this 2-core VM numpy's float32 exp runs 25 ms per 8192 x 1024 block against 117 ms in
    float64. alpha is a smooth function of H, so float32's ~1e-6 relative error does not matter;
    scoring and ``predictive`` run the same computation, so they agree bit for bit. ``p_nV``:
    exp(lp_nV) when the caller already has it.
    """
    lp32 = np.asarray(lp_nV, dtype=np.float32)
    p32 = np.exp(lp32) if p_nV is None else p_nV
    return -np.einsum("nv,nv->n", p32, lp32).astype(np.float64)


def entropy_alpha(h_n: np.ndarray, cfg: NgramConfig) -> np.ndarray:
    """alpha = alpha_min + (alpha_max - alpha_min) * sigmoid(slope * (H - center)).

    The #702/#909 shape (compliance.md 2.5): trust the cache more where the model is unsure. H is the
    model's own entropy at the position, known before x_j is read, so alpha is prefix-only (R5, R11).
    """
    s = 1.0 / (1.0 + np.exp(-cfg.entropy_slope * (h_n - cfg.entropy_center)))
    return cfg.alpha_min + (cfg.alpha_max - cfg.alpha_min) * s


class Mixer:
    """Mixes the model's and the cache's distributions into one distribution per position.

    ``target`` gives log p(x_j) of the mixture from the two target entries; ``full`` gives the whole
    mixture [n, V]. Both use the same weights, which depend only on prefix quantities (the model's
    entropy, whether the cache matched, past performance), never on x_j.
    """

    name = "mixer"
    needs_entropy = False
    stateful = False

    def reset(self) -> None:
        pass

    def _alpha(self, h_n: np.ndarray, matched_n: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def target(self, pm_n, q_n, matched_n, h_n):
        """(log p(x_j) [n], expert log-probs [E, n] or None) from target entries of each expert."""
        a_n = self._alpha(h_n, matched_n)
        return np.log(pm_n + a_n * (q_n - pm_n)), None

    def full(self, pm_nV, q_nV, matched_n, h_n, out=None):
        """The mixture [n, V] (dtype of ``q_nV``), written to ``out`` if given (``out`` may be ``q_nV``)."""
        a_n = self._alpha(h_n, matched_n).astype(q_nV.dtype)[:, None]
        mix_nV = np.subtract(q_nV, pm_nV, out=out)
        mix_nV *= a_n
        mix_nV += pm_nV
        return mix_nV

    def update(self, expert_lp_En: np.ndarray) -> None:
        pass


class FixedMixer(Mixer):
    """p = (1 - alpha) p_model + alpha q where the cache matched (any order valid), else p_model."""

    name = "fixed"

    def __init__(self, alpha: float):
        self.alpha = alpha

    def _alpha(self, h_n, matched_n):
        return self.alpha * matched_n


class EntropyMixer(Mixer):
    """As FixedMixer with alpha from the model's entropy (``entropy_alpha``)."""

    name = "entropy"
    needs_entropy = True

    def __init__(self, cfg: NgramConfig):
        self.cfg = cfg

    def _alpha(self, h_n, matched_n):
        return entropy_alpha(h_n, self.cfg) * matched_n


class HedgeMixer(Mixer):
    """Hedge (multiplicative weights) over three normalized experts: model, entropy-mix, cache.

    p = sum_i w_i E_i with w = softmax(log-weights). After a segment is scored, each log-weight gets
    beta * mean_j ln E_i(x_j) over that segment (Hedge with the log loss, the #909/#731 update,
    compliance.md 2.6), then the maximum is subtracted and values are clipped to [-20, 0]. A convex
    combination of normalized experts is normalized, and weights only see already-scored tokens, which
    is the legal form of 2.8 item 4. #909's experts were target-only numbers from an unnormalized cache,
    so its Hedge locked onto the inflated one (w1 = 1 - 2e-9); here every expert is a distribution.
    """

    name = "hedge"
    needs_entropy = True
    stateful = True

    def __init__(self, cfg: NgramConfig):
        self.cfg = cfg
        self.beta = cfg.hedge_beta
        self.reset()

    def reset(self) -> None:
        self.logw = np.full(len(HEDGE_EXPERTS), -math.log(len(HEDGE_EXPERTS)))
        self.weights = np.full(len(HEDGE_EXPERTS), 1.0 / len(HEDGE_EXPERTS))

    def target(self, pm_n, q_n, matched_n, h_n):
        a_n = entropy_alpha(h_n, self.cfg) * matched_n
        e_En = np.stack([pm_n, pm_n + a_n * (q_n - pm_n), q_n])
        return np.log(self.weights @ e_En), np.log(e_En)

    def full(self, pm_nV, q_nV, matched_n, h_n, out=None):
        # w0 pm + w1 ((1 - a) pm + a q) + w2 q, folded into two per-position coefficients that sum to 1
        a_n = entropy_alpha(h_n, self.cfg) * matched_n
        w0, w1, w2 = self.weights
        c_pm = (w0 + w1 * (1.0 - a_n)).astype(q_nV.dtype)[:, None]
        c_q = ((w1 * a_n + w2) / (w0 + w1 * (1.0 - a_n))).astype(q_nV.dtype)[:, None]
        mix_nV = np.multiply(q_nV, c_q, out=out)  # (c_q / c_pm) q + pm, then * c_pm: no temporary
        mix_nV += pm_nV
        mix_nV *= c_pm
        return mix_nV

    def update(self, expert_lp_En: np.ndarray) -> None:
        """Called with the log-probs each expert gave the segment's targets, after they were scored."""
        logw = self.logw + self.beta * expert_lp_En.mean(axis=1)
        logw -= logw.max()
        self.logw = np.maximum(logw, HEDGE_LOGW_FLOOR)  # (np.clip costs 10 us on a 3-vector)
        w = np.exp(self.logw)
        self.weights = w / w.sum()


def build_mixer(cfg: NgramConfig) -> Mixer:
    if cfg.alpha_rule == "fixed":
        return FixedMixer(cfg.alpha)
    if cfg.alpha_rule == "entropy":
        return EntropyMixer(cfg)
    return HedgeMixer(cfg)


# --------------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------------


def _segment_bounds(lo: int, hi: int, seg: int):
    """Segments [a, b) of the positions lo..hi-1, aligned to position 1 of the stream."""
    a = lo
    while a < hi:
        b = min(hi, a + seg - (a - 1) % seg)
        yield a, b
        a = b


class NgramScorer(Scorer):
    """The model mixed with the legal n-gram cache, scored score-first per segment.

    For each segment of ``segment_tokens`` positions, left to right: form each position's
    distribution from the state (tables filled by earlier segments, mixer weights from earlier
    segments) and the prefix, commit the NLLs (``events.scored``), then insert the segment into the
    tables (``events.updated(..., "cache")``) and, for Hedge, update the weights (``"mixer"``). Within a
    segment, positions do not see each other's tokens (the #909 timing, compliance.md 2.3). Every
    position 1..N-1 is scored exactly once.

    The model's log-probabilities are fetched ``block_tokens`` positions at a time (32 MiB of float32
    at V = 1024), and the tables take ``cache.table_bytes`` (201.5 MB by default) of host RAM.

    Args:
        model: the model's causal log-probabilities (``ModelLogprobs``).
        cfg: ``NgramConfig`` (orders, rows, min_count, smoothing, mixer, segment).
        full_rows: score from materialized [n, V] distributions (the slow reference path).
        block_tokens: positions whose model log-probs are fetched at once (a multiple of the segment).
    """

    def __init__(
        self,
        model: ModelLogprobs,
        cfg: NgramConfig | None = None,
        *,
        full_rows: bool = False,
        block_tokens: int = 8192,
    ):
        self.cfg = cfg or NgramConfig(enabled=True)
        self.model = model
        self.vocab_size = model.vocab_size
        self.cache = NgramCache.from_config(self.cfg, self.vocab_size)
        self.mixer = build_mixer(self.cfg)
        self.full_rows = full_rows
        self._rows_buf: np.ndarray | None = None
        self._p_buf: np.ndarray | None = None
        seg = self.cfg.segment_tokens
        self.block_tokens = max(seg, block_tokens // seg * seg)
        self.name = f"ngram_{self.mixer.name}"

    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        tokens = np.asarray(tokens, dtype=np.int64)
        nll = np.full(tokens.size, np.nan)
        matched = self._run(tokens, events or ScoreEvents(), nll, None)
        info = {"table_bytes": self.cache.table_bytes, "matched_frac": matched / max(tokens.size - 1, 1)}
        if isinstance(self.mixer, HedgeMixer):
            info["hedge_weights"] = dict(
                zip(HEDGE_EXPERTS, self.mixer.weights.round(6).tolist(), strict=True)
            )
        return StreamScore(nll=nll, info=info)

    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 1 or positions.max() >= tokens.size):
            raise ValueError(f"positions must lie in 1..{tokens.size - 1}")
        out = np.empty((positions.size, self.vocab_size))
        self._run(tokens, ScoreEvents(), np.full(tokens.size, np.nan), (positions, out))
        return out

    def _run(self, tokens, events, nll, probes) -> int:
        """The score-first loop; with ``probes`` = (positions, out) it fills their full distributions
        at the moment their segment is about to be scored and stops after the last one."""
        cache, mixer = self.cache, self.mixer
        cache.reset()
        mixer.reset()
        N, seg = tokens.size, self.cfg.segment_tokens
        stop = N if probes is None else int(probes[0].max(initial=0)) + 1
        positions = np.arange(N)
        matched_total = 0
        for lo in range(1, stop, self.block_tokens):
            hi = min(lo + self.block_tokens, stop)
            lp_nV = np.asarray(self.model.logprobs(tokens, lo, hi), dtype=np.float32)
            tgt_n = tokens[lo:hi]
            idx_n = np.arange(hi - lo)
            # Model probabilities are exp of float32 log-probs everywhere (target entries, full rows,
            # entropy), so the target path and the full-row path see the same numbers bit for bit.
            p_nV = None
            if mixer.needs_entropy or self.full_rows or probes is not None:
                # one reused [block, V] buffer: a fresh 32 MiB array page-faults on every block
                if self._p_buf is None or self._p_buf.shape[0] < hi - lo:
                    self._p_buf = np.empty((self.block_tokens, self.vocab_size), dtype=np.float32)
                p_nV = np.exp(lp_nV, out=self._p_buf[: hi - lo])
            pm_n = (p_nV[idx_n, tgt_n] if p_nV is not None else np.exp(lp_nV[idx_n, tgt_n])).astype(
                np.float64
            )
            h_n = entropy_nats(lp_nV, p_nV) if mixer.needs_entropy else np.zeros(hi - lo)
            rows_On = cache.rows(tokens, lo, hi)
            for a, b in _segment_bounds(lo, hi, seg):
                i, j = a - lo, b - lo
                if probes is not None:
                    self._fill_probes(probes, a, b, p_nV[i:j], rows_On[:, i:j], h_n[i:j])
                if self.full_rows:
                    lp_seg, expert_lp, hit = self._score_full(
                        p_nV[i:j], rows_On[:, i:j], tgt_n[i:j], h_n[i:j]
                    )
                else:
                    q_n, hit = cache.target_prob(rows_On[:, i:j], tgt_n[i:j])
                    lp_seg, expert_lp = mixer.target(pm_n[i:j], q_n, hit, h_n[i:j])
                nll[a:b] = -lp_seg
                matched_total += int(hit.sum())
                events.scored(positions[a:b])
                # Only now, with the segment's NLLs committed, does its text enter the state.
                cache.update(rows_On[:, i:j], tgt_n[i:j])
                events.updated(positions[a:b], "cache")
                if mixer.stateful:
                    mixer.update(expert_lp)
                    events.updated(positions[a:b], "mixer")
        return matched_total

    def _score_full(self, p_nV, rows_On, tgt_n, h_n):
        """Materialize the cache rows and the mixture [n, V], then read the NLL at the target. float32
        rows: within ~3e-7 nats of the float64 target path (tested) at half the memory traffic."""
        n = tgt_n.size
        if self._rows_buf is None or self._rows_buf.shape[0] != n:
            self._rows_buf = np.empty((n, self.vocab_size), dtype=np.float32)
        q_nV, hit = self.cache.distribution(rows_On, np.float32, out=self._rows_buf)
        idx = np.arange(n)
        q_n, pm_n = q_nV[idx, tgt_n].astype(np.float64), p_nV[idx, tgt_n].astype(np.float64)
        expert_lp = self.mixer.target(pm_n, q_n, hit, h_n)[1]  # Hedge's update, from the same rows
        mix_nV = self.mixer.full(p_nV, q_nV, hit, h_n, out=q_nV)  # in place: q is read above
        return np.log(mix_nV[idx, tgt_n].astype(np.float64)), expert_lp, hit

    def _fill_probes(self, probes, a, b, p_nV, rows_On, h_n) -> None:
        positions, out = probes
        k = np.flatnonzero((positions >= a) & (positions < b))
        if k.size == 0:
            return
        i = positions[k] - a
        q_nV, hit = self.cache.distribution(rows_On[:, i])
        out[k] = self.mixer.full(p_nV[i].astype(np.float64), q_nV, hit, h_n[i])


class ModelScorer(Scorer):
    """Plain model scoring as a Scorer: NLL_j = -log p_model(x_j | x[:j]); no state, no updates."""

    def __init__(self, model: ModelLogprobs, *, block_tokens: int = 8192, name: str = "model"):
        self.model = model
        self.vocab_size = model.vocab_size
        self.block_tokens = block_tokens
        self.name = name

    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        tokens = np.asarray(tokens, dtype=np.int64)
        events = events or ScoreEvents()
        nll = np.full(tokens.size, np.nan)
        for lo in range(1, tokens.size, self.block_tokens):
            hi = min(lo + self.block_tokens, tokens.size)
            lp_nV = self.model.logprobs(tokens, lo, hi)
            nll[lo:hi] = -lp_nV[np.arange(hi - lo), tokens[lo:hi]].astype(np.float64)
            events.scored(np.arange(lo, hi))
        return StreamScore(nll=nll)

    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.empty((len(positions), self.vocab_size))
        for k, j in enumerate(positions):
            out[k] = np.exp(self.model.logprobs(tokens, int(j), int(j) + 1)[0].astype(np.float64))
        return out

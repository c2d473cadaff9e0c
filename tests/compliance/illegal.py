"""Known illegal evaluation patterns, each as a ``Scorer``: fixtures for the compliance checks.

Written from the public descriptions of the rulings (own words), not from any submission's code. Each
reports its events honestly, as the original would if instrumented; what each does wrong:

- ``HashedTargetCache``: the PR #909 family (ruled out on #779 and #982). The realised target is XOR-ed
  into the "full" key, the denominator comes from a separate context bucket, so the number scored for
  x_t is not an entry of any normalized distribution. Caught by T2 and T3; T1 passes (its timing is
  causal).
- ``PrequantTTT``: fine-tune on the whole validation stream, then score it (#1376 family, closed
  2026-04-10). T1, T5 (and T1b, T1c, T3: it trains on whatever it is given).
- ``OracleGate``: per token keep min(model NLL, mixed NLL) on the true token (#659). T1b (the
  selected distribution depends on x_t) or T2 (the pointwise max sums above 1); T3 both ways.
- ``TwoPass``: score once to fill the cache, then rescore everything with the full cache (banned in the
  2026-03-27 sweep). T4, T1 (and T1b, T1c, T3).
- ``TailRescore``: the sliding-window schedule that re-scores the last stride positions once per
  truncated tail window (with stride 64 and length 2048, 64 positions scored 32 times). Harmless
  numbers with a static model; T4 only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch

from pgolf_core.config import ModelConfig, NgramConfig
from pgolf_core.model import build_model
from pgolf_core.ngram import (
    ModelLogprobs,
    ModelScorer,
    NgramCache,
    NgramScorer,
    UniformModel,
    WindowedTorchModel,
    build_mixer,
    entropy_nats,
)
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore

# The eleven odd multipliers of the #909 hash.
PRIMES_909 = np.array(
    [36313, 27191, 51647, 81929, 131071, 175447, 209591, 262147, 393241, 524287, 699053], dtype=np.uint64
)


class HashedTargetCache(Scorer):
    """#909-style: per order, ctx_hash = XOR_k x[j-w+k] * P[k]; full_key = ctx_hash XOR x_j * P[w];
    p_ng = min(full[full_key], ctx[ctx_key]) / max(ctx, 1) at the highest order with ctx >= 2; mixed into
    p_model(x_j) with alpha = 0.05 + 0.55 sigmoid(2 (H - c(o))), c(o) = 3 - 0.25 (o - 2); a two-expert
    Hedge (model, model + n-gram), beta 2, log-weights clipped to [-20, 0]; tables updated after each
    64-token segment. ``predictive`` gives, for each v, the number it would score if x_j were v with
    the state frozen (how #909's sums over the vocabulary were measured)."""

    name = "hashed_target_909"

    def __init__(
        self,
        model: ModelLogprobs,
        *,
        buckets: int = 1 << 22,
        max_order: int = 11,
        min_count: int = 2,
        segment: int = 64,
        beta: float = 2.0,
    ):
        assert buckets & (buckets - 1) == 0
        self.model, self.vocab_size = model, model.vocab_size
        self.mask = np.uint64(buckets - 1)
        self.buckets, self.max_order, self.min_count = buckets, max_order, min_count
        self.segment, self.beta = segment, beta
        self.widths = list(range(1, max_order))

    def _keys(self, tokens, lo, hi):
        j = np.arange(lo, hi)
        ctx = np.zeros((len(self.widths), hi - lo), dtype=np.uint64)
        for o, w in enumerate(self.widths):
            h = np.zeros(hi - lo, dtype=np.uint64)
            for k in range(w):
                h ^= tokens[np.maximum(j - w + k, 0)].astype(np.uint64) * PRIMES_909[k % 11]
            ctx[o] = h
        valid = np.stack([j >= w for w in self.widths])
        return ctx, valid

    def _full_key(self, h, o, v):
        return ((h ^ (np.asarray(v, dtype=np.uint64) * PRIMES_909[self.widths[o] % 11])) & self.mask).astype(
            np.int64
        )

    def _p_ng(self, ctx_h, valid, cand):
        """For candidate tokens cand [n, C]: (p_ng [n, C], matched order index or -1 [n])."""
        n = ctx_h.shape[1]
        p = np.zeros(cand.shape)
        chosen = np.full(n, -1)
        for o in range(len(self.widths) - 1, -1, -1):
            c = self.ctx_tab[o][(ctx_h[o] & self.mask).astype(np.int64)].astype(np.float64)
            m = (chosen < 0) & valid[o] & (c >= self.min_count)
            if m.any():
                full = self.full_tab[o][self._full_key(ctx_h[o][m][:, None], o, cand[m])].astype(np.float64)
                p[m] = np.clip(np.minimum(full, c[m][:, None]) / np.maximum(c[m], 1)[:, None], 0, 1)
                chosen[m] = o
        return p, chosen

    def _mix(self, pm, p_ng, chosen, h):
        order = np.array(self.widths)[np.maximum(chosen, 0)] + 1
        alpha = 0.05 + 0.55 / (1 + np.exp(-2 * (h - (3.0 - 0.25 * (order - 2)))))
        alpha = np.where(chosen >= 0, alpha, 0.0)[:, None]
        e1 = (1 - alpha) * pm + alpha * p_ng
        w = np.exp(self.logw - self.logw.max())
        w /= w.sum()
        return w[0] * pm + w[1] * e1, e1

    def _run(self, tokens, events, probes=None):
        tokens = np.asarray(tokens, dtype=np.int64)
        n_orders = len(self.widths)
        self.ctx_tab = np.zeros((n_orders, self.buckets), dtype=np.uint32)
        self.full_tab = np.zeros((n_orders, self.buckets), dtype=np.uint32)
        self.logw = np.full(2, -math.log(2))
        nll = np.full(tokens.size, np.nan)
        V, N = self.vocab_size, tokens.size
        stop = N if probes is None else int(max(probes[0])) + 1
        for a in range(1, stop, self.segment):
            b = min(a + self.segment, stop)
            lp = self.model.logprobs(tokens, a, b)
            h = entropy_nats(lp)
            ctx_h, valid = self._keys(tokens, a, b)
            if probes is not None:
                for k, pos in enumerate(probes[0]):
                    if a <= pos < b:
                        i = pos - a
                        cand = np.arange(V)[None, :]
                        p_ng, chosen = self._p_ng(ctx_h[:, i : i + 1], valid[:, i : i + 1], cand)
                        pm = np.exp(lp[i : i + 1].astype(np.float64))
                        probes[1][k] = self._mix(pm, p_ng, chosen, h[i : i + 1])[0][0]
            tgt = tokens[a:b]
            pm = np.exp(lp[np.arange(b - a), tgt].astype(np.float64))[:, None]
            p_ng, chosen = self._p_ng(ctx_h, valid, tgt[:, None])
            p, e1 = self._mix(pm, p_ng, chosen, h)
            nll[a:b] = -np.log(np.clip(p[:, 0], 1e-12, 1.0))
            events.scored(np.arange(a, b))
            for o in range(n_orders):
                v = valid[o]
                np.add.at(self.ctx_tab[o], (ctx_h[o][v] & self.mask).astype(np.int64), np.uint32(1))
                np.add.at(self.full_tab[o], self._full_key(ctx_h[o][v], o, tgt[v]), np.uint32(1))
            events.updated(np.arange(a, b), "cache")
            lnE = np.log(np.clip(np.stack([pm[:, 0], e1[:, 0]]), 1e-12, 1.0))
            self.logw = np.clip(
                self.logw + self.beta * lnE.mean(axis=1) - (self.logw + self.beta * lnE.mean(axis=1)).max(),
                -20,
                0,
            )
            events.updated(np.arange(a, b), "mixer")
        return nll

    def score_stream(self, tokens, events=None):
        return StreamScore(
            self._run(tokens, events or ScoreEvents()), {"hedge_w1": float(np.exp(self.logw[1]))}
        )

    def predictive(self, tokens, positions):
        out = np.empty((len(positions), self.vocab_size))
        self._run(tokens, ScoreEvents(), (list(positions), out))
        return out


def tiny_gpt_config(vocab_size: int = 64) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, attn_backend="sdpa"
    )


class PrequantTTT(Scorer):
    """Pre-quantization TTT on validation (#1376/#1423 pattern): AdamW on every validation token for
    ``steps`` full-batch steps, then score the same tokens with the adapted model."""

    name = "prequant_ttt"

    def __init__(
        self, vocab_size: int = 64, *, seq_len: int = 64, steps: int = 8, lr: float = 3e-3, seed: int = 0
    ):
        torch.manual_seed(seed)
        self.net = build_model(tiny_gpt_config(vocab_size), device="cpu")
        self.init_state = copy.deepcopy(self.net.state_dict())
        self.vocab_size, self.seq_len, self.steps, self.lr = vocab_size, seq_len, steps, lr

    def _adapt(self, tokens, events):
        self.net.load_state_dict(self.init_state)
        L = self.seq_len
        n = (tokens.size - 1) // L * L
        x = torch.as_tensor(tokens[:n].reshape(-1, L))
        y = torch.as_tensor(tokens[1 : n + 1].reshape(-1, L))
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr)
        for _ in range(self.steps):
            loss = self.net(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            events.updated(np.arange(1, n + 1), "ttt_step")  # trained on targets 1..n before scoring any
        return ModelScorer(WindowedTorchModel(self.net, self.seq_len))

    def score_stream(self, tokens, events=None):
        events = events or ScoreEvents()
        tokens = np.asarray(tokens, dtype=np.int64)
        return self._adapt(tokens, events).score_stream(tokens, events)

    def predictive(self, tokens, positions):
        tokens = np.asarray(tokens, dtype=np.int64)
        return self._adapt(tokens, ScoreEvents()).predictive(tokens, positions)


class OracleGate(Scorer):
    """#659's gate on the legal cache: score min(model NLL, mixed NLL) on the true token.

    ``predictive`` mode "selected" returns the distribution the gate picked at x_t (normalized, but a
    function of x_t: T1b); mode "max" returns the counterfactual max(p_model(v), p_mix(v)) (T2)."""

    name = "oracle_gate"

    def __init__(self, model: ModelLogprobs, cfg: NgramConfig, mode: str = "selected"):
        self.model, self.cfg, self.mode = model, cfg, mode
        self.vocab_size = model.vocab_size
        self.cache = NgramCache.from_config(cfg, self.vocab_size)
        self.mixer = build_mixer(cfg)

    def _run(self, tokens, events, probes=None):
        tokens = np.asarray(tokens, dtype=np.int64)
        self.cache.reset()
        nll = np.full(tokens.size, np.nan)
        stop = tokens.size if probes is None else int(max(probes[0])) + 1
        S = self.cfg.segment_tokens
        for a in range(1, stop, S):
            b = min(a + S, stop)
            lp = self.model.logprobs(tokens, a, b)
            h = entropy_nats(lp)
            rows = self.cache.rows(tokens, a, b)
            tgt = tokens[a:b]
            pm_n = np.exp(lp[np.arange(b - a), tgt].astype(np.float64))
            if probes is not None:
                for k, pos in enumerate(probes[0]):
                    if a <= pos < b:
                        i = pos - a
                        q, hit = self.cache.distribution(rows[:, i : i + 1])
                        pm = np.exp(lp[i : i + 1].astype(np.float64))
                        mix = self.mixer.full(pm, q, hit, h[i : i + 1])
                        if self.mode == "max":
                            probes[1][k] = np.maximum(pm, mix)[0]
                        else:  # the gate reads x_t to choose
                            x = tokens[pos]
                            probes[1][k] = (mix if mix[0, x] > pm[0, x] else pm)[0]
            q_n, hit = self.cache.target_prob(rows, tgt)
            lp_mix, _ = self.mixer.target(pm_n, q_n, hit, h)
            nll[a:b] = np.minimum(-np.log(pm_n), -lp_mix)
            events.scored(np.arange(a, b))
            self.cache.update(rows, tgt)
            events.updated(np.arange(a, b), "cache")
        return nll

    def score_stream(self, tokens, events=None):
        return StreamScore(self._run(tokens, events or ScoreEvents()))

    def predictive(self, tokens, positions):
        out = np.empty((len(positions), self.vocab_size))
        self._run(tokens, ScoreEvents(), (list(positions), out))
        return out


class TwoPass(NgramScorer):
    """Score the stream once with the legal cache (filling it), then rescore every position with the
    full cache and report the second pass (the 2026-03-27 sweep banned rescoring after the cache
    has seen all of validation)."""

    def __init__(self, model: ModelLogprobs, cfg: NgramConfig):
        super().__init__(model, cfg)
        self.name = "two_pass"

    def _second_pass(self, tokens, positions):
        """Full-cache distributions (rows) at ``positions``, mixer state as left by pass 1."""
        lp = np.concatenate([self.model.logprobs(tokens, int(p), int(p) + 1) for p in positions])
        rows = np.concatenate([self.cache.rows(tokens, int(p), int(p) + 1) for p in positions], axis=1)
        q, hit = self.cache.distribution(rows)
        return self.mixer.full(np.exp(lp.astype(np.float64)), q, hit, entropy_nats(lp))

    def score_stream(self, tokens, events=None):
        events = events or ScoreEvents()
        tokens = np.asarray(tokens, dtype=np.int64)
        super().score_stream(tokens, events)  # pass 1: scored + cache filled
        nll = np.full(tokens.size, np.nan)
        lp = self.model.logprobs(tokens, 1, tokens.size)
        pm = np.exp(lp[np.arange(tokens.size - 1), tokens[1:]].astype(np.float64))
        q, hit = self.cache.target_prob(self.cache.rows(tokens, 1, tokens.size), tokens[1:])
        nll[1:] = -self.mixer.target(pm, q, hit, entropy_nats(lp))[0]
        events.scored(np.arange(1, tokens.size))  # pass 2 re-commits every position
        return StreamScore(nll)

    def predictive(self, tokens, positions):
        tokens = np.asarray(tokens, dtype=np.int64)
        super().score_stream(tokens)
        return self._second_pass(tokens, positions)


class TailRescore(Scorer):
    """A static model under the sliding-window schedule with start s = max(wlen - stride, 0) inside each
    window and windows started every ``stride`` tokens down to a 1-token tail: the last positions are
    scored once per truncated tail window (the bug of the #549-era sliding
    schedule)."""

    name = "tail_rescore"

    def __init__(self, vocab_size: int, *, seq_len: int = 256, stride: int = 64):
        self.inner = ModelScorer(UniformModel(vocab_size))
        self.vocab_size, self.seq_len, self.stride = vocab_size, seq_len, stride

    def score_stream(self, tokens, events=None):
        events = events or ScoreEvents()
        tokens = np.asarray(tokens, dtype=np.int64)
        nll = self.inner.score_stream(tokens).nll  # the static model's numbers
        N = tokens.size - 1  # targets 1..N
        for ws in range(0, N, self.stride):
            wlen = min(ws + self.seq_len, N) - ws
            s = 0 if ws == 0 else max(wlen - self.stride, 0)
            events.scored(np.arange(ws + s + 1, ws + wlen + 1))
        return StreamScore(nll)

    def predictive(self, tokens, positions: Sequence[int]):
        return self.inner.predictive(tokens, positions)

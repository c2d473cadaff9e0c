"""Models as the n-gram cache sees them: causal log-probabilities, row j the distribution of x[j].

``ModelLogprobs`` is the interface ``pgolf_core.ngram.NgramScorer`` mixes with; the adapters here
implement it for a pgolf GPT evaluated with the evaluation's own windows (``WindowedTorchModel``), for
any function returning a whole [N, V] table (``FullStreamModel``), and for the fixed distributions the
tests and the bench use (``UniformModel``, ``UnigramModel``). ``ModelScorer`` scores a model alone, as
a ``Scorer``: the no-cache baseline of the n-gram studies.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from pgolf_core.eval.windows import device_tokens, window_batch, window_plan
from pgolf_core.runtime import autocast_context, model_device
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore


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
    """A pgolf GPT's log-probabilities from the evaluation's own windows (``pgolf_core.eval.windows``).

    ``stride == seq_len`` (the default) is standard evaluation; a smaller stride is the sliding
    window, so the cache mixes with exactly the distributions q_sw scores. Position j is predicted by
    the window of ``window_plan`` that scores it, from x[start : j]; each window is one causal
    forward, so row j depends on x[:j] only.
    """

    def __init__(
        self,
        model,
        seq_len: int,
        batch_windows: int = 16,
        *,
        stride: int | None = None,
        temperature: float = 1.0,
        autocast: bool = False,
    ):
        self.model = model
        self.seq_len, self.stride = seq_len, stride or seq_len
        self.batch_windows, self.temperature, self.autocast = batch_windows, temperature, autocast
        self.vocab_size = int(model.tok_emb.weight.shape[0])

    def logprobs(self, tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
        plan = window_plan(int(tokens.size), self.seq_len, self.stride)
        w0, w1 = (int(w) for w in plan.window_of([lo, hi - 1]))
        device = model_device(self.model)
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

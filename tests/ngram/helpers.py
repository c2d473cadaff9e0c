"""Token streams and models for the n-gram and compliance tests."""

from __future__ import annotations

import numpy as np

from pgolf_core.config import NgramConfig
from pgolf_core.eval import FullStreamModel


def phrase_stream(
    n: int, vocab_size: int, *, phrases: int = 30, phrase_len: int = 8, repeat: float = 0.7, seed: int = 0
) -> np.ndarray:
    """Text-like tokens: random phrases drawn from a fixed set (probability ``repeat``) or 3 random tokens,
    so higher-order contexts recur and the cache has something to learn."""
    rng = np.random.default_rng(seed)
    bank = rng.integers(0, vocab_size, (phrases, phrase_len))
    out, total = [], 0
    while total < n:
        piece = bank[rng.integers(phrases)] if rng.random() < repeat else rng.integers(0, vocab_size, 3)
        out.append(piece)
        total += piece.size
    return np.concatenate(out)[:n].astype(np.int64)


def random_model(vocab_size: int, *, seed: int = 0, scale: float = 2.0) -> FullStreamModel:
    """A causal 'model' whose distribution at position j depends on x[j-1] only: log_softmax of a fixed
    random logit row per previous token (entropy varies, so entropy-adaptive alpha moves)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((vocab_size, vocab_size)) * scale * rng.uniform(0.2, 1.5, (vocab_size, 1))
    logp = (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)

    def fn(tokens: np.ndarray) -> np.ndarray:
        out = np.empty((tokens.size, vocab_size), dtype=np.float32)
        out[0] = -np.log(vocab_size)
        out[1:] = logp[tokens[:-1]]
        return out

    return FullStreamModel(fn, vocab_size)


def ngram_cfg(**kw) -> NgramConfig:
    base = {"enabled": True, "table_rows": 1024, "segment_tokens": 64}
    return NgramConfig(**{**base, **kw})

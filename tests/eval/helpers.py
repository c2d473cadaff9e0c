"""Tiny models, byte tables and token streams shared by the evaluation / TTT tests (and importable by
spawned worker processes)."""

from __future__ import annotations

import numpy as np
import torch

from pgolf_core.config import ModelConfig, RunConfig, TTTConfig, config_from_dict
from pgolf_core.data.tokenizer_bytes import ByteLUTs
from pgolf_core.dist import DistInfo
from pgolf_core.model import build_model
from pgolf_core.ttt.common import EvalSpec

VOCAB = 64
BOS = 1
TINY = {"vocab_size": VOCAB, "num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1}


def tiny_model(seed: int = 0, noise: float = 0.3, **overrides) -> torch.nn.Module:
    """A 2-layer d32 GPT on CPU whose zero-initialised projections are perturbed (so every path matters)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**TINY, **overrides}), device="cpu")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
    return model.eval()


def luts(vocab: int = VOCAB) -> ByteLUTs:
    """Byte tables with varied counts: id -> 1 + id % 3 bytes, a leading space on every 4th id, BOS a
    boundary."""
    base = (1 + np.arange(vocab) % 3).astype(np.int16)
    base[BOS] = 0
    lead = np.arange(vocab) % 4 == 0
    boundary = np.zeros(vocab, dtype=bool)
    boundary[BOS] = True
    return ByteLUTs(base, lead, boundary)


def random_stream(n: int, seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
    """Uniform tokens (never BOS) with a BOS at position 0."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(2, vocab, n).astype(np.uint16)
    toks[0] = BOS
    return toks


def repetitive_stream(n: int, period: int = 24, seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
    """A random motif of ``period`` tokens repeated: learnable at test time, unknown to the model."""
    rng = np.random.default_rng(seed)
    motif = rng.integers(2, vocab, period)
    toks = np.resize(motif, n).astype(np.uint16)
    toks[0] = BOS
    return toks


def doc_stream(lengths: list[int], seed: int = 0, vocab: int = VOCAB, period: int = 12) -> np.ndarray:
    """Documents [BOS, doc tokens...] concatenated; each document repeats its own random motif."""
    rng = np.random.default_rng(seed)
    parts = []
    for n in lengths:
        motif = rng.integers(2, vocab, period)
        parts.append(np.concatenate([[BOS], np.resize(motif, n)]))
    return np.concatenate(parts).astype(np.uint16)


def run_cfg(**sections) -> RunConfig:
    """A RunConfig over the tiny model: ``run_cfg(eval={...}, ttt={...})``."""
    raw = {"model": dict(TINY), "train": {"train_seq_len": 32, "train_batch_tokens": 1024, "device": "cpu"}}
    raw.update(sections)
    return config_from_dict(raw)


def ttt_cfg(**kw) -> TTTConfig:
    return TTTConfig(**{"enabled": True, **kw})


class OrderRecorder:
    """A ``ScoreEvents`` that checks score-before-update as events happen (compliance T4/T5 in miniature).

    ``violations`` lists (kind, positions) of updates that used a position not yet scored;
    ``rescored`` lists positions scored twice; ``updates`` keeps every (kind, positions) update.
    """

    def __init__(self, n_tokens: int):
        self.is_scored = np.zeros(n_tokens, dtype=bool)
        self.scored_log: list[np.ndarray] = []
        self.updates: list[tuple[str, np.ndarray]] = []
        self.violations: list[tuple[str, np.ndarray]] = []
        self.rescored: list[int] = []

    def scored(self, positions) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        self.rescored.extend(positions[self.is_scored[positions]].tolist())
        self.is_scored[positions] = True
        self.scored_log.append(positions)

    def updated(self, positions, kind: str) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        self.updates.append((kind, positions))
        early = positions[~self.is_scored[positions]]
        if early.size:
            self.violations.append((kind, early))

    def updated_positions(self, kind: str | None = None) -> np.ndarray:
        parts = [p for k, p in self.updates if kind is None or k == kind]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


# The per-document TTT tests' shape (test_ttt_lora, test_ttt_levers): documents of these lengths, windows
# of 32 scored from 8, and the LoRA / phased knobs scaled to them.
CPU = torch.device("cpu")
ONE = DistInfo()
SPEC = EvalSpec(seq_len=32, stride=8, batch_seqs=8)
LENGTHS = [150, 60, 200, 30, 180, 90, 7]
LORA = {"mode": "lora", "lora_chunk_tokens": 16, "lora_window": 32, "lora_batch_docs": 3, "lora_lr": 0.05}
PHASED = {
    **LORA,
    "mode": "phased",
    "phased_prefix_docs": 5,
    "phased_phases": 2,
    "phased_lr": 0.05,
    "chunk_tokens": 128,
    "batch_seqs": 4,
}

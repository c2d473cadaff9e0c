"""Models, shapes and synthetic data shared by the sections.

This is the one module that knows the GPT's internals, and it reads the model's own attributes
(``tok_emb``, ``lm_head``, ``plans``), never ``cfg.model`` fields, whose names are being reorganized;
the sections read only ``cfg.train`` / ``cfg.optim`` / ``cfg.quant`` and these helpers.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.devcheck.runner import REPO
from pgolf_core.challenge import WORLD_SIZE
from pgolf_core.data.tokenizer import BOS_ID
from pgolf_core.config import RunConfig, load_config
from pgolf_core.model import build_model
from pgolf_core.optim import build_optimizers

# The record configs, at full size (8-GPU files: their model, optimizer and batch are the records').
RECORD_PARAMS = {
    "baseline": "params/h100x8/baseline.yaml",
    "record_1493": "params/h100x8/record_1493.yaml",
    "record_1855": "params/h100x8/record_1855.yaml",
    "record_2135": "params/h100x8/record_2135.yaml",
}
SMALL_PARAMS = "params/smoke/train.yaml"  # the smoke model (4x128, vocab 1024), for short trainings
DEVICE = "cuda"  # where the sections run; the tests rehearse them on "cpu" with tiny sizes


def device() -> torch.device:
    return torch.device(DEVICE)


# ----- what the sections need to know about a GPT -----
def vocab_size(model: nn.Module) -> int:
    return model.tok_emb.num_embeddings


def tied(model: nn.Module) -> bool:
    """Tied embeddings: the head reads the token embedding (no separate lm_head)."""
    return model.lm_head is None


def has_loops(model: nn.Module) -> bool:
    """Depth recurrence: the looped layer plan differs from the plain one."""
    return model.plans[True].layers != model.plans[False].layers


# ----- building -----
def load(params: str, overrides: list[str] | None = None) -> RunConfig:
    return load_config(Path(REPO) / params, overrides)


def build(cfg: RunConfig, device: torch.device, seed: int = 0) -> nn.Module:
    """The config's GPT on ``device`` (fp32 parameters), initialized from ``seed``."""
    torch.manual_seed(seed)
    return build_model(cfg.model, device=device).to(device)


def optimizers(model: nn.Module, cfg: RunConfig, device: torch.device):
    return build_optimizers(model, cfg.optim, tie_embeddings=tied(model), fused=device.type == "cuda")


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int) -> None:
    """Weights that exercise every block: at init the output projections are zero, so a compiled vs eager
    comparison would test little more than the embedding. Matrices (both dims >= 16) get N(0, 1/fan_in);
    small control tensors (gains, lambdas, gates, skip weights) keep their init, 10% relative noise and
    a little absolute noise so that zero-initialized gates open."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
        if p.ndim == 2 and min(p.shape) >= 16:
            p.copy_(noise / p.shape[-1] ** 0.5)
        else:
            p.mul_(1 + 0.1 * noise).add_(0.02 * torch.randn(p.shape, generator=g).to(p.device, p.dtype))


# ----- shapes -----
def micro_batch(cfg: RunConfig) -> tuple[int, int]:
    """(sequences, sequence length) of one rank's micro-batch in an 8-GPU run of ``cfg``."""
    seq = cfg.train.train_seq_len
    return cfg.train.train_batch_tokens // WORLD_SIZE // seq, seq


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- synthetic data -----
MARKOV_PROBS = (0.55, 0.25, 0.15, 0.05)  # each token's 4 successors: 1.1 nats of entropy per token


def markov_rows(vocab: int, rows: int, length: int, seed: int, chain_seed: int = 0) -> np.ndarray:
    """``rows`` int64 sequences (sampled with ``seed``) of the random Markov chain ``chain_seed`` over
    ``vocab`` tokens: a learnable stream, so that a short training has a loss curve to compare (uniform
    tokens would stay at ln V); another ``seed`` gives held-out text of the same chain."""
    successors = np.random.default_rng(chain_seed).integers(0, vocab, size=(vocab, len(MARKOV_PROBS)))
    rng = np.random.default_rng(seed + 1_000_003)
    cum = np.cumsum(MARKOV_PROBS)
    out = np.empty((rows, length), dtype=np.int64)
    out[:, 0] = rng.integers(0, vocab, size=rows)
    for t in range(1, length):
        pick = np.minimum(np.searchsorted(cum, rng.random(rows), side="right"), len(cum) - 1)
        out[:, t] = successors[out[:, t - 1], pick]
    return out


def markov_batches(
    vocab: int, steps: int, batch: int, seq: int, seed: int, chain_seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` (x, y) CPU batches of shape (batch, seq) of chain ``chain_seed``, y the next tokens of x."""
    rows = torch.from_numpy(markov_rows(vocab, steps * batch, seq + 1, seed, chain_seed))
    return [(r[:, :-1].contiguous(), r[:, 1:].contiguous()) for r in rows.split(batch)]


def random_tokens(
    vocab: int, shape: tuple[int, ...], seed: int, device: torch.device, mean_doc: int = 0
) -> torch.Tensor:
    """Uniform tokens; with ``mean_doc`` a BOS starts a document every ``mean_doc`` tokens on average
    (web documents run about 1,000 sp8192 tokens), so varlen attention sees many segments per row."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, shape, generator=g)
    if mean_doc:
        tokens[torch.rand(shape, generator=g) < 1.0 / mean_doc] = BOS_ID
    return tokens.to(device)

"""Calibration batches for GPTQ: training tokens or text the model writes itself, never validation.

#1394+ take 16-64 training batches (3.5-13 s, inside the reserved training time: calibration counts
toward the 600 s, #1868); #1019 sampled 64 x 2048 tokens from the trained model (temperature 0.8, first token
uniform, fixed seed; 196.7 s) so no data is touched after training.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from pgolf_core.config import RunConfig
from pgolf_core.data.loader import DistributedTokenLoader
from pgolf_core.data.shards import list_shards
from pgolf_core.dist import DistInfo
from pgolf_core.runtime import autocast_context, model_device


def train_calibration_batches(
    cfg: RunConfig, dist: DistInfo | None = None, n_batches: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """``quant.calib_batches`` training batches of ``train.train_batch_tokens`` (this rank's share).

    Raises if the training glob also matches a validation shard: calibrating on validation text
    would leak it into the weights.
    """
    dist = dist or DistInfo()
    root = cfg.data.root_path()
    train_files = list_shards(root / cfg.data.train_pattern)
    try:
        val_files = {p.resolve() for p in list_shards(root / cfg.data.val_pattern)}
    except FileNotFoundError:
        val_files = set()
    leaked = [str(p) for p in train_files if p.resolve() in val_files]
    if leaked:
        raise ValueError(f"calibration refuses validation shards: {leaked} match data.val_pattern")
    loader = DistributedTokenLoader(train_files, dist.rank, dist.world_size, cfg.model.vocab_size)
    tc = cfg.train
    for _ in range(n_batches or cfg.quant.calib_batches):
        yield loader.next_batch(tc.train_batch_tokens, tc.train_seq_len, 1)


@torch.no_grad()
def self_generated_batches(
    model: nn.Module,
    *,
    n_seqs: int,
    seq_len: int,
    vocab_size: int,
    temperature: float = 0.8,
    batch_size: int = 8,
    seed: int = 0,
    dist: DistInfo | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Sample ``n_seqs`` sequences of ``seq_len + 1`` tokens from ``model`` (this rank's share of them).

    First token uniform over the vocabulary, then softmax(logits / temperature) sampling with a fixed
    seed per rank. Full-prefix recomputation (no KV cache): simple, and the cost is paid once.
    """
    dist = dist or DistInfo()
    device = model_device(model)
    mine = range(dist.rank, n_seqs, dist.world_size)
    gen = torch.Generator(device=device).manual_seed(seed * 1000003 + dist.rank)
    was_training = model.training
    model.eval()
    out = []
    try:
        idx = list(mine)
        for b0 in range(0, len(idx), batch_size):
            n = len(idx[b0 : b0 + batch_size])
            seq = torch.randint(0, vocab_size, (n, 1), generator=gen, device=device)
            for _ in range(seq_len):
                with autocast_context(device):
                    logits = model(seq)[:, -1].float()
                probs = torch.softmax(logits / temperature, dim=-1)
                seq = torch.cat([seq, torch.multinomial(probs, 1, generator=gen)], dim=1)
            out.append((seq[:, :-1].cpu(), seq[:, 1:].cpu()))
    finally:
        model.train(was_training)
    return out


def calibration_batches(
    cfg: RunConfig, model: nn.Module, dist: DistInfo | None = None
) -> list[tuple[Tensor, Tensor]]:
    """The calibration batches ``cfg.quant.calib_source`` asks for ("train" or "self")."""
    q = cfg.quant
    if q.calib_source == "train":
        return list(train_calibration_batches(cfg, dist))
    return self_generated_batches(
        model,
        n_seqs=q.calib_seqs,
        seq_len=cfg.train.train_seq_len,
        vocab_size=cfg.model.vocab_size,
        temperature=q.calib_temperature,
        seed=cfg.train.seed,
        dist=dist,
    )

"""Bits-per-byte evaluation, as the challenge scores it (records.md A5, E1).

Standard evaluation: the validation stream (``k * seq_len + 1`` tokens) is cut into non-overlapping
``seq_len`` windows; every target is scored exactly once with 0..seq_len-1 tokens of context. Windows
are split into contiguous ranges per rank; loss, token and byte sums are float64 and all-reduced, so
the result does not depend on the number of ranks beyond float64 rounding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from pgolf_core.data.tokenizer_bytes import LN2, ByteLUTs, token_bytes
from pgolf_core.dist import DistInfo

NllFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean NLL, nats per scored token
    bpb: float  # bits per byte
    tokens: int  # scored targets
    bytes: int  # UTF-8 bytes those targets stand for
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def nll_with_temperature(model: torch.nn.Module, temperature: float) -> NllFn:
    """Per-token NLL of ``softmax(logits / T)``; T = 1 uses the model's own ``nll``."""
    if temperature == 1.0:
        return model.nll

    def nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x).float() / temperature
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)

    return nll


@torch.no_grad()
def evaluate_standard(
    nll_fn: NllFn,
    val_tokens: np.ndarray,
    luts: ByteLUTs,
    *,
    seq_len: int,
    batch_tokens: int,
    dist: DistInfo,
    device: torch.device,
    autocast: bool = True,
) -> EvalResult:
    """Score every target of ``val_tokens`` once with non-overlapping windows of ``seq_len``.

    ``nll_fn(x, y) -> (B, T)`` per-token NLL in nats (``model.nll``, possibly compiled); ``luts`` are
    torch tables on ``device``. All ranks must call this together.
    """
    t0 = time.perf_counter()
    total_seqs = (val_tokens.shape[0] - 1) // seq_len
    if total_seqs < 1:
        raise ValueError(f"validation stream of {val_tokens.shape[0]} tokens holds no {seq_len}-token window")
    first = total_seqs * dist.rank // dist.world_size
    last = total_seqs * (dist.rank + 1) // dist.world_size
    per_batch = max(1, batch_tokens // (dist.world_size * seq_len))
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, tokens, bytes
    for s in range(first, last, per_batch):
        e = min(s + per_batch, last)
        window = torch.from_numpy(val_tokens[s * seq_len : e * seq_len + 1].astype(np.int64)).to(device)
        x, y = window[:-1].view(-1, seq_len), window[1:].view(-1, seq_len)
        with _autocast(device, autocast):
            nll = nll_fn(x, y)
        sums[0] += nll.double().sum()
        sums[1] += y.numel()
        sums[2] += token_bytes(x, y, luts).double().sum()
    if dist.distributed and tdist.is_initialized():
        tdist.all_reduce(sums)
    loss_sum, tokens, nbytes = sums.tolist()
    return EvalResult(
        loss=loss_sum / tokens,
        bpb=loss_sum / (LN2 * nbytes),
        tokens=int(tokens),
        bytes=int(nbytes),
        seconds=time.perf_counter() - t0,
    )

"""Rotary position embedding: half-split rotation, optionally on only the first dims of each head.

Direction: the challenge's train_gpt.py (openai/parameter-golf) and every record turn each pair by MINUS
the angle, x1' = x1 cos + x2 sin, x2' = x2 cos - x1 sin. Training does not care which way round it is,
but weights trained one way score wrongly when evaluated the other way, so pgolf uses the challenge's
sign to be able to evaluate a record's weights.

Shapes: B batch, T time, H heads, K head dim, F rotated frequency pairs (rotated dims / 2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
    """Produces the cos/sin tables of RoPE for a sequence length (no parameters, no buffers).

    Partial RoPE (#549 on; records use 16 of 64): only the first ``rope_dims`` of the ``head_dim`` dims
    are rotated, the rest stay position-free. The record 2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248
    reports partial RoPE + LN scale took 1.1271 -> 1.1248 bpb (sliding eval). NTK-style extension: when
    ``train_seq_len`` > 0 and the sequence is longer, the base becomes
    base * (T / train_seq_len) ** (rd / (rd - 2)); #549/#1019 built it with 1024 while training at 2048,
    so their rescale (x2 length) is active during training.
    """

    def __init__(self, head_dim: int, rope_dims: int = 0, base: float = 10000.0, train_seq_len: int = 0):
        super().__init__()
        self.rope_dims = rope_dims or head_dim
        if self.rope_dims % 2 or self.rope_dims > head_dim:
            raise ValueError(f"rope_dims ({self.rope_dims}) must be even and at most head_dim ({head_dim})")
        if train_seq_len and self.rope_dims <= 2:
            raise ValueError("the NTK base rescale needs at least 4 rotated dims (exponent rd / (rd - 2))")
        self.base = base
        self.train_seq_len = train_seq_len

    def base_for(self, seq_len: int) -> float:
        """The (possibly NTK-rescaled) base used at ``seq_len``."""
        if self.train_seq_len and seq_len > self.train_seq_len:
            rd = self.rope_dims
            return self.base * (seq_len / self.train_seq_len) ** (rd / (rd - 2))
        return self.base

    def cos_sin(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """fp32 (T, F) tables: angle[t, i] = t * base ** (-2i / rd)."""
        rd = self.rope_dims
        exponent_F = torch.arange(0, rd, 2, device=device, dtype=torch.float32) / rd
        inv_freq_F = self.base_for(seq_len) ** (-exponent_F)
        t_T = torch.arange(seq_len, device=device, dtype=torch.float32)
        angle_TF = torch.outer(t_T, inv_freq_F)
        return angle_TF.cos(), angle_TF.sin()


def apply_rotary(x_BTHK: Tensor, cos_TF: Tensor, sin_TF: Tensor) -> Tensor:
    """Turn pairs (i, i + F) of the first 2F dims of every head by -angle[t, i]; keep the rest."""
    n = cos_TF.size(-1)
    cos_1T1F = cos_TF[None, :, None, :].to(x_BTHK.dtype)
    sin_1T1F = sin_TF[None, :, None, :].to(x_BTHK.dtype)
    x1, x2, rest = x_BTHK[..., :n], x_BTHK[..., n : 2 * n], x_BTHK[..., 2 * n :]
    rotated = (x1 * cos_1T1F + x2 * sin_1T1F, x2 * cos_1T1F - x1 * sin_1T1F)
    return torch.cat((*rotated, rest), dim=-1)

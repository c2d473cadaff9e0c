"""LQER: a low-rank correction of the quantization error, as pure tensor math (#1797).

Used by #1851/#1855 (default on there): after GPTQ, the K tensors with the largest ||W - W^||_F get a
rank-r correction W ~ W^ + A B, packed asymmetrically so the factors cost almost nothing: A in INT2
with one scale per matrix, B in INT4 with one fp16 scale per group of 64 elements. #2060 retuned it to
rank 2, groups of 32 and the top 4 tensors (with an LR change and a TTT change: 1.05899 -> 1.05792 bpb
together); #2130/#2135 kept rank 4 / top 3 with groups of 32. ``lqer_factors``
packs an error matrix, ``lqer_correction`` unpacks the stored arrays; which tensors get a correction
is decided on the whole state dict (``pgolf_core.quant.quantize.apply_lqer``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

# INT2 A: codes {-2, -1, 0, 1}, scale = max|A| / 1.5; INT4 B: codes [-8, 7], scale = group max / 7.5.
A_LO, A_HI, A_DIV = -2, 1, 1.5
B_LO, B_HI, B_DIV = -8, 7, 7.5


def lqer_factors(err: Tensor, rank: int, group: int) -> dict[str, Tensor]:
    """Pack the rank-``rank`` truncated SVD of ``err`` (rows x cols) as the stored LQER arrays.

    err = U S V^T; A = U_r diag(S_r) (rows x r), B = V_r^T (r x cols). B's singular vectors have unit
    norm, so its entries are small and similar, which suits a shared group scale; A carries the
    singular values. Flattened B is padded with zeros to a whole number of groups.
    Returns lqer_a (int8 codes), lqer_a_scale (fp32 scalar), lqer_b (int8 codes, r x cols),
    lqer_b_scale (fp16, one per group).
    """
    u, s, vh = torch.linalg.svd(err.float(), full_matrices=False)
    r = min(rank, s.numel())
    a = u[:, :r] * s[:r]
    b = vh[:r]
    a_max = float(a.abs().max())
    a_scale = torch.tensor(a_max / A_DIV if a_max > 0 else 1.0, dtype=torch.float32)
    qa = torch.clamp(torch.round(a / a_scale), A_LO, A_HI).to(torch.int8)
    flat = b.reshape(-1)
    pad = (-flat.numel()) % group
    groups = torch.cat([flat, flat.new_zeros(pad)]).view(-1, group)
    g_scale = (groups.abs().amax(dim=1) / B_DIV).clamp(2.0**-24, 65504.0).to(torch.float16)
    qb = torch.clamp(torch.round(groups / g_scale.float()[:, None]), B_LO, B_HI).to(torch.int8)
    qb = qb.reshape(-1)[: flat.numel()].view_as(b)
    return {
        "lqer_a": qa.contiguous(),
        "lqer_a_scale": a_scale,
        "lqer_b": qb.contiguous(),
        "lqer_b_scale": g_scale,
    }


def lqer_correction(arrays: Mapping[str, Tensor], group: int) -> Tensor:
    """A^ B^ (fp32, rows x cols) from the stored LQER arrays (the keys ``lqer_factors`` returns), whose
    B factor was packed in groups of ``group`` elements."""
    a_hat = arrays["lqer_a"].float() * arrays["lqer_a_scale"]
    qb = arrays["lqer_b"]
    flat = qb.reshape(-1).float()
    pad = (-flat.numel()) % group
    groups = torch.cat([flat, flat.new_zeros(pad)]).view(-1, group) * arrays["lqer_b_scale"].float()[:, None]
    b_hat = groups.reshape(-1)[: flat.numel()].view_as(qb)
    return a_hat @ b_hat

"""LQER: a low-rank correction of the quantization error of the worst tensors (records.md D11, #1797).

Used by #1851/#1855 (default on there): after GPTQ, the K tensors with the largest ||W - W^||_F get a
rank-r correction W ~ W^ + A B, packed asymmetrically so the factors cost almost nothing: A in INT2
with one scale per matrix, B in INT4 with one fp16 scale per group of 64 elements.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf_core.quant.schemes import QTensor, dequant_rows

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


def lqer_correction(qt: QTensor) -> Tensor:
    """A^ B^ (fp32, the tensor's shape) from the stored LQER arrays of ``qt``."""
    a = qt.arrays
    a_hat = a["lqer_a"].float() * a["lqer_a_scale"]
    qb = a["lqer_b"]
    group = int(qt.meta["lqer_group"])
    flat = qb.reshape(-1).float()
    pad = (-flat.numel()) % group
    groups = torch.cat([flat, flat.new_zeros(pad)]).view(-1, group) * a["lqer_b_scale"].float()[:, None]
    b_hat = groups.reshape(-1)[: flat.numel()].view_as(qb)
    return a_hat @ b_hat


def apply_lqer(
    qts: list[QTensor], originals: dict[str, Tensor], top_k: int, rank: int, group: int
) -> list[str]:
    """Add LQER factors to the ``top_k`` per-row-quantized tensors with the largest ||W - W^||_F.

    Candidates are the tensors of the quantization groups (attn, mlp, embed, gate) stored per row; the
    "other" group keeps the plain baseline int8. Returns the names corrected, worst first.
    """
    errs = []
    for qt in qts:
        if qt.kind == "row" and qt.group != "other":
            e = originals[qt.name].float() - dequant_rows(qt.arrays["q"], qt.arrays["scale"])
            errs.append((float(e.norm()), qt, e))
    errs.sort(key=lambda t: -t[0])
    done = []
    for norm, qt, e in errs[:top_k]:
        qt.arrays.update(lqer_factors(e, rank, group))
        qt.meta.update(lqer_rank=int(qt.arrays["lqer_a"].shape[1]), lqer_group=group, lqer_err_before=norm)
        done.append(qt.name)
    return done

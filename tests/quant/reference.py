"""Slow, obvious references the quant tests compare against; not collected by pytest.

``challenge_int8`` is the challenge baseline's export written from its description (the challenge's
train_gpt.py int8 export), independently of pgolf_core.quant: torch.quantile directly, one entry at a time.
"""

from __future__ import annotations

import io
import zlib

import torch

CLIP_Q = 0.9999984
KEEP_MAX_NUMEL = 65_536


def challenge_quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), CLIP_Q, dim=1)
        clipped = torch.clamp(t32, -clip[:, None], clip[:, None])
        scale = torch.clamp(clip / 127.0, min=1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return q, scale.to(torch.float16)
    clip = float(torch.quantile(t32.abs().flatten(), CLIP_Q)) if t32.numel() else 0.0
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip, clip) / scale), -127, 127).to(torch.int8)
    return q, scale


def challenge_int8(state: dict[str, torch.Tensor], control: set[str]) -> dict:
    """{"quantized", "scales", "dtypes", "passthrough", ...} as the challenge built it before torch.save."""
    out = {
        "__quant_format__": "int8_clean_per_row_v1",
        "quantized": {},
        "scales": {},
        "dtypes": {},
        "passthrough": {},
        "passthrough_orig_dtypes": {},
        "qmeta": {},
    }
    for name, t in state.items():
        t = t.detach().cpu()
        if not t.is_floating_point():
            out["passthrough"][name] = t
        elif t.numel() <= KEEP_MAX_NUMEL:
            if name in control:
                out["passthrough"][name] = t.float()
            else:
                out["passthrough_orig_dtypes"][name] = str(t.dtype).removeprefix("torch.")
                out["passthrough"][name] = t.to(torch.float16)
        else:
            q, s = challenge_quantize(t)
            if t.ndim == 2:
                out["qmeta"][name] = {"scheme": "per_row", "axis": 0}
            out["quantized"][name], out["scales"][name] = q, s
            out["dtypes"][name] = str(t.dtype).removeprefix("torch.")
    return out


def challenge_blob(obj: dict) -> bytes:
    """torch.save + zlib level 9: the challenge's int8+zlib artifact."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return zlib.compress(buf.getvalue(), 9)


def gptq_reference(
    w: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor,
    qmax: int,
    damp: float,
    fine: tuple[set[int], torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """Column-by-column OBS rounding in the natural column order, with an explicit inverse Hessian.

    After rounding column j: the remaining columns move by -err_j * Hinv[j, j+1:] / Hinv[j, j], and j
    is eliminated from Hinv (Schur complement). Float64 throughout. No blocks, no Cholesky.
    ``fine`` = (columns, their per-row scale, their qmax): those columns round on that grid instead.
    """
    w = w.double().clone()
    h = h.double().clone()
    cols = w.shape[1]
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * h.diagonal().mean() * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    s = scale.double()
    q = torch.zeros_like(w)
    for j in range(cols):
        sj, qj = (fine[1].double(), fine[2]) if fine is not None and j in fine[0] else (s, qmax)
        q[:, j] = torch.clamp(torch.round(w[:, j] / sj), -qj, qj)
        err = w[:, j] - q[:, j] * sj
        w[:, j + 1 :] -= err[:, None] * (hinv[j, j + 1 :] / hinv[j, j])[None, :]
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return q.to(torch.int8)


def lqer_reference(err: torch.Tensor, rank: int, group: int) -> dict[str, torch.Tensor]:
    """LQER packing from its description, one group at a time: A = U_r diag(S_r) in INT2 codes {-2..1}
    with one scale max|A| / 1.5; B = V_r^T flattened, cut into groups of ``group`` consecutive
    elements (the last one short), each with an fp16 scale (group max / 7.5, kept inside fp16's
    positive range) and INT4 codes [-8, 7]."""
    u, s, vh = torch.linalg.svd(err.float(), full_matrices=False)
    a = u[:, :rank] * s[:rank]
    b = vh[:rank]
    a_max = float(a.abs().max())
    a_scale = a_max / 1.5 if a_max > 0 else 1.0
    qa = torch.clamp(torch.round(a / torch.tensor(a_scale, dtype=torch.float32)), -2, 1).to(torch.int8)
    flat = b.reshape(-1)
    codes, scales = [], []
    for g0 in range(0, flat.numel(), group):
        chunk = flat[g0 : g0 + group]
        sc = (chunk.abs().max() / 7.5).clamp(2.0**-24, 65504.0).to(torch.float16)
        scales.append(sc)
        codes.append(torch.clamp(torch.round(chunk / sc.float()), -8, 7).to(torch.int8))
    return {
        "lqer_a": qa,
        "lqer_a_scale": torch.tensor(a_scale, dtype=torch.float32),
        "lqer_b": torch.cat(codes).view_as(b),
        "lqer_b_scale": torch.stack(scales),
    }

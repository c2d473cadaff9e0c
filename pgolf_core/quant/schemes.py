"""Quantization schemes for one tensor, and the stored form (``QTensor``) they produce.

Kinds of stored tensor:
    raw     non-float tensors, stored unchanged
    float   small float tensors cast to a storage dtype (fp16, or fp32 for control tensors in the
            baseline, 2026-03-17_NaiveBaseline; fp16 for all of them from #549 on), restored to the
            original dtype on load
    row     per-row symmetric integers q in [-qmax, qmax], one per int8 byte (no bit packing: the entropy
            coder recovers the unused bits, as #549's int6 did), with one fp16 scale per row;
            optionally AWQ-lite columns (awq.py: a few column blocks on a finer int8 grid, their codes
            in awq_q and zeros in q) and an LQER low-rank correction (lqer.py)
    tensor  1-D (or >2-D) large float tensors: int8 with one fp32 scale (the baseline's)

Dequantization (``dequantize``) is a pure function of the stored arrays, and both the in-memory path
and the loader call it, so a loaded artifact is bit-identical to the in-memory dequantized weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from pgolf_core.quant.lqer import lqer_correction

# The challenge baseline's clip quantile (2026-03-17_NaiveBaseline): 99.99984th percentile of |w| per row.
BASELINE_CLIP_Q = 0.9999984
# Smallest and largest positive fp16 values: a stored scale is never 0 (no division by zero) nor inf.
_FP16_MIN, _FP16_MAX = 2.0**-24, 65504.0
# torch.quantile refuses inputs above 2^24 elements; larger matrices are done in row chunks.
_QUANTILE_MAX_NUMEL = 1 << 24


@dataclass
class QTensor:
    """One state-dict entry as stored in the artifact.

    arrays: the stored tensors by role ("data"; "q", "scale"; "awq_q", "awq_scale"; "lqer_a",
    "lqer_a_scale", "lqer_b", "lqer_b_scale"). meta: JSON-safe
    facts (bits, clip rule, chosen clip, gptq, AWQ-lite groups [[start, size], ...], lqer rank, ...).
    """

    name: str
    kind: str  # raw | float | row | tensor
    group: str
    dtype: str  # original dtype, e.g. "float32"
    shape: tuple[int, ...]
    arrays: dict[str, Tensor]
    meta: dict = field(default_factory=dict)


def qmax_for(bits: int) -> int:
    """Largest magnitude of a signed b-bit symmetric code: 2^(b-1) - 1 (127 for int8, 31 for int6)."""
    return (1 << (bits - 1)) - 1


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------------
# Clip rules: each returns clip_r >= 0 per row of a float32 matrix.
# --------------------------------------------------------------------------------------------------


def row_quantile(w_abs: Tensor, q: float) -> Tensor:
    """torch.quantile(w_abs, q, dim=1), bit for bit, for a float32 (rows, n) tensor.

    Clip quantiles sit at the top of each row (0.9999984 of 512 needs the top 2 values), so the two
    order statistics come from ``topk`` instead of a full sort: ~6x faster, and the rank arithmetic
    is torch's own (rank = q * (n - 1) in the input dtype, lerp between the neighbours), so the
    result is identical. Far from the top it falls back to torch.quantile, in row chunks past its
    2^24-element input limit.
    """
    n = w_abs.shape[1]
    if q >= 1.0:
        return w_abs.amax(dim=1)
    # fp32 rank arithmetic in numpy: the same IEEE result as torch's, and no tensor -> int under compile
    rank = np.float32(q) * np.float32(n - 1)
    lo = int(rank)
    if n - lo <= max(64, n // 16):
        hi = min(lo + 1, n - 1)
        top = torch.topk(w_abs, n - lo, dim=1, largest=True, sorted=True).values
        weight = torch.tensor(float(rank - np.float32(lo)), dtype=w_abs.dtype)
        return torch.lerp(top[:, n - 1 - lo], top[:, n - 1 - hi], weight)
    rows_per_chunk = max(1, _QUANTILE_MAX_NUMEL // max(1, n))
    return torch.cat([torch.quantile(c, q, dim=1) for c in w_abs.split(rows_per_chunk)])


def clip_percentile(w: Tensor, percentile: float) -> Tensor:
    return row_quantile(w.abs(), percentile / 100.0)


def clip_sd(w: Tensor, k: float) -> Tensor:
    """SDClip (#1394): clip = k * std(row). Size ~ b - log2(k) bits per weight, so k trades bytes for
    error directly (#1394: int6 k=12.85, int8 k=20 for embeddings)."""
    return k * w.std(dim=1).nan_to_num(0.0)  # a 1-column row has no std: clip 0 (scale floor)


CLIP_RULES = ("percentile", "search", "sdclip")


def rule_clips(
    w: Tensor, rule: str, *, percentile: float, sdclip_k: float, search_quantiles: tuple[float, ...]
) -> list[Tensor]:
    """The per-row clip candidates a clip rule proposes for a float32 matrix: one for "percentile"
    (that percentile of |w| per row) and "sdclip" (k * std(row)), one per quantile of
    ``search_quantiles`` for "search" (the caller keeps the candidate with the lowest error).

    The export (``quantize_rows``) and QAT's fake quantization (``qat.fake_quant``) both take their
    clips from here, so training sees the grid the artifact will use.
    """
    if rule == "percentile":
        return [clip_percentile(w, percentile)]
    if rule == "sdclip":
        return [clip_sd(w, sdclip_k)]
    if rule == "search":
        w_abs = w.abs()
        return [row_quantile(w_abs, q) for q in search_quantiles]
    raise ValueError(f"unknown clip rule {rule!r}; expected one of {', '.join(CLIP_RULES)}")


# --------------------------------------------------------------------------------------------------
# Per-row intN
# --------------------------------------------------------------------------------------------------


def fp16_round(x: Tensor) -> Tensor:
    """x (fp32, in [2^-24, 65504]) rounded to the nearest fp16 value, computed in fp32 arithmetic.

    Bitwise what x.to(float16).float() gives (round half to even, subnormals included), but with no
    dtype round trip: Inductor may fuse away a to(fp16).to(fp32) pair (emulate_precision_casts is off
    by default), and QAT must round scales exactly as the export does. step = 2^(max(E, -14) - 10) is
    the fp16 spacing at x's binade, built from the exponent bits; x / step is exact.
    """
    exponent = ((x.view(torch.int32) >> 23) & 0xFF) - 127
    step = ((torch.clamp(exponent, min=-14) - 10 + 127) << 23).view(torch.float32)
    return torch.round(x / step) * step


def row_scales_fp32(clip: Tensor, qmax: int) -> Tensor:
    """clip / qmax per row, kept inside fp16's positive finite range and rounded to fp16 values."""
    return fp16_round((clip.float() / qmax).clamp(_FP16_MIN, _FP16_MAX))


def row_scales(clip: Tensor, qmax: int) -> Tensor:
    """The stored fp16 scale per row (exactly ``row_scales_fp32``)."""
    return row_scales_fp32(clip, qmax).to(torch.float16)


@dataclass(frozen=True)
class FineCols:
    """Columns rounded on a finer grid than the rest of their rows (AWQ-lite, #1908): ``cols`` (sorted
    int64 column indices) use the fp16 per-row ``scale16`` and codes in [-qmax, qmax]."""

    cols: Tensor
    scale16: Tensor
    qmax: int


def round_to_nearest(w: Tensor, scale16: Tensor, qmax: int, fine: FineCols | None = None) -> Tensor:
    """q = clamp(round(w / s), -qmax, qmax) as int8, with the *stored* fp16 scale, so the only error
    inside the clip is the rounding: |w - q s| <= s / 2. ``fine`` columns use their own scale and range."""
    q = torch.clamp(torch.round(w / scale16.float()[:, None]), -qmax, qmax).to(torch.int8)
    if fine is not None:
        wf = w[:, fine.cols]
        q[:, fine.cols] = torch.clamp(
            torch.round(wf / fine.scale16.float()[:, None]), -fine.qmax, fine.qmax
        ).to(torch.int8)
    return q


def dequant_rows(q: Tensor, scale16: Tensor, fine: FineCols | None = None) -> Tensor:
    w = q.float() * scale16.float()[:, None]
    if fine is not None:
        w[:, fine.cols] = q[:, fine.cols].float() * fine.scale16.float()[:, None]
    return w


# (w fp32, scale16, qmax, fine columns or None) -> q int8
RowQuantizer = Callable[[Tensor, Tensor, int, FineCols | None], Tensor]


def quantize_rows(
    w: Tensor,
    bits: int,
    clip: str,
    *,
    percentile: float = 99.99984,
    sdclip_k: float = 12.85,
    search_quantiles: tuple[float, ...] = (0.999, 0.9995, 0.9999, 0.99999, 1.0),
    rounder: RowQuantizer = round_to_nearest,
) -> tuple[Tensor, Tensor, dict]:
    """Per-row intN of a 2-D tensor: returns (q int8, scale fp16, meta).

    clip: "percentile" (percentile of |w| per row), "sdclip" (k * std(row)), or "search": try each
    quantile of ``search_quantiles`` as the row clip and keep the one whose whole-matrix reconstruction
    MSE is lowest ("GPTQ-lite" #374/#549: -0.0006 bpb at zero training cost; like the records' code it
    picks one quantile per matrix). ``rounder`` is round-to-nearest or GPTQ; with GPTQ
    the search runs GPTQ once per candidate, as #1019 did.
    """
    q, scale, _, meta = quantize_rows_fine(
        w,
        bits,
        clip,
        percentile=percentile,
        sdclip_k=sdclip_k,
        search_quantiles=search_quantiles,
        rounder=rounder,
    )
    return q, scale, meta


def quantize_rows_fine(
    w: Tensor,
    bits: int,
    clip: str,
    *,
    fine_cols: Tensor | None = None,
    fine_bits: int = 8,
    percentile: float = 99.99984,
    sdclip_k: float = 12.85,
    search_quantiles: tuple[float, ...] = (0.999, 0.9995, 0.9999, 0.99999, 1.0),
    rounder: RowQuantizer = round_to_nearest,
) -> tuple[Tensor, Tensor, Tensor | None, dict]:
    """``quantize_rows`` with the columns ``fine_cols`` on a ``fine_bits`` grid of the same clip
    (AWQ-lite, #1908: s_hi = clip / 127 next to s = clip / qmax), inside the same rounding pass.
    Returns (q int8 with every column's code, scale fp16, fine scale fp16 or None, meta)."""
    w = w.float()
    qmax = qmax_for(bits)
    meta: dict = {"bits": bits, "clip": clip}
    clips = rule_clips(w, clip, percentile=percentile, sdclip_k=sdclip_k, search_quantiles=search_quantiles)

    def fine_for(c: Tensor) -> FineCols | None:
        if fine_cols is None:
            return None
        return FineCols(fine_cols, row_scales(c, qmax_for(fine_bits)), qmax_for(fine_bits))

    if clip != "search":
        scale, fine = row_scales(clips[0], qmax), fine_for(clips[0])
        meta.update({"percentile": percentile} if clip == "percentile" else {"sdclip_k": sdclip_k})
        return rounder(w, scale, qmax, fine), scale, None if fine is None else fine.scale16, meta
    best = None
    for qt, c in zip(search_quantiles, clips, strict=True):
        s, fine = row_scales(c, qmax), fine_for(c)
        q = rounder(w, s, qmax, fine)
        mse = float((w - dequant_rows(q, s, fine)).square().mean())
        if best is None or mse < best[0]:
            best = (mse, qt, q, s, fine)
    _, qt, q, scale, fine = best
    meta["quantile"] = qt
    return q, scale, None if fine is None else fine.scale16, meta


# --------------------------------------------------------------------------------------------------
# The challenge baseline (2026-03-17_NaiveBaseline: 1.2172 -> 1.2244 bpb after int8 + zlib), exactly
# --------------------------------------------------------------------------------------------------


def baseline_row_codes(w: Tensor) -> tuple[Tensor, Tensor]:
    """The baseline's per-row int8 of a float32 matrix, before storage: (q, scale) with q the codes as
    float32 and scale the fp32 scale per row.

    clip_r = quantile(|w_r|, 0.9999984); scale_r = max(clip_r / 127, 1/127); q = clamp(round(clip(w) /
    scale), -127, 127). The rounding uses the fp32 scale while the artifact stores its fp16 value, as
    the baseline does. The export (``baseline_rows``) and QAT (``qat.fake_quant``) both call this.
    """
    clip = row_quantile(w.abs(), BASELINE_CLIP_Q)
    clipped = torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None])
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    return torch.clamp(torch.round(clipped / scale[:, None]), -127, 127), scale


def baseline_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """The baseline's per-row int8 as stored: q int8 and the fp16 scale per row (``baseline_row_codes``)."""
    q, scale = baseline_row_codes(w.float())
    return q.to(torch.int8).contiguous(), scale.to(torch.float16).contiguous()


def baseline_tensor(w: Tensor) -> tuple[Tensor, Tensor]:
    """The baseline's per-tensor int8 for large non-matrix tensors: one fp32 scale clip/127 (1.0 if
    clip = 0)."""
    w = w.float()
    clip = float(row_quantile(w.abs().reshape(1, -1), BASELINE_CLIP_Q)[0]) if w.numel() else 0.0
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(w, -clip, clip) / scale), -127, 127).to(torch.int8)
    return q.contiguous(), scale


# --------------------------------------------------------------------------------------------------
# Stored form -> tensor
# --------------------------------------------------------------------------------------------------


def awq_columns(groups: list[list[int]]) -> Tensor:
    """The column indices of AWQ-lite groups [[start, size], ...] (sorted, as they are stored)."""
    if not groups:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat([torch.arange(start, start + size) for start, size in groups])


def row_weight(qt: QTensor) -> Tensor:
    """The per-row quantized weight of a "row" QTensor without its LQER correction (fp32): q * scale,
    and the AWQ-lite columns from their own codes and scale."""
    a = qt.arrays
    w = dequant_rows(a["q"], a["scale"])
    if "awq_q" in a:
        w[:, awq_columns(qt.meta["awq"])] = dequant_rows(a["awq_q"], a["awq_scale"])
    return w


def dequantize(qt: QTensor) -> Tensor:
    """The weight a QTensor stands for, in its original dtype (a new tensor)."""
    dtype = getattr(torch, qt.dtype)
    a = qt.arrays
    if qt.kind == "raw":
        return a["data"].clone()
    if qt.kind == "float":
        return a["data"].to(dtype).clone()
    if qt.kind == "tensor":
        return (a["q"].float() * a["scale"]).to(dtype)
    if qt.kind == "row":
        w = row_weight(qt)
        if "lqer_a" in a:
            w = w + lqer_correction(a, int(qt.meta["lqer_group"]))
        return w.to(dtype)
    raise ValueError(f"{qt.name}: unknown stored kind {qt.kind!r}")

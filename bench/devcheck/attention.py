"""Section ``attention``: every attention kernel against SDPA in fp32, forward and backward.

Each kernel runs through the call pgolf itself makes (``causal_attention`` with backend fa3 / fa2 /
sdpa), so an API mismatch of an installed FlashAttention shows here and not in a training run.
FlashAttention 4 (``flash_attn.cute``, not a pgolf backend yet) and the varlen (packed documents) entry
points are called directly, with the same conventions. The inputs are rounded to bf16 once and the fp32
reference computed from the rounded values, so the errors are the kernels' arithmetic alone; SDPA fp32
itself is checked against an independent float64 softmax(q k^T / sqrt(K)) v.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Callable

import torch

from bench.devcheck import models
from bench.devcheck.compare import rel_max_err, within
from bench.devcheck.runner import Check, Context
from pgolf_core.model import select_attention_backend
from pgolf_core.model.attention import causal_attention, window_mask

SHAPE = (2, 2048, 8, 4, 64)  # B, T, H query heads, G kv heads, K head dim: the records' attention
WINDOW = 256  # the windowed case (an experiment knob of pgolf's model, no record uses it)
VARLEN_DOCS = (700, 1100, 248)  # packed documents, 2048 tokens together
FP32_TOL = 1e-4  # SDPA fp32 vs float64, in units of max |reference|
BF16_FWD_TOL = 2e-2  # a bf16 kernel's output vs SDPA fp32: a few bf16 ulps of the largest output
BF16_BWD_TOL = 5e-2  # dq, dk, dv: the backward rounds P and dP to bf16 as well
# Modules of the varlen entry points (fa3 / fa2 as pgolf's attention imports them; fa4 the CuTe release).
VARLEN_MODULES = {
    "fa3": ("flash_attn_interface", "flash_attn_3.flash_attn_interface"),
    "fa2": ("flash_attn",),
    "fa4": ("flash_attn.cute",),
}

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # FA3 builds and FA4 also return the log-sum-exp


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 0) -> torch.Tensor:
    """softmax(q k^T / sqrt(K)) v over causal (optionally windowed) keys, by hand: (B, T, H, K) queries,
    (B, T, G, K) keys and values, each kv head repeated for its H / G query heads."""
    _, T, H, K = q.shape
    rep = H // k.size(2)
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bthk,bshk->bhts", q, k) / math.sqrt(K)
    allowed = window_mask(T, window or T, q.device)
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshk->bthk", p, v)


def make_inputs(shape: tuple[int, ...], device: torch.device, seed: int, dtype=torch.bfloat16):
    """q, k, v, dout in fp32, already rounded to ``dtype`` (so every kernel sees the same numbers)."""
    B, T, H, G, K = shape
    g = torch.Generator().manual_seed(seed)
    q, dout = (torch.randn(B, T, H, K, generator=g) for _ in range(2))
    k, v = (torch.randn(B, T, G, K, generator=g) for _ in range(2))
    return [t.to(dtype).float().to(device) for t in (q, k, v, dout)]


def forward_backward(fn: Kernel, q, k, v, dout, dtype) -> list[torch.Tensor]:
    """[out, dq, dk, dv] in fp32 of ``fn`` run on the inputs cast to ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(dout.to(out.dtype))
    return [t.detach().float() for t in (out, *(x.grad for x in leaves))]


def pgolf_kernel(backend: str, window: int) -> Kernel:
    return lambda q, k, v: causal_attention(q, k, v, backend, window)


def fa4_kernel(window: int) -> Kernel:
    from flash_attn.cute import flash_attn_func

    size = (window - 1, 0) if window else (None, None)
    return lambda q, k, v: _first(flash_attn_func(q, k, v, causal=True, window_size=size))


def available_kernels(device: torch.device) -> tuple[dict[str, Callable[[int], Kernel]], dict[str, str]]:
    """({name: window -> kernel}, {name: why it cannot run}) for fa3, fa2, fa4 and sdpa on ``device``."""
    kernels: dict[str, Callable[[int], Kernel]] = {}
    missing: dict[str, str] = {}
    for kind in ("fa3", "fa2"):
        try:
            select_attention_backend(kind, device)
            kernels[kind] = lambda w, kind=kind: pgolf_kernel(kind, w)
        except (RuntimeError, ValueError) as e:
            missing[kind] = str(e)
    kernels["sdpa"] = lambda w: pgolf_kernel("sdpa", w)
    why = fa4_unavailable(device)
    if why:
        missing["fa4"] = why
    else:
        kernels["fa4"] = fa4_kernel
    return kernels, missing


def fa4_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "fa4 needs a CUDA device"
    major, _ = torch.cuda.get_device_capability(device)
    if major not in (9, 10):
        return f"fa4 runs on Hopper and Blackwell (capability 9.x / 10.x), this GPU is {major}.x"
    try:
        importlib.import_module("flash_attn.cute")
    except Exception as e:  # noqa: BLE001 - not installed, or built for another torch / CUDA
        return f"import flash_attn.cute: {type(e).__name__}: {e}"
    return None


def fp32_sanity(shape, device, window: int, seed: int = 0) -> list[Check]:
    """SDPA fp32 (pgolf's fallback call) against the float64 reference, forward and backward."""
    q, k, v, dout = make_inputs(shape, device, seed)
    ref = forward_backward(lambda a, b, c: naive_attention(a, b, c, window), q, k, v, dout, torch.float64)
    got = forward_backward(pgolf_kernel("sdpa", window), q, k, v, dout, torch.float32)
    errs = [rel_max_err(x, r) for x, r in zip(got, ref)]
    tag = f"window {window}" if window else "causal"
    return [
        within(f"sdpa fp32 vs float64, {tag}, forward", errs[0], FP32_TOL),
        within(
            f"sdpa fp32 vs float64, {tag}, backward",
            max(errs[1:]),
            FP32_TOL,
            "dq {:.2e} dk {:.2e} dv {:.2e}".format(*errs[1:]),
        ),
    ]


def kernel_errors(fn: Kernel, shape, device, window: int, dtype=torch.bfloat16, seed: int = 0) -> list[float]:
    """[forward, dq, dk, dv] errors of ``fn`` in ``dtype`` against SDPA fp32 on the same inputs."""
    q, k, v, dout = make_inputs(shape, device, seed, dtype)
    ref = forward_backward(pgolf_kernel("sdpa", window), q, k, v, dout, torch.float32)
    got = forward_backward(fn, q, k, v, dout, dtype)
    return [rel_max_err(x, r) for x, r in zip(got, ref)]


def kernel_checks(name: str, errs: list[float], window: int) -> list[Check]:
    tag = f"window {window}" if window else "causal"
    return [
        within(f"{name} bf16, {tag}, forward", errs[0], BF16_FWD_TOL),
        within(
            f"{name} bf16, {tag}, backward",
            max(errs[1:]),
            BF16_BWD_TOL,
            "dq {:.2e} dk {:.2e} dv {:.2e}".format(*errs[1:]),
        ),
    ]


def _varlen_fn(kind: str):
    errors = []
    for name in VARLEN_MODULES[kind]:
        try:
            fn = getattr(importlib.import_module(name), "flash_attn_varlen_func", None)
        except Exception as e:  # noqa: BLE001
            errors.append(f"import {name}: {type(e).__name__}: {e}")
            continue
        if fn is not None:
            return fn, ""
        errors.append(f"{name} has no flash_attn_varlen_func")
    return None, "; ".join(errors)


def varlen_errors(fn, device, docs=VARLEN_DOCS, heads=(8, 4, 64), seed: int = 0) -> list[float]:
    """Packed documents through ``fn`` (cu_seqlens) against SDPA fp32 on each document alone."""
    H, G, K = heads
    total = sum(docs)
    q, k, v, dout = make_inputs((1, total, H, G, K), device, seed)
    offsets = [0, *torch.tensor(docs).cumsum(0).tolist()]
    cu = torch.tensor(offsets, dtype=torch.int32, device=device)

    def packed(a, b, c):
        out = fn(
            a[0],
            b[0],
            c[0],
            cu_seqlens_q=cu,
            cu_seqlens_k=cu,
            max_seqlen_q=max(docs),
            max_seqlen_k=max(docs),
            causal=True,
        )
        return _first(out)[None]

    def per_document(a, b, c):
        parts = [
            causal_attention(a[:, s:e], b[:, s:e], c[:, s:e], "sdpa") for s, e in itertools.pairwise(offsets)
        ]
        return torch.cat(parts, dim=1)

    ref = forward_backward(per_document, q, k, v, dout, torch.float32)
    got = forward_backward(packed, q, k, v, dout, torch.bfloat16)
    return [rel_max_err(x, r) for x, r in zip(got, ref)]


def section(ctx: Context) -> None:
    device = models.device()
    kernels, missing = available_kernels(device)
    for kind, why in missing.items():
        ctx.note(f"{kind} not run: {why}")
    ctx.data("kernels", sorted(kernels))
    B, T, H, G, K = SHAPE
    table = ctx.table(
        f"error / max |reference| against SDPA fp32 (B {B}, T {T}, H {H}, G {G}, K {K}; bf16)",
        ["kernel", "mask", "forward", "dq", "dk", "dv"],
    )
    for window in (0, WINDOW):
        for c in ctx.step(f"sdpa fp32 sanity, window {window}", fp32_sanity, SHAPE, device, window) or []:
            ctx.add(c)
    for name, make in kernels.items():  # fa4 last: its CuTe kernels compile on first use
        for window in (0, WINDOW):
            errs = ctx.step(
                f"{name}, window {window}", lambda m=make, w=window: kernel_errors(m(w), SHAPE, device, w)
            )
            if errs is None:
                continue
            ctx.row(table, [name, f"window {window}" if window else "causal", *errs])
            for c in kernel_checks(name, errs, window):
                ctx.add(c)
    vt = ctx.table(
        f"varlen: documents {list(VARLEN_DOCS)} packed, against SDPA fp32 per document",
        ["kernel", "forward", "dq", "dk", "dv"],
    )
    for kind in VARLEN_MODULES:
        if kind in missing:
            continue
        fn, why = _varlen_fn(kind)
        if fn is None:
            ctx.note(f"{kind} varlen not run: {why}")
            continue
        errs = ctx.step(f"{kind} varlen", varlen_errors, fn, device)
        if errs is not None:
            ctx.row(vt, [kind, *errs])
            for c in kernel_checks(f"{kind} varlen", errs, 0):
                ctx.add(c)

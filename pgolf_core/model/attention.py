"""Causal self-attention and the choice of attention kernel.

Everything a record changed inside attention lives here, each behind a ModelConfig flag: GQA, q/k RMS
norm, (partial) RoPE, the per-head query gain, XSA, output gates, sliding windows, value embeddings,
document-masked (varlen) attention, the partial key offset.

Shapes: B batch, T time, D model dim, H query heads, G kv heads, R query heads per kv head (H / G),
K head dim, C kv dim (G * K), W sparse-gate input width.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.config import ModelConfig
from pgolf_core.model.layers import linear, mark_custom_init, param, rms_norm
from pgolf_core.model.roles import MATRIX, SCALAR
from pgolf_core.model.rotary import Rotary, apply_rotary
from pgolf_core.model.varlen import Segments, segment_mask

# --------------------------------------------------------------------------------------------------
# Backend selection: #549 and later call FA3 directly on Hopper and no record falls back; we try
# FA3, then FA2, then torch SDPA, once, when the model is built.
# --------------------------------------------------------------------------------------------------

BACKENDS = ("fa3", "fa2", "sdpa")
_FLASH_MODULES = {
    "fa3": ("flash_attn_interface", "flash_attn_3.flash_attn_interface"),
    "fa2": ("flash_attn",),
}
_FLASH_KERNELS: dict[str, Callable] = {}  # "fa3" / "fa2" (dense), "fa3_varlen" / "fa2_varlen"
DENSE, VARLEN = "flash_attn_func", "flash_attn_varlen_func"


def _import_flash(kind: str, fn_name: str = DENSE) -> tuple[Callable | None, str]:
    """(kernel, "") or (None, why) for ``kind`` in fa3 / fa2; ``fn_name`` is the dense kernel or the
    varlen one (#1530); a found kernel is cached."""
    key = kind if fn_name == DENSE else f"{kind}_varlen"
    if key in _FLASH_KERNELS:
        return _FLASH_KERNELS[key], ""
    errors = []
    for name in _FLASH_MODULES[kind]:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - ImportError, or a wheel built for another torch/CUDA
            errors.append(f"import {name}: {type(e).__name__}: {e}")
            continue
        fn = getattr(module, fn_name, None)
        if fn is not None:
            _FLASH_KERNELS[key] = fn
            return fn, ""
        errors.append(f"{name} has no {fn_name}")
    return None, "; ".join(errors)


def _flash_unavailable(kind: str, device: torch.device) -> str | None:
    """Why the ``kind`` kernel cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return f"{kind} needs a CUDA device, the model runs on {device}"
    if not torch.cuda.is_available():
        return f"{kind} needs CUDA, and torch.cuda.is_available() is False"
    if kind == "fa3":
        capability = torch.cuda.get_device_capability(device)
        if capability != (9, 0):
            return f"fa3 needs a Hopper GPU (compute capability (9, 0)), this one has {capability}"
    _, why = _import_flash(kind)
    return f"no {kind} kernel ({why})" if why else None


def select_attention_backend(requested: str, device: torch.device | str) -> str:
    """Resolve ``model.attn_backend`` to "fa3", "fa2" or "sdpa" for a model that will run on ``device``.

    "auto" takes the best available (always "sdpa" on CPU); an explicit "fa3"/"fa2" that cannot run
    raises a RuntimeError that says what is missing.
    """
    device = torch.device(device)
    if requested == "sdpa":
        return "sdpa"
    if requested not in ("auto", "fa3", "fa2"):
        raise ValueError(f"unknown attention backend {requested!r}; expected auto, fa3, fa2 or sdpa")
    for kind in ("fa3", "fa2") if requested == "auto" else (requested,):
        why = _flash_unavailable(kind, device)
        if why is None:
            return kind
        if requested != "auto":
            raise RuntimeError(
                f"model.attn_backend={requested!r} is unavailable: {why}; use 'auto' or 'sdpa'"
            )
    return "sdpa"


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


def window_mask(seq_len: int, window: int, device: torch.device) -> Tensor:
    """(T, T) bool, True where query i may see key j: j <= i and i - j < window."""
    i_T1 = torch.arange(seq_len, device=device)[:, None]
    j_1T = torch.arange(seq_len, device=device)[None, :]
    return (j_1T <= i_T1) & (i_T1 - j_1T < window)


def _flash(kind: str, q_BTHK: Tensor, k_BTGK: Tensor, v_BTGK: Tensor, window: int) -> Tensor:
    fn, why = _import_flash(kind)
    if fn is None:
        raise RuntimeError(f"attention backend {kind} was selected but its kernel is gone: {why}")
    kwargs = {"causal": True}
    if window:
        kwargs["window_size"] = (window - 1, 0)  # (left, right): the query itself plus window-1 earlier keys
    out = fn(q=q_BTHK, k=k_BTGK, v=v_BTGK, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the log-sum-exp


def _flash_varlen(
    kind: str, q_BTHK: Tensor, k_BTGK: Tensor, v_BTGK: Tensor, window: int, segments: Segments, bound: int
) -> Tensor:
    """The varlen kernel on the flattened rows: causal inside each segment of ``segments.cu_seqlens``.

    ``bound`` is the max_seqlen handed to the kernel. The kernels only need an upper bound of the
    longest segment (it sizes their grid); a bound fixed by the shape, min(T, max_doc_len), keeps a
    compiled graph from specializing on the batch's exact longest segment (``segments.max_seqlen``).
    """
    fn, why = _import_flash(kind, VARLEN)
    if fn is None:
        raise RuntimeError(f"varlen attention on backend {kind} needs {VARLEN}: {why}")
    B, T, H, K = q_BTHK.shape
    cu_N = segments.cu_seqlens
    kwargs = {"causal": True}
    if window:
        kwargs["window_size"] = (window - 1, 0)
    q_NHK, k_NGK, v_NGK = (t.reshape(B * T, t.size(2), K) for t in (q_BTHK, k_BTGK, v_BTGK))
    out = fn(
        q_NHK, k_NGK, v_NGK,
        cu_seqlens_q=cu_N, cu_seqlens_k=cu_N, max_seqlen_q=bound, max_seqlen_k=bound, **kwargs,
    )  # fmt: skip
    out = out[0] if isinstance(out, tuple) else out
    return out.view(B, T, H, K)


def causal_attention(
    q_BTHK: Tensor,
    k_BTGK: Tensor,
    v_BTGK: Tensor,
    backend: str,
    window: int = 0,
    segments: Segments | None = None,
    max_doc_len: int = 0,
) -> Tensor:
    """softmax(q k^T / sqrt(K)) v over causal (optionally windowed) keys, GQA-aware; returns (B, T, H, K).

    With varlen ``segments`` a query sees only keys of its own segment (document-masked, #1530); the
    window then counts inside the segment. The flash kernels want bf16/fp16 CUDA tensors: they run when
    v is half precision on CUDA (i.e. under autocast); an fp32 or CPU call takes SDPA (with the dense
    block-diagonal mask for varlen), so the same model also evaluates in full precision.
    """
    dtype = v_BTGK.dtype
    q_BTHK, k_BTGK = q_BTHK.to(dtype), k_BTGK.to(dtype)
    varlen = segments is not None and segments.varlen
    if backend != "sdpa" and v_BTGK.is_cuda and dtype in (torch.bfloat16, torch.float16):
        if varlen:
            bound = min(q_BTHK.size(1), max_doc_len) if max_doc_len else q_BTHK.size(1)
            return _flash_varlen(backend, q_BTHK, k_BTGK, v_BTGK, window, segments, bound)
        return _flash(backend, q_BTHK, k_BTGK, v_BTGK, window)
    q_BHTK, k_BGTK, v_BGTK = (t.transpose(1, 2) for t in (q_BTHK, k_BTGK, v_BTGK))
    if varlen:
        B, T = q_BTHK.shape[:2]
        mask_B1TT = segment_mask(segments.cu_seqlens, B, T, window)
        y_BHTK = F.scaled_dot_product_attention(q_BHTK, k_BGTK, v_BGTK, attn_mask=mask_B1TT, enable_gqa=True)
    elif window:
        mask_TT = window_mask(q_BHTK.size(2), window, q_BHTK.device)
        y_BHTK = F.scaled_dot_product_attention(q_BHTK, k_BGTK, v_BGTK, attn_mask=mask_TT, enable_gqa=True)
    else:
        y_BHTK = F.scaled_dot_product_attention(q_BHTK, k_BGTK, v_BGTK, is_causal=True, enable_gqa=True)
    return y_BHTK.transpose(1, 2)


def exclusive_self_attention(y_BTHK: Tensor, v_BTGK: Tensor) -> Tensor:
    """XSA: remove from each head's output its component along the token's OWN normalized value vector.

    y_{t,h} <- y_{t,h} - (y_{t,h} . v^_{t,g(h)}) v^_{t,g(h)} (arXiv:2603.09078). The GQA
    form views y as (B, T, G, R, K) and broadcasts v^ as (B, T, G, 1, K), so no kv head is repeated
    (2026-03-20_11L_EfficientPartialXSA_FA3_SWA120 README: overhead ~7 -> ~2 ms/step; last 3 layers
    about -0.002 bpb).
    """
    B, T, H, K = y_BTHK.shape
    G = v_BTGK.size(2)
    y_BTGRK = y_BTHK.reshape(B, T, G, H // G, K)
    vn_BTG1K = F.normalize(v_BTGK, dim=-1).unsqueeze(3).to(y_BTHK.dtype)
    y_BTGRK = y_BTGRK - (y_BTGRK * vn_BTG1K).sum(-1, keepdim=True) * vn_BTG1K
    return y_BTGRK.reshape(B, T, H, K)


def partial_key_offset(k_BTGK: Tensor, rope_dims: int, starts_BT: Tensor | None = None) -> Tensor:
    """PKO (#1512): dims >= ``rope_dims`` of the key at t take those of the key at t - 1 (t >= 1).

    Position 0, and every position where ``starts_BT`` is True (a document start in a packed row), keeps
    its own key, so no key carries the previous document's last token. Built out of place: the in-place
    overlapping slice assignment k[:, 1:, :, r:] = k[:, :-1, :, r:] is not a shift in eager PyTorch (it
    copies position 0 forward through the whole row), only under torch.compile's functionalization.
    """
    rot_BTGR, rest_BTGP = k_BTGK[..., :rope_dims], k_BTGK[..., rope_dims:]
    shifted_BTGP = torch.cat((rest_BTGP[:, :1], rest_BTGP[:, :-1]), dim=1)
    if starts_BT is not None:
        shifted_BTGP = torch.where(starts_BT[:, :, None, None], rest_BTGP, shifted_BTGP)
    return torch.cat((rot_BTGR, shifted_BTGP), dim=-1)


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class AttnOutputGate(nn.Module):
    """One sigmoid gate per head on the attention output, read from the normalized block input.

    dense (#1736/#1769 "GatedAttn"): g = sigmoid(W_g x), W_g (H x D) ~ N(0, std^2), so g ~ 0.5 at init.
    sparse (#1787/#1851/#1855): g = sigmoid(c * W x[..., :W]), W (H x W) zero-init; 1787 README: saves
    ~44K params vs the dense gate with no measurable bpb cost.
    """

    def __init__(self, kind: str, dim: int, heads: int, width: int, scale: float, init_std: float):
        super().__init__()
        self.kind = kind
        self.width = width if kind == "sparse" else dim
        self.scale = scale if kind == "sparse" else 1.0
        self.proj = linear(self.width, heads, SCALAR, zero_init=kind == "sparse")
        if kind == "dense":
            nn.init.normal_(self.proj.weight, std=init_std)
            mark_custom_init(self.proj.weight)

    def forward(self, x_BTD: Tensor) -> Tensor:
        logits_BTH = self.proj(x_BTD[..., : self.width])
        if self.scale != 1.0:
            logits_BTH = logits_BTH * self.scale
        return torch.sigmoid(logits_BTH)


class CausalSelfAttention(nn.Module):
    """GQA causal attention of one physical layer with the per-layer record flags resolved.

    q = W_q x, k = W_k x, v = W_v x (+ value embedding); q, k RMS-normalized per head; RoPE; q times a
    learnable per-head gain (the baseline's); then optional XSA and output gate; W_o zero-init.
    """

    def __init__(self, cfg: ModelConfig, layer: int, backend: str = "sdpa"):
        super().__init__()
        D, H, G = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
        self.num_heads, self.num_kv_heads, self.head_dim = H, G, D // H
        self.backend = backend
        self.q = linear(D, D, MATRIX)
        self.k = linear(D, G * self.head_dim, MATRIX)
        self.v = linear(D, G * self.head_dim, MATRIX)
        self.proj = linear(D, D, MATRIX, zero_init=True)
        # With q and k RMS-normed, the gain is the softmax temperature: init 1.5 (BASE) -> 4.0 (#1394)
        # -> 5.25 (#1493) -> 5.0 (#1855) along the record lineage.
        ac, rc = cfg.attention, cfg.rotary
        self.q_gain = param(torch.full((H,), ac.q_gain_init), SCALAR)
        self.rotary = Rotary(self.head_dim, rc.dims, rc.base, rc.train_seq_len)
        # XSA on the last xsa_last_n physical layers: last 4 in #549, all 11 from #1019 on.
        self.xsa = layer >= cfg.num_layers - ac.xsa_last_n
        # Sliding window: no studied record uses one (it is an experiment knob, off by default).
        in_window = not ac.window.layers or layer in ac.window.layers
        self.window = ac.window.size if in_window else 0
        self.max_doc_len = ac.varlen.max_doc_len if ac.varlen.enabled else 0
        # Partial key offset (#1512: full-attention layers 6..10): split after the rotated dims.
        ko = ac.key_offset
        self.key_offset = ko.enabled and (not ko.layers or layer in ko.layers)
        self.key_offset_dims = self.rotary.rope_dims
        self.key_offset_bos_fix = ko.bos_fix
        self.gate = None
        if ac.gate.kind != "none":
            g = ac.gate
            self.gate = AttnOutputGate(g.kind, D, H, g.width, g.scale, g.init_std)

    def forward(
        self, x_BTD: Tensor, ve_BTC: Tensor | None = None, segments: Segments | None = None
    ) -> Tensor:
        """x_BTD: the normalized block input; ve_BTC: this layer's value-embedding term or None;
        segments: the rows' document starts (varlen masking, the key offset's BOS fix) or None."""
        B, T, D = x_BTD.shape
        H, G, K = self.num_heads, self.num_kv_heads, self.head_dim
        q_BTHK = rms_norm(self.q(x_BTD).view(B, T, H, K))
        k_BTGK = rms_norm(self.k(x_BTD).view(B, T, G, K))
        v_BTC = self.v(x_BTD)
        if ve_BTC is not None:
            v_BTC = v_BTC + ve_BTC.to(v_BTC.dtype)  # added before the head reshape (#549)
        v_BTGK = v_BTC.view(B, T, G, K)
        cos_TF, sin_TF = self.rotary.cos_sin(T, x_BTD.device)
        q_BTHK = apply_rotary(q_BTHK, cos_TF, sin_TF)
        k_BTGK = apply_rotary(k_BTGK, cos_TF, sin_TF)
        if self.key_offset:
            starts_BT = segments.starts_BT if segments is not None and self.key_offset_bos_fix else None
            k_BTGK = partial_key_offset(k_BTGK, self.key_offset_dims, starts_BT)
        q_BTHK = q_BTHK * self.q_gain.to(q_BTHK.dtype)[:, None]
        y_BTHK = causal_attention(
            q_BTHK, k_BTGK, v_BTGK, self.backend, self.window, segments, self.max_doc_len
        )
        if self.xsa:
            y_BTHK = exclusive_self_attention(y_BTHK, v_BTGK)
        if self.gate is not None:
            y_BTHK = y_BTHK * self.gate(x_BTD)[..., None].to(y_BTHK.dtype)
        return self.proj(y_BTHK.reshape(B, T, D))

"""A whole state dict -> stored QTensors (and back), per ``QuantConfig``.

baseline_int8 is the challenge's export exactly (2026-03-17_NaiveBaseline): small float tensors (<= 65,536
elements) kept, fp32 for control tensors (SCALAR role) and fp16 otherwise; 2-D tensors per-row int8
with the 99.99984th-percentile clip; other large tensors per-tensor int8; non-float unchanged.

groups applies each group's QuantGroupConfig (bits, clip rule, GPTQ) to the 2-D tensors of the
attention, MLP, embedding and (with quant_gates) gate groups. Small float tensors are all stored fp16,
control tensors included, as every record after the baseline did. Large tensors of the "other" group
(BigramHash / value-embedding tables) keep the baseline's int8, as #549 did. With ``awq_top_k`` > 0 the
best-scoring column blocks of the model (awq.py) are rounded at ``awq_bits`` in the same pass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant.awq import select_groups
from pgolf_core.quant.classify import TensorClass, resolve_state
from pgolf_core.quant.gptq import gptq_quantize
from pgolf_core.quant.lqer import lqer_factors
from pgolf_core.quant.pergroup import tensor_roles
from pgolf_core.quant.schemes import (
    QTensor,
    awq_columns,
    baseline_rows,
    baseline_tensor,
    dequantize,
    dtype_name,
    quantize_rows_fine,
    round_to_nearest,
    row_weight,
)


def group_config(qcfg: QuantConfig, group: str) -> QuantGroupConfig:
    return getattr(qcfg, group)


def _float(name: str, t: Tensor, cls: TensorClass, store: torch.dtype) -> QTensor:
    return QTensor(
        name, "float", cls.group, dtype_name(t.dtype), tuple(t.shape), {"data": t.to(store).contiguous()}
    )


def _baseline_int8(name: str, t: Tensor, cls: TensorClass) -> QTensor:
    """The challenge's int8: per-row for matrices, one scale for other shapes."""
    kind, (q, s) = ("row", baseline_rows(t)) if t.ndim == 2 else ("tensor", baseline_tensor(t))
    return QTensor(
        name,
        kind,
        cls.group,
        dtype_name(t.dtype),
        tuple(t.shape),
        {"q": q, "scale": s},
        {"bits": 8, "clip": "baseline"},
    )


def row_group_config(t: Tensor, cls: TensorClass, qcfg: QuantConfig) -> QuantGroupConfig | None:
    """The group settings a tensor is quantized per row with under the "groups" scheme (None: it is
    kept float, stored raw, or gets the baseline int8)."""
    if qcfg.scheme != "groups" or not t.is_floating_point() or t.ndim != 2:
        return None
    small = t.numel() <= qcfg.keep_float_max_numel
    grouped = cls.group in ("attn", "mlp", "embed") or (cls.group == "gate" and qcfg.quant_gates)
    return group_config(qcfg, cls.group) if grouped and (not small or cls.group == "gate") else None


def _quantize_one(
    name: str,
    t: Tensor,
    cls: TensorClass,
    qcfg: QuantConfig,
    hessians: Mapping[str, Tensor] | None,
    awq_groups: list[list[int]] | None = None,
) -> QTensor:
    shape, dtype = tuple(t.shape), dtype_name(t.dtype)
    if not t.is_floating_point():
        return QTensor(name, "raw", cls.group, dtype, shape, {"data": t.contiguous().clone()})
    small = t.numel() <= qcfg.keep_float_max_numel
    if qcfg.scheme == "baseline_int8":
        if small:
            return _float(name, t, cls, torch.float32 if cls.control else torch.float16)
        return _baseline_int8(name, t, cls)

    # scheme == "groups"
    g = row_group_config(t, cls, qcfg)
    if g is not None:
        rounder = round_to_nearest
        h = None if hessians is None else hessians.get(name)
        # An untied input embedding is a lookup, not a layer: it has no input Hessian, so it keeps
        # round-to-nearest (its untied head, a Linear, gets GPTQ).
        use_gptq = g.gptq and not (h is None and hessians is not None and cls.group == "embed")
        if use_gptq:
            if h is None:
                raise ValueError(
                    f"quant.{cls.group}.gptq is on but there is no Hessian for {name}; "
                    "pass hessians=collect_hessians(model, calibration_batches)"
                )

            def rounder(w, scale16, qmax, fine=None, _h=h):
                return gptq_quantize(
                    w,
                    _h,
                    scale16,
                    qmax,
                    block_size=qcfg.gptq_block_size,
                    damp=qcfg.gptq_damp,
                    act_order=qcfg.gptq_act_order,
                    fine=fine,
                )

        cols = awq_columns(awq_groups) if awq_groups else None
        q, s, s_hi, meta = quantize_rows_fine(
            t,
            g.bits,
            g.clip,
            fine_cols=cols,
            fine_bits=qcfg.awq_bits,
            percentile=g.percentile,
            sdclip_k=g.sdclip_k,
            search_quantiles=tuple(qcfg.search_quantiles),
            rounder=rounder,
        )
        meta["gptq"] = use_gptq
        arrays = {"q": q, "scale": s}
        if cols is not None:
            # the protected codes live in their own array; q keeps zeros there (cheap to compress)
            arrays.update(awq_q=q[:, cols].contiguous(), awq_scale=s_hi)
            q[:, cols] = 0
            meta.update(awq=[list(gr) for gr in awq_groups], awq_bits=qcfg.awq_bits)
        return QTensor(name, "row", cls.group, dtype, shape, arrays, meta)
    if small:
        return _float(name, t, cls, torch.float16)
    return _baseline_int8(name, t, cls)


def awq_selection(
    state: Mapping[str, Tensor],
    classes: Mapping[str, TensorClass],
    qcfg: QuantConfig,
    hessians: Mapping[str, Tensor] | None,
) -> dict[str, list[list[int]]]:
    """AWQ-lite: name -> protected column groups, over the per-row tensors below ``quant.awq_bits``
    that have a Hessian (activation statistics)."""
    if qcfg.scheme != "groups" or qcfg.awq_top_k == 0:
        return {}
    if hessians is None:
        raise ValueError(
            f"quant.awq_top_k={qcfg.awq_top_k} needs activation statistics: pass "
            "hessians=collect_hessians(model, calibration_batches)"
        )
    cands = {}
    for name, t in state.items():
        g = row_group_config(t, classes[name], qcfg)
        if g is not None and g.bits < qcfg.awq_bits and name in hessians:
            cands[name] = t.detach().cpu().float()
    return select_groups(cands, hessians, qcfg.awq_top_k, qcfg.awq_group_size)


def apply_lqer(
    qts: list[QTensor], originals: Mapping[str, Tensor], top_k: int, rank: int, group: int
) -> list[str]:
    """Add LQER factors to the ``top_k`` per-row-quantized tensors with the largest ||W - W^||_F.

    Candidates are the tensors of the quantization groups (attn, mlp, embed, gate) stored per row; the
    "other" group keeps the plain baseline int8. Returns the names corrected, worst first.
    """
    errs = []
    for qt in qts:
        if qt.kind == "row" and qt.group != "other":
            e = originals[qt.name].float() - row_weight(qt)
            errs.append((float(e.norm()), qt, e))
    errs.sort(key=lambda t: -t[0])
    done = []
    for norm, qt, e in errs[:top_k]:
        qt.arrays.update(lqer_factors(e, rank, group))
        qt.meta.update(lqer_rank=int(qt.arrays["lqer_a"].shape[1]), lqer_group=group, lqer_err_before=norm)
        done.append(qt.name)
    return done


def quantize_state(
    model_or_state: nn.Module | Mapping[str, Tensor],
    qcfg: QuantConfig,
    *,
    model: nn.Module | None = None,
    hessians: Mapping[str, Tensor] | None = None,
) -> tuple[list[QTensor], dict]:
    """Quantize every state-dict entry; returns (QTensors in state-dict order, details).

    details: per-tensor facts (group, kind, bits, clip, relative error), the LQER'd tensors and timings.
    """
    t0 = time.perf_counter()
    state, classes, model = resolve_state(model_or_state, model)
    awq = awq_selection(state, classes, qcfg, hessians)
    qts = []
    with torch.no_grad():
        for name, t in state.items():
            qts.append(_quantize_one(name, t.detach().cpu(), classes[name], qcfg, hessians, awq.get(name)))
    t1 = time.perf_counter()
    lqer_names: list[str] = []
    if qcfg.scheme == "groups" and qcfg.lqer_top_k > 0:
        lqer_names = apply_lqer(qts, state, qcfg.lqer_top_k, qcfg.lqer_rank, qcfg.lqer_group)
    t2 = time.perf_counter()
    tensors = {}
    for qt in qts:
        info = {"group": qt.group, "kind": qt.kind, "numel": int(torch.Size(qt.shape).numel()), **qt.meta}
        if qt.kind in ("row", "tensor"):
            w = state[qt.name].float()
            err = float((w - dequantize(qt).float()).norm()) / max(float(w.norm()), 1e-30)
            info["rel_err"] = err
        tensors[qt.name] = info
    details = {
        "scheme": qcfg.scheme,
        "tensors": tensors,
        "lqer": lqer_names,
        "awq": awq,
        "roles": tensor_roles(model),  # the role streams of the pergroup layout
        "timings": {"quantize_s": t1 - t0, "lqer_s": t2 - t1},
    }
    return qts, details


def dequantize_all(qts: list[QTensor]) -> dict[str, Tensor]:
    return {qt.name: dequantize(qt) for qt in qts}


def dequantized_state(
    model_or_state: nn.Module | Mapping[str, Tensor],
    qcfg: QuantConfig,
    hessians: Mapping[str, Tensor] | None = None,
    *,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """The weights after quantize -> dequantize, in memory (what ``load_artifact`` must reproduce bit
    for bit)."""
    qts, _ = quantize_state(model_or_state, qcfg, model=model, hessians=hessians)
    return dequantize_all(qts)


def bits_label(qcfg: QuantConfig) -> str:
    """e.g. "attn6 mlp6 embed8 gate-" (groups) or "int8" (baseline)."""
    if qcfg.scheme == "baseline_int8":
        return "int8"
    parts = []
    for g in ("attn", "mlp", "embed", "gate"):
        gc = group_config(qcfg, g)
        bits = "-" if g == "gate" and not qcfg.quant_gates else str(gc.bits)
        parts.append(f"{g}{bits}{'g' if gc.gptq and bits != '-' else ''}")
    if qcfg.awq_top_k:
        parts.append(f"awq{qcfg.awq_top_k}x{qcfg.awq_group_size}@{qcfg.awq_bits}")
    return " ".join(parts)


def clip_label(qcfg: QuantConfig) -> str:
    """The clip rules in use, e.g. "sdclip(k=12.85)" or "attn:search mlp:sdclip(k=12)"."""
    if qcfg.scheme == "baseline_int8":
        return "p99.99984"

    def one(gc: QuantGroupConfig) -> str:
        if gc.clip == "percentile":
            return f"p{gc.percentile:.10g}"
        if gc.clip == "sdclip":
            return f"sdclip(k={gc.sdclip_k:g})"
        return "search"

    groups = ["attn", "mlp", "embed"] + (["gate"] if qcfg.quant_gates else [])
    rules = {g: one(group_config(qcfg, g)) for g in groups}
    if len(set(rules.values())) == 1:
        return next(iter(rules.values()))
    return " ".join(f"{g}:{r}" for g, r in rules.items())

"""Quantization-aware training: fake quantization with a straight-through estimator (#549/#1019).

Forward uses w + stopgrad(fq(w) - w), where fq is the export's own round-to-nearest scheme for the
tensor's group (baseline int8, or per-row intN with its clip rule), so training sees exactly the
rounding grid the artifact will use; the gradient flows to w unchanged. #549/#1019 switched it on late
(LR multiplier < 0.15). Their switch was a class attribute that torch.compile constant-folded, so
late QAT silently never ran (reported in the README of 2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248;
#1218 then dropped QAT for "little or no benefit"). Here the switch is a per-module *tensor buffer*
multiplying the fake-quant delta: the compiled graph always contains the fake-quant path, flipping
the buffer changes the output with no recompile, and with the buffer at 0 the forward is bitwise the
plain linear (w + 0 * d == w). Only the linears are covered; the tied embedding is not fake-quantized
(the records' QAT lived in CastedLinear only).

    set_qat(model, False, cfg.quant)   # once, before torch.compile: installs the switch, off
    ...
    if qat_due(cfg.quant, lr_mult): set_qat(model, True, cfg.quant)   # late QAT: a buffer write
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core.config import QuantConfig
from pgolf_core.quant.classify import classify, unwrap
from pgolf_core.quant.schemes import (
    baseline_row_codes,
    fp16_round,
    qmax_for,
    round_to_nearest,
    row_scales_fp32,
    rule_clips,
)


def fake_quant(w: Tensor, spec: tuple) -> Tensor:
    """The export's round-to-nearest dequantized weight for ``spec`` (no gradient through it).

    spec: ("baseline",) or ("rows", bits, clip, percentile, sdclip_k, search_quantiles).
    """
    w = w.detach().float()
    if spec[0] == "baseline":
        q, scale = baseline_row_codes(w)
        return q * fp16_round(scale)[:, None]  # the stored fp16 scale, rounded without a dtype trip
    _, bits, clip_rule, percentile, k, quantiles = spec
    qmax = qmax_for(bits)
    clips = rule_clips(w, clip_rule, percentile=percentile, sdclip_k=k, search_quantiles=quantiles)
    # fp32 scales holding fp16 values (row_scales_fp32): exact under Inductor too, see fp16_round
    scales = [row_scales_fp32(c, qmax) for c in clips]
    if clip_rule != "search":
        return round_to_nearest(w, scales[0], qmax).float() * scales[0][:, None]
    # search: every candidate, keep the lowest whole-matrix MSE as the export does, in tensor ops only
    # (the export compares Python floats, which would break the compiled graph)
    stacked = torch.stack([round_to_nearest(w, s, qmax).float() * s[:, None] for s in scales])
    best = (stacked - w).square().mean(dim=(1, 2)).argmin()
    return stacked.index_select(0, best.view(1))[0]  # tensor index: no data-dependent graph break


class QATLinear(nn.Linear):
    """An nn.Linear whose forward fake-quantizes its weight while the ``qat_on`` buffer is 1.

    Installed by swapping the class of an existing Linear, so parameter names, roles, the state dict
    and the optimizer's references are all unchanged.
    """

    qat_spec: tuple
    qat_on: Tensor

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        delta = fake_quant(w, self.qat_spec).to(w.dtype) - w.detach()
        return F.linear(x, w + self.qat_on * delta, self.bias)


def _spec(qcfg: QuantConfig, group: str, numel: int) -> tuple | None:
    """The fake-quant spec matching the export of a 2-D tensor of ``group`` (None: kept float)."""
    if qcfg.scheme == "baseline_int8":
        return None if numel <= qcfg.keep_float_max_numel else ("baseline",)
    grouped = group in ("attn", "mlp", "embed") or (group == "gate" and qcfg.quant_gates)
    if grouped and (numel > qcfg.keep_float_max_numel or group == "gate"):
        g = getattr(qcfg, group)
        return ("rows", g.bits, g.clip, g.percentile, g.sdclip_k, tuple(qcfg.search_quantiles))
    return None if numel <= qcfg.keep_float_max_numel else ("baseline",)


def set_qat(model: nn.Module, enabled: bool, qcfg: QuantConfig) -> int:
    """Turn fake quantization on or off; returns the number of fake-quantized linears.

    The first call installs the switch (class swap + buffer) on every linear whose weight the export
    quantizes; do it before torch.compile so the compiled graph contains the switch. Later calls
    only write the buffers, which a compiled model reads at run time.
    """
    model = unwrap(model)
    classes = classify(model)
    names = {id(p): n for n, p in model.named_parameters()}
    count = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear) or id(module.weight) not in names:
            continue
        if not isinstance(module, QATLinear):
            spec = _spec(qcfg, classes[names[id(module.weight)]].group, module.weight.numel())
            if spec is None:
                continue
            module.__class__ = QATLinear
            module.qat_spec = spec
            module.register_buffer("qat_on", torch.zeros((), device=module.weight.device), persistent=False)
        module.qat_on.fill_(1.0 if enabled else 0.0)
        count += 1
    return count


def qat_due(qcfg: QuantConfig, lr_mult: float) -> bool:
    """Late QAT (#549/#1019): on once the LR multiplier falls below ``qat_start_lr_mult``."""
    return qcfg.qat and lr_mult < qcfg.qat_start_lr_mult

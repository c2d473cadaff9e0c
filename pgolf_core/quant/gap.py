"""The quant-gap table: for one checkpoint and a list of schemes, bytes and bpb before / after.

Every row goes through the real artifact (build -> bytes -> ``load_artifact`` -> ``load_state_dict``
strict), so the bpb after is the bpb of what would be submitted. Feeds the quant-gap notebook. A row
whose artifact was pruned to fit the cap (``quant.prune_to_cap``) also says how many codes were zeroed
and what that cost in bpb (against the same artifact unpruned).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from pgolf_core.config import QuantConfig, RunConfig
from pgolf_core.eval import EvalResult
from pgolf_core.model import build_model
from pgolf_core.quant.artifact import build_artifact, load_artifact
from pgolf_core.quant.gptq import Hessians, collect_hessians
from pgolf_core.quant.prune import undo
from pgolf_core.quant.quantize import bits_label, clip_label, dequantize_all


@dataclass(frozen=True)
class GapRow:
    scheme: str
    bits: str  # per group, e.g. "attn6 mlp6 embed8 gate-" ("g": GPTQ)
    clip: str
    compressor: str
    artifact_bytes: int  # code + model, what the cap applies to
    model_bytes: int
    bpb_before: float
    bpb_after: float
    gap: float  # bpb_after - bpb_before
    seconds: float  # quantize + compress + verify (+ LQER)
    calib_seconds: float  # Hessian collection (0 without GPTQ); shared by the GPTQ rows
    over_cap: bool
    margin: int
    pruned: int = 0  # codes zeroed by selective +-1 pruning to fit the cap (quant.prune_to_cap)
    prune_bpb: float = 0.0  # bpb after pruning - bpb of the same artifact unpruned

    def as_dict(self) -> dict:
        return asdict(self)


def load_weights(state_or_path: Mapping[str, Tensor] | str | os.PathLike) -> dict[str, Tensor]:
    """A state dict, or one read from a checkpoint file (``final_raw.pt``, or a training state's "model")."""
    if isinstance(state_or_path, Mapping):
        return dict(state_or_path)
    state = torch.load(state_or_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state


def _needs_hessians(q: QuantConfig) -> bool:
    gptq = any(getattr(q, g).gptq for g in ("attn", "mlp", "embed", "gate"))
    return q.scheme == "groups" and (gptq or q.awq_top_k > 0)


def quant_gap(
    state_or_path: Mapping[str, Tensor] | str | os.PathLike,
    cfg: RunConfig,
    schemes: list[tuple[str, QuantConfig]],
    *,
    evaluate: Callable[[nn.Module], EvalResult],
    calib_batches: Iterable[tuple[Tensor, Tensor]] | Callable[[], Iterable] | None = None,
    hessians: Hessians | None = None,
    device: str | torch.device = "cpu",
) -> list[GapRow]:
    """One GapRow per (name, QuantConfig) for the weights of a checkpoint.

    ``evaluate(model) -> EvalResult``: the caller's bpb evaluator (evaluate_standard over validation
    tokens), so this API loads no data. GPTQ schemes need ``hessians`` or ``calib_batches`` (training
    or self-generated batches, never validation); Hessians are collected once and shared.
    """
    model = build_model(cfg.model, device=device).to(device)
    model.load_state_dict(load_weights(state_or_path), strict=True)
    before = evaluate(model).bpb
    calib_s = 0.0 if hessians is None else hessians.seconds
    rows = []
    for name, qcfg in schemes:
        if _needs_hessians(qcfg) and hessians is None:
            if calib_batches is None:
                raise ValueError(
                    f"scheme {name!r} uses GPTQ: pass calib_batches= (training or self-generated) or "
                    "hessians="
                )
            batches = calib_batches() if callable(calib_batches) else calib_batches
            hessians = collect_hessians(model, batches)
            calib_s = hessians.seconds
        t0 = time.perf_counter()
        art = build_artifact(model, qcfg, hessians=hessians if _needs_hessians(qcfg) else None)
        state = load_artifact(art.blob)
        seconds = time.perf_counter() - t0
        qmodel = copy.deepcopy(model)
        qmodel.load_state_dict(state, strict=True)
        after = evaluate(qmodel).bpb
        pruned, prune_bpb = 0, 0.0
        if art.prune is not None and art.prune.values:
            qmodel.load_state_dict(dequantize_all(undo(art.quantized, art.prune)), strict=True)
            pruned, prune_bpb = art.prune.values, after - evaluate(qmodel).bpb
        rows.append(
            GapRow(
                scheme=name,
                bits=bits_label(qcfg),
                clip=clip_label(qcfg),
                compressor=art.compressor,
                artifact_bytes=art.total_bytes,
                model_bytes=art.model_bytes,
                bpb_before=before,
                bpb_after=after,
                gap=after - before,
                seconds=seconds,
                calib_seconds=calib_s if _needs_hessians(qcfg) else 0.0,
                over_cap=art.over_cap,
                margin=art.margin,
                pruned=pruned,
                prune_bpb=prune_bpb,
            )
        )
        del qmodel
    return rows


def format_gap_table(rows: list[GapRow], baseline: str | None = None) -> str:
    """A markdown table; with ``baseline`` (a scheme name) adds bytes and gap relative to that row."""
    ref = next((r for r in rows if r.scheme == baseline), None)
    head = [
        "scheme",
        "bits",
        "clip",
        "compressor",
        "model bytes",
        "artifact bytes",
        "bpb before",
        "bpb after",
        "gap",
        "seconds",
        "cap",
        "pruned",
    ]
    if ref:
        head[6:6] = ["vs base bytes"]
        head.insert(10, "vs base gap")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.scheme,
            r.bits,
            r.clip,
            r.compressor,
            f"{r.model_bytes:,}",
            f"{r.artifact_bytes:,}",
            f"{r.bpb_before:.4f}",
            f"{r.bpb_after:.4f}",
            f"{r.gap:+.4f}",
            f"{r.seconds:.1f}" + (f" (+{r.calib_seconds:.1f} calib)" if r.calib_seconds else ""),
            f"OVER by {-r.margin:,}" if r.over_cap else "ok",
            f"{r.pruned:,} ({r.prune_bpb:+.4f} bpb)" if r.pruned else "-",
        ]
        if ref:
            cells[6:6] = [f"{r.artifact_bytes - ref.artifact_bytes:+,}"]
            cells.insert(10, f"{r.gap - ref.gap:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
